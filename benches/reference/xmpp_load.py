#!/usr/bin/env python3
"""XMPP load generator for the Prosody federation reference benchmark.

Python 3.11+ standard library only (asyncio streams, no XMPP library). With --cafile the
client connections use STARTTLS (RFC 6120 section 5): after the first stream features the
client sends <starttls/>, waits for <proceed/>, upgrades the stream with
StreamWriter.start_tls() (certificate checked against --cafile, hostname checking on, so the
server's certificate must name the domain in subjectAltName), then restarts the stream and
goes on with SASL PLAIN, bind and session. Without --cafile the connections stay plain TCP.
N sender accounts at the first domain, N recipient accounts at the second; sender i
sends only to recipient i. Every message body embeds the pair, a sequence number and
the send time (time.perf_counter_ns(), CLOCK_MONOTONIC: comparable across processes),
padded to 256 bytes; recipients find them in the byte stream with a regex.

Parts (see --parts):
  check       a few messages per pair; all must arrive exactly once
  saturation  RUNS runs of TOTAL messages with at most WINDOW in flight per pair
  paced       RATE messages/s for SECONDS seconds, round robin over the pairs

Exit status 1 if any message was lost or duplicated, or an error stanza came back.
"""

import argparse
import asyncio
import base64
import json
import os
import re
import ssl
import statistics
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY_LEN = 256
BODY_RE = re.compile(rb"<body>K(\d+)\.(\d+)\.(\d+)\.")
ERROR_RE = re.compile(rb"type=['\"]error['\"]")


def proc_cpu(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2:].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


class XmppError(Exception):
    pass


class Client:
    def __init__(self, ip, domain, user, password, resource, sslctx=None):
        self.ip, self.domain, self.user = ip, domain, user
        self.password, self.resource = password, resource
        self.sslctx = sslctx
        self.buf = b""
        self.tls = None

    async def _read_until(self, *patterns, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            for p in patterns:
                i = self.buf.find(p)
                if i >= 0:
                    return p
            if b"<stream:error" in self.buf or b"</stream:stream>" in self.buf:
                raise XmppError(f"{self.user}@{self.domain}: stream error: {self.buf[-400:]!r}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise XmppError(f"{self.user}@{self.domain}: timeout waiting for {patterns}: {self.buf[-400:]!r}")
            data = await asyncio.wait_for(self.reader.read(65536), left)
            if not data:
                raise XmppError(f"{self.user}@{self.domain}: connection closed: {self.buf[-400:]!r}")
            self.buf += data

    def _open_stream(self):
        self.writer.write(
            b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            b"xmlns:stream='http://etherx.jabber.org/streams' to='%s' version='1.0'>"
            % self.domain.encode())

    async def connect(self):
        self.reader, self.writer = await asyncio.open_connection(self.ip, 5222, limit=1 << 22)
        self._open_stream()
        await self._read_until(b"</stream:features>")
        if self.sslctx is not None:
            if b"urn:ietf:params:xml:ns:xmpp-tls" not in self.buf:
                raise XmppError(f"{self.user}@{self.domain}: STARTTLS not offered: {self.buf!r}")
            self.buf = b""
            self.writer.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            if await self._read_until(b"<proceed", b"<failure") == b"<failure":
                raise XmppError(f"{self.user}@{self.domain}: STARTTLS failure: {self.buf!r}")
            # <proceed/> is the last thing the server sends in the clear.
            await self._read_until(b"/>")
            self.buf = b""
            await self.writer.start_tls(self.sslctx, server_hostname=self.domain)
            sslobj = self.writer.get_extra_info("ssl_object")
            self.tls = f"{sslobj.version()} {sslobj.cipher()[0]}"
            self._open_stream()
            await self._read_until(b"</stream:features>")
        if b"PLAIN" not in self.buf:
            raise XmppError(f"SASL PLAIN not offered: {self.buf!r}")
        cred = base64.b64encode(b"\0" + self.user.encode() + b"\0" + self.password.encode())
        self.buf = b""
        self.writer.write(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>%s</auth>" % cred)
        if await self._read_until(b"<success", b"<failure") == b"<failure":
            raise XmppError(f"{self.user}@{self.domain}: SASL failure: {self.buf!r}")
        self.buf = b""
        self._open_stream()
        await self._read_until(b"</stream:features>")
        features = self.buf
        self.buf = b""
        self.writer.write(
            b"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            b"<resource>%s</resource></bind></iq>" % self.resource.encode())
        await self._read_until(b"</jid>")
        m = re.search(rb"<jid>([^<]+)</jid>", self.buf)
        self.jid = m.group(1).decode() if m else None
        self.buf = b""
        if b"urn:ietf:params:xml:ns:xmpp-session" in features and b"<optional" not in features.split(b"xmpp-session")[1][:80]:
            self.writer.write(b"<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
            await self._read_until(b"id='sess1'", b'id="sess1"')
            await self._read_until(b"</iq>", b"/>")
            self.buf = b""
        await self.writer.drain()


class Bench:
    def __init__(self, args):
        self.a = args
        n = args.pairs
        self.n = n
        pad = b"x" * BODY_LEN
        self.pad = pad
        self.prefix = [
            b"<message to='r%d@%s' type='chat' id='m%d-" % (i, args.domain_b.encode(), i) for i in range(n)]
        self.sent = [0] * n        # messages sent, per pair (sequence numbers 0..sent-1)
        self.delivered = [0] * n   # deliveries counted in the current phase
        self.seen = [bytearray(1 << 16) for _ in range(n)]
        self.dups = 0
        self.errors = 0
        self.first_error = None
        self.lat = []
        self.last_delivery_ns = 0
        self.mode = None
        self.limit = [0] * n       # saturation: last sequence number (exclusive) allowed this run
        self.window = args.window
        self.done = None
        self.stop_sending = False

    def make(self, i, seq, now_ns):
        head = b"K%d.%d.%d." % (i, seq, now_ns)
        body = head + self.pad[: BODY_LEN - len(head)]
        return b"%s%d'><body>%s</body></message>" % (self.prefix[i], seq, body)

    def send_batch(self, i, count):
        if count <= 0:
            return
        now = time.perf_counter_ns()
        s = self.sent[i]
        out = [self.make(i, s + k, now) for k in range(count)]
        self.sent[i] = s + count
        self.senders[i].writer.write(b"".join(out))

    def refill(self, i):
        if self.stop_sending:
            return
        inflight = self.sent[i] - self.base[i] - self.delivered[i]
        room = min(self.window - inflight, self.limit[i] - self.sent[i])
        # Batch refills: do not write a handful of bytes per delivery.
        if room >= self.a.refill_batch or (room > 0 and self.sent[i] + room >= self.limit[i]):
            self.send_batch(i, room)

    async def recv_loop(self, i, cl):
        reader = cl.reader
        tail = cl.buf
        seen = self.seen[i]
        while True:
            data = await reader.read(1 << 20)
            if not data:
                if self.mode != "closing":
                    print(f"recipient {i}: connection closed", file=sys.stderr)
                return
            now = time.perf_counter_ns()
            buf = tail + data
            end = buf.rfind(b"</message>")
            if end < 0:
                tail = buf
                continue
            end += len(b"</message>")
            chunk, tail = buf[:end], buf[end:]
            if ERROR_RE.search(chunk):
                self.errors += 1
                self.first_error = self.first_error or chunk[:600]
            k = 0
            lat = self.lat
            for m in BODY_RE.finditer(chunk):
                pair, seq, t = int(m.group(1)), int(m.group(2)), int(m.group(3))
                if pair != i:
                    self.errors += 1
                    self.first_error = self.first_error or b"wrong recipient: " + m.group(0)
                    continue
                if seq >= len(seen):
                    seen.extend(bytearray(max(seq + 1 - len(seen), len(seen))))
                if seen[seq]:
                    self.dups += 1
                    continue
                seen[seq] = 1
                k += 1
                lat.append(now - t)
            if k:
                self.delivered[i] += k
                self.total_delivered += k
                self.last_delivery_ns = now
                if self.mode == "saturation":
                    self.refill(i)
                if self.total_delivered >= self.expect and self.done is not None and not self.done.done():
                    self.done.set_result(True)

    async def drain_loop(self, i, cl):
        """Senders' incoming stream: count error stanzas (nothing else is expected)."""
        while True:
            data = await cl.reader.read(1 << 16)
            if not data:
                if self.mode != "closing":
                    print(f"sender {i}: connection closed", file=sys.stderr)
                return
            if ERROR_RE.search(data):
                self.errors += 1
                self.first_error = self.first_error or data[:600]

    async def setup(self):
        a = self.a
        ctx = ssl.create_default_context(cafile=a.cafile) if a.cafile else None
        self.senders = [Client(a.ip_a, a.domain_a, f"s{i}", a.password, "bench", ctx) for i in range(self.n)]
        self.recipients = [Client(a.ip_b, a.domain_b, f"r{i}", a.password, "bench", ctx) for i in range(self.n)]
        await asyncio.gather(*(c.connect() for c in self.senders + self.recipients))
        tls = sorted({c.tls or "plain TCP" for c in self.senders + self.recipients})
        print(f"c2s connections: {', '.join(tls)}", flush=True)
        for c in self.recipients:
            c.writer.write(b"<presence/>")
            await c.writer.drain()
        await asyncio.sleep(0.3)
        for c in self.recipients:
            c.buf = b""  # drop anything (own presence etc.) before messages start
        self.tasks = [asyncio.create_task(self.recv_loop(i, c)) for i, c in enumerate(self.recipients)]
        self.tasks += [asyncio.create_task(self.drain_loop(i, c)) for i, c in enumerate(self.senders)]

    def begin_phase(self, mode, expect):
        self.mode = mode
        self.base = list(self.sent)
        self.delivered = [0] * self.n
        self.total_delivered = 0
        self.expect = expect
        self.lat = []
        self.done = asyncio.get_running_loop().create_future()
        self.dups_before, self.errors_before = self.dups, self.errors

    async def wait_done(self, timeout, idle):
        """Wait until everything expected arrived; give up after `idle` s without a delivery."""
        deadline = time.monotonic() + timeout
        last_seen, last_t = -1, time.monotonic()
        while not self.done.done():
            try:
                await asyncio.wait_for(asyncio.shield(self.done), 0.5)
            except asyncio.TimeoutError:
                pass
            now = time.monotonic()
            if self.total_delivered != last_seen:
                last_seen, last_t = self.total_delivered, now
            if now - last_t > idle or now > deadline:
                return False
        return True

    def phase_check(self, sent_total):
        lost = sent_total - self.total_delivered
        return lost, self.dups - self.dups_before, self.errors - self.errors_before

    async def check(self):
        per = self.a.check_msgs
        self.begin_phase("check", per * self.n)
        for i in range(self.n):
            for _ in range(per):
                self.send_batch(i, 1)
        ok = await self.wait_done(30, 10)
        await asyncio.sleep(0.5)  # late duplicates
        lost, dups, errs = self.phase_check(per * self.n)
        lat = sorted(self.lat)
        print(f"check: {per * self.n} sent, {self.total_delivered} delivered, lost {lost}, duplicates {dups}, "
              f"error stanzas {errs}; latency max {lat[-1] / 1e6 if lat else float('nan'):.2f} ms", flush=True)
        if self.first_error:
            print(f"first error: {self.first_error!r}", file=sys.stderr)
        return ok and lost == 0 and dups == 0 and errs == 0

    async def ss_snapshot(self, delay):
        await asyncio.sleep(delay)
        p = await asyncio.create_subprocess_exec(
            "ss", "-tnpH", "state", "established", "( sport = :5269 or dport = :5269 )",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await p.communicate()
        print("ss during saturation run (s2s, port 5269):", flush=True)
        for line in out.decode().splitlines():
            print("   ", " ".join(line.split()), flush=True)

    async def saturation(self, run_no):
        a = self.a
        per = a.total // self.n
        total = per * self.n
        self.begin_phase("saturation", total)
        self.stop_sending = False
        for i in range(self.n):
            self.limit[i] = self.sent[i] + per
        pids = a.pids
        cpu0 = [proc_cpu(p) for p in pids]
        self_cpu0 = proc_cpu(os.getpid())
        if run_no == 1 and a.ss:
            asyncio.create_task(self.ss_snapshot(min(2.0, a.max_seconds / 4)))
        t0 = time.perf_counter_ns()
        for i in range(self.n):
            self.send_batch(i, min(self.window, per))

        async def cap():
            await asyncio.sleep(a.max_seconds)
            self.stop_sending = True
        capper = asyncio.create_task(cap())
        while True:
            complete = await self.wait_done(a.max_seconds + 60, 10)
            if complete or not self.stop_sending:
                break
            # capped by time: done when everything sent has arrived
            sent_now = sum(self.sent[i] - self.base[i] for i in range(self.n))
            if self.total_delivered >= sent_now:
                break
        capper.cancel()
        sent_total = sum(self.sent[i] - self.base[i] for i in range(self.n))
        if self.total_delivered < sent_total:
            # wait a bit more for stragglers (if capped)
            self.expect = sent_total
            if self.total_delivered < sent_total:
                self.done = asyncio.get_running_loop().create_future()
                await self.wait_done(30, 10)
        t1 = self.last_delivery_ns
        cpu1 = [proc_cpu(p) for p in pids]
        self_cpu1 = proc_cpu(os.getpid())
        await asyncio.sleep(0.3)
        lost, dups, errs = self.phase_check(sent_total)
        wall = (t1 - t0) / 1e9
        n = self.total_delivered
        lat = sorted(self.lat)
        r = {
            "run": run_no, "sent": sent_total, "delivered": n, "lost": lost, "duplicates": dups,
            "errors": errs, "seconds": wall, "msgs_per_s": n / wall if wall > 0 else 0.0,
            "p50_ms": pct(lat, 50) / 1e6, "p99_ms": pct(lat, 99) / 1e6, "max_ms": lat[-1] / 1e6 if lat else 0,
            "cpu_us_per_msg": [(c1 - c0) / n * 1e6 if n else 0 for c0, c1 in zip(cpu0, cpu1)],
            "cpu_core_frac": [(c1 - c0) / wall if wall else 0 for c0, c1 in zip(cpu0, cpu1)],
            "gen_cpu_us_per_msg": (self_cpu1 - self_cpu0) / n * 1e6 if n else 0,
            "gen_core_frac": (self_cpu1 - self_cpu0) / wall if wall else 0,
            "rss_mib": [proc_rss_kib(p) / 1024 for p in pids],
        }
        names = self.a.names
        cpu_s = ", ".join(f"{nm} {u:.1f} us/msg ({f * 100:.0f} % of a core)"
                          for nm, u, f in zip(names, r["cpu_us_per_msg"], r["cpu_core_frac"]))
        rss_s = ", ".join(f"{nm} {m:.1f} MiB" for nm, m in zip(names, r["rss_mib"]))
        print(f"prosody saturation #{run_no}: {r['msgs_per_s']:,.0f} msg/s ({n} delivered in {wall:.2f} s, "
              f"window {self.window}/pair), p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
              f"max {r['max_ms']:.1f} ms; cpu: {cpu_s}; load generator {r['gen_cpu_us_per_msg']:.1f} us/msg "
              f"({r['gen_core_frac'] * 100:.0f} % of a core); RSS {rss_s}; lost {lost}, duplicates {dups}, "
              f"error stanzas {errs}", flush=True)
        if self.first_error:
            print(f"first error: {self.first_error!r}", file=sys.stderr)
        return r

    async def paced(self):
        a = self.a
        total = int(a.rate * a.seconds)
        self.begin_phase("paced", total)
        pids = a.pids
        cpu0 = [proc_cpu(p) for p in pids]
        interval = 1e9 / a.rate
        t0 = time.perf_counter_ns() + 50_000_000
        for k in range(total):
            target = t0 + int(k * interval)
            d = (target - time.perf_counter_ns()) / 1e9
            if d > 0:
                await asyncio.sleep(d)
            self.send_batch(k % self.n, 1)
        await self.wait_done(30, 10)
        cpu1 = [proc_cpu(p) for p in pids]
        await asyncio.sleep(0.3)
        lost, dups, errs = self.phase_check(total)
        lat = sorted(self.lat)
        r = {"sent": total, "delivered": self.total_delivered, "lost": lost, "duplicates": dups, "errors": errs,
             "p50_ms": pct(lat, 50) / 1e6, "p99_ms": pct(lat, 99) / 1e6, "max_ms": lat[-1] / 1e6 if lat else 0,
             "cpu_us_per_msg": [(c1 - c0) / max(1, self.total_delivered) * 1e6 for c0, c1 in zip(cpu0, cpu1)],
             "rss_mib": [proc_rss_kib(p) / 1024 for p in pids]}
        print(f"prosody paced: {a.rate:g} msg/s for {a.seconds:g} s: {self.total_delivered}/{total} delivered, "
              f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.2f} ms; "
              f"RSS {', '.join(f'{m:.1f} MiB' for m in r['rss_mib'])}; lost {lost}, duplicates {dups}, "
              f"error stanzas {errs}", flush=True)
        return r

    async def close(self):
        self.mode = "closing"
        for c in self.senders + self.recipients:
            try:
                c.writer.write(b"</stream:stream>")
                c.writer.close()
            except Exception:
                pass
        await asyncio.sleep(0.2)
        for t in self.tasks:
            t.cancel()


async def main(args):
    b = Bench(args)
    await b.setup()
    print(f"connected {b.n} senders at {args.domain_a} and {b.n} recipients at {args.domain_b}", flush=True)
    ok = True
    results = {"saturation": [], "paced": None}
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not await b.check():
        print("load chain check FAILED", file=sys.stderr)
        await b.close()
        return 1
    if "saturation" in parts:
        for run in range(1, args.runs + 1):
            r = await b.saturation(run)
            results["saturation"].append(r)
            ok &= r["lost"] == 0 and r["duplicates"] == 0 and r["errors"] == 0
            await asyncio.sleep(1.0)
        sat = results["saturation"]
        if sat:
            med = statistics.median(r["msgs_per_s"] for r in sat)
            runs_s = ", ".join(format(r["msgs_per_s"], ",.0f") for r in sat)
            print(f"prosody saturation median of {len(sat)}: {med:,.0f} msg/s "
                  f"(runs: {runs_s}); "
                  f"median p50 {statistics.median(r['p50_ms'] for r in sat):.2f} ms, "
                  f"median p99 {statistics.median(r['p99_ms'] for r in sat):.2f} ms", flush=True)
    if "paced" in parts:
        r = await b.paced()
        results["paced"] = r
        ok &= r["lost"] == 0 and r["duplicates"] == 0 and r["errors"] == 0
    await b.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if not ok:
        print("FAILED: messages lost, duplicated, or error stanzas received", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ip-a", default="127.0.0.1")
    ap.add_argument("--ip-b", default="127.0.0.2")
    ap.add_argument("--domain-a", default="one.test")
    ap.add_argument("--domain-b", default="two.test")
    ap.add_argument("--password", default="password")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--parts", default="saturation,paced")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--total", type=int, default=200_000)
    ap.add_argument("--max-seconds", type=float, default=20.0,
                    help="saturation: stop sending new messages after this many seconds")
    ap.add_argument("--window", type=int, default=256, help="saturation: messages in flight per pair")
    ap.add_argument("--refill-batch", type=int, default=16,
                    help="saturation: refill a pair's window only when this many slots are free")
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--check-msgs", type=int, default=5, help="messages per pair in the load chain check")
    ap.add_argument("--pids", default="", help="comma-separated prosody pids (A,B) to account CPU and RSS")
    ap.add_argument("--names", default="one.test,two.test")
    ap.add_argument("--ss", action="store_true", help="print the s2s TCP connections during saturation run 1")
    ap.add_argument("--cafile", default="",
                    help="STARTTLS on c2s, trusting the certificates in this PEM file (hostname checked)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    args.pids = [int(p) for p in args.pids.split(",") if p]
    args.names = args.names.split(",")[: len(args.pids)]
    sys.exit(asyncio.run(main(args)))
