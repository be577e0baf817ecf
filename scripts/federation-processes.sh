#!/usr/bin/env bash
# The federation demo as separate processes: three `kogge-provider` processes on loopback,
# each with its own folder, key and database, and four devices driven by the `kogge` CLI,
# each with its own encrypted data directory. The providers share nothing but a directory
# file of public lines (`domain endpoint provider-key`); every message crosses between them
# over QUIC, sealed end to end.
#
#   alice@one.example   (passphrase)
#   bob@two.example     two devices: "bob" (key file) and "bob2", linked by invite/approve
#   carol@three.example (passphrase)
#
# Messages go one -> two, two -> three, three -> one; then provider three is stopped, Alice
# sends to Carol anyway (provider one stores and queues it), three is started again and the
# message arrives. Exits non-zero if any message is missing or arrives twice.
#
# Needs only a Rust toolchain. Usage:
#   scripts/federation-processes.sh              # builds in release, runs in a temp folder
#   KOGGE_DEMO_DIR=/tmp/demo KOGGE_DEMO_PORT=47600 scripts/federation-processes.sh
#   KOGGE_DEMO_KEEP=1 ...                        # keep the folder (logs, data) afterwards
set -euo pipefail

cd "$(dirname "$0")/.."
PORT=${KOGGE_DEMO_PORT:-47430}
ROOT=${KOGGE_DEMO_DIR:-$(mktemp -d -t kogge-federation.XXXXXX)}
mkdir -p "$ROOT"

echo "== building kogge-provider and kogge (release)"
cargo build --release --quiet --features "provider-bin cli" --bin kogge-provider --bin kogge
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
BIN=${TARGET_DIR:-target}/release
PROVIDER="$BIN/kogge-provider"
KOGGE="$BIN/kogge"

declare -A PID=()
declare -A LINE=()
PASSED=0
FAILED=0
FAILURES=()

cleanup() {
    local status=$?
    for name in "${!PID[@]}"; do
        kill "${PID[$name]}" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [[ -z "${KOGGE_DEMO_KEEP:-}" && -z "${KOGGE_DEMO_DIR:-}" ]]; then
        rm -rf "$ROOT"
    else
        echo "(data and logs kept in $ROOT)"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- providers ----------------------------------------------------------------------

provider_init() { # name port
    local name=$1 port=$2
    LINE[$name]=$("$PROVIDER" init --domain "$name.example" --listen "127.0.0.1:$port" \
        --dir "$ROOT/$name" --open-registration 2>>"$ROOT/$name.log")
    echo "   ${LINE[$name]}"
}

provider_start() { # name
    local name=$1 log="$ROOT/$name.log"
    "$PROVIDER" run --config "$ROOT/$name/kogge-provider.toml" 2>>"$log" &
    PID[$name]=$!
    for _ in $(seq 1 200); do
        if grep -q "kogge-provider running" "$log" 2>/dev/null; then
            echo "   $name.example running (pid ${PID[$name]})"
            return 0
        fi
        if ! kill -0 "${PID[$name]}" 2>/dev/null; then
            echo "provider $name exited at start; its log:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.05
    done
    echo "provider $name did not start" >&2
    exit 1
}

provider_stop() { # name
    local name=$1
    kill -TERM "${PID[$name]}"
    wait "${PID[$name]}" || true
    unset "PID[$name]"
    echo "   $name.example stopped"
}

echo "== three providers, one folder each ($ROOT)"
provider_init one $PORT
provider_init two $((PORT + 1))
provider_init three $((PORT + 2))
# The shared directory: public lines only. Each provider gets the other two.
printf '%s\n' "${LINE[one]}" "${LINE[two]}" "${LINE[three]}" >"$ROOT/directory.txt"
for name in one two three; do
    grep -v "^$name.example " "$ROOT/directory.txt" >"$ROOT/$name/directory.txt"
done
provider_start one
provider_start two
provider_start three

# --- devices ------------------------------------------------------------------------

export KOGGE_PASSPHRASE_alice="alice: correct horse battery staple"
export KOGGE_PASSPHRASE_carol="carol: a different long passphrase"
export KOGGE_PASSPHRASE_bob2="bob's second device passphrase"

k() { # device args...: run the CLI for a device
    local dev=$1
    shift
    case $dev in
    bob) "$KOGGE" --dir "$ROOT/dev-bob" --key-file "$ROOT/dev-bob.key" "$@" ;;
    *)
        local var="KOGGE_PASSPHRASE_$dev"
        KOGGE_PASSPHRASE="${!var}" "$KOGGE" --dir "$ROOT/dev-$dev" "$@"
        ;;
    esac
}

echo "== identities and devices"
k alice init --address alice@one.example --directory "$ROOT/directory.txt" | sed 's/^/   /'
k bob init --address bob@two.example --directory "$ROOT/directory.txt" | sed 's/^/   /'
k carol init --address carol@three.example --directory "$ROOT/directory.txt" | sed 's/^/   /'
for d in alice bob carol; do k $d register | sed 's/^/   /'; done

echo "== Bob links a second device"
INVITE=$(k bob device invite 2>/dev/null)
REQUEST=$(k bob2 link request "$INVITE" 2>/dev/null)
APPROVAL=$(k bob device approve "$REQUEST" 2>/dev/null)
k bob2 link finish "$APPROVAL" | sed 's/^/   /'
k bob device list | sed 's/^/   /'

# --- messages -----------------------------------------------------------------------

send() { # device to text
    if k "$1" send "$2" "$3" --timeout 60 >/dev/null 2>>"$ROOT/send.log"; then
        echo "   $1 -> $2: \"$3\" (stored by the sender's provider)"
    else
        FAILED=$((FAILED + 1))
        FAILURES+=("send $1 -> $2 \"$3\"")
    fi
}

expect() { # device text timeout: the text must arrive exactly once
    local dev=$1 text=$2 timeout=${3:-30} out n hits
    out=$(k "$dev" listen --count 1 --timeout "$timeout" || true)
    n=$(grep -c -F -- " message from " <<<"$out" || true)
    hits=$(grep -F -- " message from " <<<"$out" | grep -c -F -- ": $text" || true)
    if [[ "$hits" == 1 ]]; then
        PASSED=$((PASSED + 1))
        echo "   $dev got: $(grep -F -- ": $text" <<<"$out" | sed 's/ id [0-9a-f]*:/:/')"
    else
        FAILED=$((FAILED + 1))
        FAILURES+=("$dev: \"$text\" arrived $hits times (messages shown: $n)")
        echo "   $dev MISSING \"$text\"; listen printed:" >&2
        sed 's/^/      /' <<<"$out" >&2
    fi
}

echo "== across providers, both ways"
send alice bob@two.example "hello Bob, from one.example"
expect bob "hello Bob, from one.example"
expect bob2 "hello Bob, from one.example"
send bob carol@three.example "hello Carol, from two.example"
expect carol "hello Carol, from two.example"
expect bob2 "hello Carol, from two.example" # Bob's other device gets a copy
send carol alice@one.example "hello Alice, from three.example"
expect alice "hello Alice, from three.example"
send alice carol@three.example "Carol, Alice here: got it"
expect carol "Carol, Alice here: got it"

echo "== safety numbers (compare out of band, then verify)"
NUMBER=$(k alice fingerprint carol@three.example | sed -n '2p' | tr -d ' ')
NUMBER_C=$(k carol fingerprint alice@one.example | sed -n '2p' | tr -d ' ')
if [[ "$NUMBER" == "$NUMBER_C" && ${#NUMBER} == 60 ]]; then
    k alice verify carol@three.example "$NUMBER" | sed 's/^/   /'
    PASSED=$((PASSED + 1))
else
    FAILED=$((FAILED + 1))
    FAILURES+=("safety numbers differ: $NUMBER / $NUMBER_C")
fi

echo "== provider three goes down; Alice writes to Carol anyway"
provider_stop three
send alice carol@three.example "sent while three.example was down"
echo "== provider three comes back; provider one relays what it queued"
provider_start three
expect carol "sent while three.example was down" 90

echo "== no message twice: every device listens once more"
for d in alice bob bob2 carol; do
    extra=$(k $d listen --timeout 2 | grep -c " message from " || true)
    if [[ "$extra" != 0 ]]; then
        FAILED=$((FAILED + 1))
        FAILURES+=("$d was shown $extra message(s) again")
    fi
done

echo
echo "== summary"
echo "   providers: one.example two.example three.example, separate processes and folders"
echo "   messages delivered exactly once: $PASSED checks passed, $FAILED failed"
if ((FAILED > 0)); then
    printf '   FAILED: %s\n' "${FAILURES[@]}"
    exit 1
fi
echo "   all messages arrived exactly once"
