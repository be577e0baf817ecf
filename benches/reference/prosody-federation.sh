#!/usr/bin/env bash
# Reference figure for Kogge's relay bench: two Prosody 0.12 servers federating over s2s on
# loopback (one.test on 127.0.0.1, two.test on 127.0.0.2), 16 senders at one.test each sending
# 256-byte chat messages to its own recipient at two.test, driven by xmpp_load.py (Python
# standard library only). See PERF.md, "The server people run today".
#
#   bash benches/reference/prosody-federation.sh
#
# Environment:
#   PARTS=saturation,paced   parts to run (default both)
#   RUNS=3                   saturation runs (each reported, then the median)
#   TOTAL=200000             messages per saturation run (sending stops after MAX_SECONDS)
#   MAX_SECONDS=20           cap on the sending time of one saturation run
#   WINDOW=256               messages in flight per sender/recipient pair
#   PAIRS=16                 sender/recipient pairs
#   KEEP=1                   keep the temp directory (configs, logs, certificates) after the run
#   TLS=1                    (default) Prosody's default encryption: mod_tls loaded, one
#                            self-signed ECDSA P-256 certificate per domain (CN and
#                            subjectAltName DNS:<domain>), STARTTLS required on c2s
#                            (c2s_require_encryption = true; the load generator does STARTTLS and
#                            checks the certificate and host name) and TLS required on s2s
#                            (s2s_require_encryption = true) with s2s_secure_auth = true: each
#                            server trusts the other's certificate (ssl.cafile), so s2s is
#                            authenticated by certificate (SASL EXTERNAL), not dialback (one
#                            s2s connection, one.test->two.test; TLS 1.3 on every hop)
#   TLS=s2s                  s2s as with TLS=1, c2s plain text (not required, generator stays plain)
#   TLS=0                    plain text everywhere: no mod_tls, no certificates, c2s and s2s
#                            unencrypted, s2s authenticated by dialback
#   LOG=info                 Prosody log level (default warn), e.g. to see the s2s/c2s TLS and
#                            authentication lines in the kept logs (with KEEP=1)
#
# Installs Prosody from Debian if missing. The two servers run as the prosody user with their
# own config, data directory, pid file and log (level $LOG) under a temp directory; they are
# stopped and the directory removed on exit. Name resolution: Prosody 0.12 resolves through
# libunbound (lua-unbound), which ignores /etc/hosts unless `unbound.hoststxt` is set; each
# config points `hoststxt` at a hosts file in the temp directory (so /etc/hosts is not
# touched) and `resolvconf` at a file naming only 127.0.0.1 (no query leaves the machine;
# the SRV lookups for *.test are answered NXDOMAIN by unbound's built-in "test." zone, and
# Prosody falls back to the A record on port 5269).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PARTS="${PARTS:-saturation,paced}"
RUNS="${RUNS:-3}"
TOTAL="${TOTAL:-200000}"
MAX_SECONDS="${MAX_SECONDS:-20}"
WINDOW="${WINDOW:-256}"
PAIRS="${PAIRS:-16}"
TLS="${TLS:-1}"
LOG="${LOG:-warn}"
PASSWORD=password
case "$TLS" in
    1) C2S_TLS=1 S2S_TLS=1 ;;
    s2s) C2S_TLS=0 S2S_TLS=1 ;;
    0) C2S_TLS=0 S2S_TLS=0 ;;
    *) echo "TLS must be 1, s2s or 0" >&2; exit 2 ;;
esac

if ! command -v prosody >/dev/null 2>&1; then
    echo "installing prosody from Debian" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prosody >/dev/null
fi
# A Debian-started instance (the package's service) would hold 5222/5269 on all addresses.
if [ -s /run/prosody/prosody.pid ] && kill -0 "$(cat /run/prosody/prosody.pid)" 2>/dev/null; then
    echo "stopping the Debian prosody service instance (pid $(cat /run/prosody/prosody.pid))" >&2
    kill "$(cat /run/prosody/prosody.pid)"
    sleep 1
fi
dpkg-query -W -f='prosody ${Version}\n' prosody 2>/dev/null || true

WORK="$(mktemp -d /tmp/prosody-fed.XXXXXX)"
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

printf '127.0.0.1 one.test\n127.0.0.2 two.test\n' >"$WORK/hosts"
printf 'nameserver 127.0.0.1\n' >"$WORK/resolv.conf"

tf() { [ "$1" = 1 ] && echo true || echo false; }

write_config() { # name domain ip peer-name peer-domain
    local name=$1 domain=$2 ip=$3 peer=$4 peer_domain=$5 dir="$WORK/$1" tls_module="" ssl_line=""
    mkdir -p "$dir/data" "$dir/certs"
    if [ "$S2S_TLS" = 1 ]; then
        # ECDSA P-256, self-signed, valid 2 days; the peer's certificate is this server's CA.
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj "/CN=$domain" -addext "subjectAltName=DNS:$domain" \
            -keyout "$dir/certs/$domain.key" -out "$dir/certs/$domain.crt" 2>/dev/null
        tls_module=' "tls";'
        ssl_line="ssl = { certificate = \"$dir/certs/$domain.crt\"; key = \"$dir/certs/$domain.key\"; cafile = \"$WORK/$peer/certs/$peer_domain.crt\" }"
    fi
    cat >"$dir/prosody.cfg.lua" <<EOF
-- $domain: Debian's example prosody.cfg.lua, modules unchanged except mod_limits (its
-- c2s 10 kb/s and s2sin 30 kb/s rate limits would cap the relay at a few hundred messages/s).
-- TLS=$TLS: mod_tls $([ "$S2S_TLS" = 1 ] && echo "loaded" || echo "not loaded"), c2s encryption $([ "$C2S_TLS" = 1 ] && echo required || echo "not required"),
-- s2s encryption $([ "$S2S_TLS" = 1 ] && echo "required, certificate authentication (peer's certificate as CA)" || echo "not required, dialback"); one address per process.
admins = { }
plugin_paths = { "/usr/local/lib/prosody/modules" }
modules_enabled = {
	"disco"; "roster"; "saslauth";$tls_module "blocklist"; "bookmarks"; "carbons"; "dialback";
	"pep"; "private"; "smacks"; "vcard4"; "vcard_legacy"; "csi_simple"; "invites";
	"invites_adhoc"; "invites_register"; "ping"; "register"; "time"; "uptime"; "version";
	"admin_adhoc"; "admin_shell"; "posix";
}
modules_disabled = { }
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
certificates = "$dir/certs"
admin_socket = "$dir/data/prosody.sock"
interfaces = { "$ip" }
local_interfaces = { "$ip" }
c2s_interfaces = { "$ip" }
s2s_interfaces = { "$ip" }
c2s_ports = { 5222 }
s2s_ports = { 5269 }
c2s_direct_tls_ports = { }
s2s_direct_tls_ports = { }
c2s_require_encryption = $(tf "$C2S_TLS")
s2s_require_encryption = $(tf "$S2S_TLS")
s2s_secure_auth = $(tf "$S2S_TLS")
$([ "$S2S_TLS" = 1 ] || echo 's2s_insecure_domains = { "one.test", "two.test" }')
allow_unencrypted_plain_auth = $(tf $((1 - C2S_TLS)))
authentication = "internal_plain"
storage = "internal"
unbound = { hoststxt = "$WORK/hosts"; resolvconf = "$WORK/resolv.conf" }
log = { $LOG = "$dir/prosody.log" }
VirtualHost "$domain"
$ssl_line
EOF
}

write_config a one.test 127.0.0.1 b two.test
write_config b two.test 127.0.0.2 a one.test
CAFILE_ARG=()
if [ "$C2S_TLS" = 1 ]; then
    cat "$WORK/a/certs/one.test.crt" "$WORK/b/certs/two.test.crt" >"$WORK/client-ca.pem"
    CAFILE_ARG=(--cafile "$WORK/client-ca.pem")
fi
chown -R prosody:prosody "$WORK"
chmod 755 "$WORK"

# Accounts (prosodyctl drops to the prosody user itself).
for i in $(seq 0 $((PAIRS - 1))); do
    prosodyctl --config "$WORK/a/prosody.cfg.lua" register "s$i" one.test "$PASSWORD" >/dev/null
    prosodyctl --config "$WORK/b/prosody.cfg.lua" register "r$i" two.test "$PASSWORD" >/dev/null
done

start() { # name
    local dir="$WORK/$1"
    setpriv --reuid=prosody --regid=prosody --init-groups \
        prosody --config "$dir/prosody.cfg.lua" -F >"$dir/stdout.log" 2>&1 &
    PIDS+=("$!")
}
start a
start b
for d in a b; do
    for _ in $(seq 100); do [ -s "$WORK/$d/prosody.pid" ] && break; sleep 0.1; done
done
PID_A=$(cat "$WORK/a/prosody.pid")
PID_B=$(cat "$WORK/b/prosody.pid")
for port in 127.0.0.1:5222 127.0.0.2:5222 127.0.0.1:5269 127.0.0.2:5269; do
    for _ in $(seq 100); do ss -tlnH "( sport = :${port##*:} )" | grep -q "$port" && break; sleep 0.1; done
done
echo "prosody one.test pid $PID_A on 127.0.0.1, two.test pid $PID_B on 127.0.0.2; TLS=$TLS (c2s $([ "$C2S_TLS" = 1 ] && echo STARTTLS required || echo plain), s2s $([ "$S2S_TLS" = 1 ] && echo TLS required + certificate auth || echo plain + dialback)); $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"

rc=0
python3 "$HERE/xmpp_load.py" --pids "$PID_A,$PID_B" --names one.test,two.test --parts "$PARTS" \
    --runs "$RUNS" --total "$TOTAL" --max-seconds "$MAX_SECONDS" --window "$WINDOW" --pairs "$PAIRS" \
    --password "$PASSWORD" "${CAFILE_ARG[@]}" --ss --json "$WORK/results.json" || rc=$?

for d in a b; do
    if [ -s "$WORK/$d/prosody.log" ]; then
        echo "--- $d/prosody.log ($LOG and above, last 10 lines of $(wc -l <"$WORK/$d/prosody.log"))"
        tail -n 10 "$WORK/$d/prosody.log"
    fi
done
exit "$rc"
