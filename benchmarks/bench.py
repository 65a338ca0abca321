#!/usr/bin/env python3
"""ssaproxy, stunnel and haproxy side by side: client mode, server mode and the socket API.

    client mode:  plaintext loader --> proxy --verified TLS--> backend (TLS, backend.test)
    server mode:  TLS loader --> proxy (terminates TLS) --plaintext--> backend
    socket API:   loader using ssaproxy.socket(IPPROTO_TLS) --> ssaproxy --TLS--> backend

    python benchmarks/bench.py              # full run (5-6 minutes on 2 CPUs; its budget is 9)
    python benchmarks/bench.py --quick      # smaller sizes, one round (about 1.5 minutes)
    python benchmarks/bench.py --markdown   # also print the block for docs/benchmarks.md
    python benchmarks/bench.py --workers 2  # ssaproxy with [daemon] workers = 2

Everything runs on loopback inside a network namespace this script creates and deletes, so it
needs root, `ip`, `iptables`, `taskset`, stunnel4, haproxy and ssaproxy
installed (`twistd ssaproxy`).  With two or more CPUs each proxy runs pinned alone on one CPU
(`--proxy-cpus`, default 0) and the loader and backend on the others (`--loader-cpus`).

For each proxy and mode it reports bulk MB/s both ways and MB per proxy CPU-second, new
connections/s with full handshakes and the proxy CPU per connection, keep-alive
request/response (128-byte answers) with the proxy CPU per request and the latency it adds
over a direct TLS connection to the backend (p50/p99), and the memory (RSS) per idle relayed
connection.  Proxy CPU and RSS are read from /proc for the proxy's whole process tree.  Ratios
against haproxy in the same run are the headline.  It measures; it asserts nothing on timings.
docs/benchmarks.md says what each figure means and records runs.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_client as bc  # noqa: E402 - the sibling modules sit next to this script
import bench_procs as bp  # noqa: E402
from bench_pki import write_pki  # noqa: E402
from bench_report import report  # noqa: E402

NCPU = os.cpu_count() or 1
SIZES = {
    "full": dict(rounds=3, bulk_mb=200, conns=1000, concurrency=16, requests=5000, idle=500, budget=540.0),
    "quick": dict(rounds=1, bulk_mb=50, conns=300, concurrency=16, requests=2000, idle=200, budget=150.0),
    # The smallest configuration, for the test suite: every path once, figures not meaningful.
    "smoke": dict(rounds=1, bulk_mb=2, conns=10, concurrency=4, requests=20, idle=5, budget=90.0),
}
PROXIES = ("ssaproxy", "stunnel", "haproxy")
MODES = ("client", "server", "api")

class Variant:
    """A handshake variant: see HANDSHAKE_VARIANTS."""

    def __init__(self, name: str, ssaproxy_extra: str, haproxy_reuse: bool = False,
                 ssaproxy_resumption: bool = False) -> None:
        self.name = name
        self.ssaproxy_extra = ssaproxy_extra
        self.haproxy_reuse = haproxy_reuse
        self.ssaproxy_resumption = ssaproxy_resumption


# Handshake variants: measured after the rounds, client mode, conn/s only, each with the
# ssaproxy daemon restarted on its config plus `ssaproxy_extra` (and haproxy with its session
# reuse on when `haproxy_reuse`).  Their rows appear in the client-mode table under the full
# handshake ("new connections/s, NAME" and "proxy CPU per new connection, NAME"), and the
# backend's counters report how many handshakes were resumed.
HANDSHAKE_VARIANTS: list[Variant] = [
    # Both proxies keep the backend's sessions ([policy] session_resumption; haproxy's default).
    Variant("resumed", "", haproxy_reuse=True, ssaproxy_resumption=True),
]


def log(msg: str = "") -> None:
    print(msg, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.size = "smoke" if args.smoke else "quick" if args.quick else "full"
        self.p = SIZES[self.size]
        self.deadline = time.monotonic() + self.p["budget"]
        self.work = tempfile.mkdtemp(prefix="ssap-bench-")
        self.modes = [m for m in args.modes.split(",") if m]
        # results[(mode, target name, figure)] = one value per round
        self.results: dict[tuple[str, str, str], list[float]] = collections.defaultdict(list)
        self.checks: list[dict[str, object]] = []  # bytes sent vs counted, per transfer
        self.notes: list[str] = []
        self.info: dict[str, object] = {}
        self.backend: subprocess.Popen | None = None
        self.backend_pids: list[int] = []
        self.iptables_rule: list[str] | None = None
        self.procs: dict[str, bp.Proc] = {}
        self.variant_names = [v.name for v in HANDSHAKE_VARIANTS]

    def left(self) -> float:
        return self.deadline - time.monotonic()

    # ------------------------------------------------------------------ setup
    def pinning(self) -> None:
        if NCPU < 2:
            self.proxy_cpus = None
            self.info["pinning"] = "none (1 CPU)"
            return
        self.proxy_cpus = self.args.proxy_cpus
        loader = self.args.loader_cpus or ",".join(
            str(c) for c in range(NCPU) if str(c) not in self.proxy_cpus.split(","))
        os.sched_setaffinity(0, {int(c) for c in loader.split(",")})  # the backend inherits it
        self.info["pinning"] = f"proxy alone on CPU {self.proxy_cpus}; loader and backend on CPU {loader} (taskset)"

    def setup(self) -> None:
        w = self.work
        chain, key, root = write_pki(Path(w), bp.HOSTNAME)  # ECDSA P-256 throughout
        self.ca, self.chain, self.key = str(root), str(chain), str(key)
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        self.backend, self.backend_pids = bp.start_backend(w, self.chain, self.key, self.p["budget"] + 120)
        self.iptables_rule = ["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", bp.VIRTUAL_ADDR[0], "--dport",
                              str(bp.VIRTUAL_ADDR[1]), "-j", "REDIRECT", "--to-ports",
                              str(bp.CLIENT_PORTS["ssaproxy"])]
        subprocess.run(["iptables", "-w", *self.iptables_rule], check=True)
        os.environ["SSAPROXY_SOCKET"] = f"{w}/ssaproxy-api.sock"
        self.procs = {
            "ssaproxy": bp.ssaproxy_proc(w, self.ca, self.chain, self.key, self.proxy_cpus, self.args.workers),
            "stunnel": bp.stunnel_proc(w, self.ca, self.chain, self.key, self.proxy_cpus),
            "haproxy": bp.haproxy_proc(w, self.ca, self.chain, self.key, self.proxy_cpus),
        }
        for proc in self.procs.values():
            proc.start()
        tls = ssl.create_default_context(cafile=self.ca)
        tls.minimum_version = ssl.TLSVersion.TLSv1_3

        def pid_of(name: str):
            return lambda: self.procs[name].pid

        self.direct = bc.Target("direct TLS", "direct", bp.BACKEND_TLS, tls_ctx=tls)
        self.targets: dict[str, list[bc.Target]] = {
            "client": [bc.Target("ssaproxy", "client", bp.VIRTUAL_ADDR, pid_fn=pid_of("ssaproxy"))]
            + [bc.Target(n, "client", ("127.0.0.1", bp.CLIENT_PORTS[n]), pid_fn=pid_of(n)) for n in PROXIES[1:]],
            "server": [bc.Target(n, "server", ("127.0.0.1", bp.SERVER_PORTS[n]), tls_ctx=tls, pid_fn=pid_of(n))
                       for n in PROXIES],
            "api": [bc.ApiTarget("ssaproxy", "api", bp.BACKEND_TLS, pid_fn=pid_of("ssaproxy"))],
        }

    def teardown(self) -> None:
        for proc in self.procs.values():
            rc = proc.stop()
            if rc not in (None, 0, -signal.SIGTERM):
                self.notes.append(f"{proc.name} exited with status {rc} on SIGTERM")
        if self.backend is not None:
            bp.stop_process(self.backend, "backend")
        if self.iptables_rule:
            subprocess.run(["iptables", "-w", "-t", "nat", "-D", *self.iptables_rule[3:]], capture_output=True)

    def backend_stats(self) -> dict[str, int]:
        """The backend's counters; the STATS connection itself is one handshake (taken off)."""
        d = {k: int(v) for k, v in (x.split("=") for x in bc.command(self.direct, b"STATS").split())}
        d["handshakes"] -= 1
        return d

    # ------------------------------------------------------------------ checks
    def functional_checks(self) -> None:
        n = min(8, self.p["bulk_mb"]) * 10**6
        log(f"Functional checks (bytes verified by CRC-32, {n // 10**6} MB each way):")
        for t in [self.direct] + [t for m in self.modes for t in self.targets[m]]:
            info = bc.command(t, b"INFO")
            upload_s, up_n = bc.upload(t, n, crc=True)
            down_s, down_n = bc.download(t, n, crc=True)
            self.check(t, "crc upload", n, up_n)
            self.check(t, "crc download", n, down_n)
            log(f"  {t.mode:<6} {t.name:<9} ok   backend saw: {info}")
        if "client" in self.modes or "api" in self.modes:
            k = 10 if self.size == "smoke" else 30
            for t in self.targets["client"] + (self.targets["api"] if "api" in self.modes else []):
                before = self.backend_stats()
                for _ in range(k):
                    bc.ping(t)
                after = self.backend_stats()
                hs = after["handshakes"] - before["handshakes"] - 1  # minus the second STATS
                res = after["resumed"] - before["resumed"]
                log(f"  {t.mode:<6} {t.name:<9} {k} connections -> backend saw {hs} full handshakes, {res} resumed")
                if res or hs != k:
                    self.notes.append(f"{t.mode} {t.name}: {hs} handshakes, {res} resumed of {k} connections")

    def check(self, t: bc.Target, what: str, sent: int, counted: int) -> None:
        self.checks.append({"mode": t.mode, "target": t.name, "what": what, "sent": sent, "counted": counted})
        if sent != counted:
            self.notes.append(f"{t.mode} {t.name} {what}: sent {sent} bytes, counted {counted}")

    # ------------------------------------------------------------------ measurements
    def measure(self, t: bc.Target, fn, *args):
        """fn(*args) with the proxy's CPU (its process tree) and the wall time around it."""
        pid = t.pid
        c0, b0, w0 = bp.cpu_seconds(pid), bp.system_busy(), time.perf_counter()
        value = fn(*args)
        wall = time.perf_counter() - w0
        b1 = bp.system_busy()
        cpu = bp.cpu_seconds(pid) - c0
        busy = (b1[0] - b0[0]) / max(1, b1[1] - b0[1]) * NCPU
        return value, cpu, wall, busy

    def put(self, t: bc.Target, figure: str, value: float) -> None:
        self.results[(t.mode, t.name, figure)].append(value)

    def bulk(self, t: bc.Target) -> None:
        n = self.p["bulk_mb"] * 10**6
        for direction, fn in (("upload", bc.upload), ("download", bc.download)):
            (secs, counted), cpu, wall, busy = self.measure(t, fn, t, n)
            self.check(t, f"bulk {direction}", n, counted)
            self.put(t, f"{direction}_mbps", n / secs / 1e6)
            if t.pid is not None and cpu > 0:
                self.put(t, f"{direction}_mb_per_cpu", n / 1e6 / cpu)
            log(f"    {direction:<8} {n / secs / 1e6:8.1f} MB/s  proxy {cpu / wall:.2f} cores, machine {busy:.2f}")

    def handshakes(self, t: bc.Target, key: str = "conn") -> None:
        before = self.backend_stats()
        (done, elapsed, lat, errors), cpu, wall, busy = self.measure(
            t, bc.conn_storm, t, self.p["conns"], self.p["concurrency"], min(60.0, self.left() - 10))
        after = self.backend_stats()
        hs = after["handshakes"] - before["handshakes"] - 1
        res = after["resumed"] - before["resumed"]
        if done:
            self.put(t, f"{key}_rate", done / elapsed)
            if t.pid is not None:
                self.put(t, f"{key}_cpu_us", cpu / done * 1e6)
        if errors:
            self.notes.append(f"{t.mode} {t.name} {key}: {sum(errors.values())} failed: {dict(errors)}")
        if key != "conn":  # a variant: what the backend saw of it
            self.info.setdefault("variant handshakes", {})[f"{key} {t.name}"] = {"handshakes": hs, "resumed": res}
        upstream = f", backend: {hs} TLS handshakes, {res} resumed" if t.mode in ("client", "api") else ""
        log(f"    {key:<8} {done / elapsed if elapsed else 0:8.0f} /s    proxy {cpu / wall:.2f} cores, machine "
            f"{busy:.2f}  ({done}/{self.p['conns']} ok{upstream})")

    def requests(self, t: bc.Target) -> None:
        lat, cpu, wall, busy = self.measure(t, bc.keepalive, t, self.p["requests"], min(30.0, self.left() - 10))
        if not lat:
            return
        self.put(t, "req_p50_us", bc.percentile(lat, 0.5) * 1e6)
        self.put(t, "req_p99_us", bc.percentile(lat, 0.99) * 1e6)
        if t.pid is not None:
            self.put(t, "req_cpu_us", cpu / len(lat) * 1e6)
        log(f"    requests {len(lat) / wall:8.0f} /s    proxy {cpu / wall:.2f} cores, machine {busy:.2f}  "
            f"(p50 {bc.percentile(lat, 0.5) * 1e6:.0f} us, p99 {bc.percentile(lat, 0.99) * 1e6:.0f} us)")

    def one_round(self, rnd: int) -> None:
        for mode in self.modes:
            order = self.targets[mode][rnd % len(self.targets[mode]):] + self.targets[mode][:rnd % len(
                self.targets[mode])]
            for t in order + ([self.direct] if mode == self.modes[0] else []):
                if self.left() < 20:
                    self.notes.append(f"round {rnd + 1}: skipped {t.mode} {t.name} (global deadline near)")
                    continue
                log(f"  round {rnd + 1} {t.mode} mode, {t.name}")
                self.bulk(t)
                self.handshakes(t)
                self.requests(t)

    def idle(self, mode: str, t: bc.Target) -> None:
        """A fresh proxy process, warmed up; n connections opened (each PING/PONG, so the
        far side is up) and left idle; RSS of the proxy tree before and after, per connection."""
        name = t.name
        self.procs[name].restart()
        for _ in range(20):
            bc.ping(t)
        time.sleep(0.5)
        pid = self.procs[name].pid
        assert pid is not None
        rss0, fd0 = bp.status_kib(pid), bp.fd_count(pid)
        socks: list[socket.socket] = []
        failed = 0
        stop_at = time.monotonic() + min(60.0, self.left() - 10)
        try:
            while len(socks) < self.p["idle"] and time.monotonic() < stop_at and failed <= 20:
                try:
                    s = bc.ping(t, keep=True)
                    assert s is not None
                    socks.append(s)
                except Exception:  # noqa: BLE001 - counted and reported
                    failed += 1
            time.sleep(1.0)
            rss1, fd1 = bp.status_kib(pid), bp.fd_count(pid)
        finally:
            for s in socks:
                s.close()
        if socks:
            self.put(t, "idle_kib", (rss1 - rss0) / len(socks))
        if failed:
            self.notes.append(f"idle {mode} {name}: {failed} connections failed to open")
        log(f"  idle {mode:<6} {name:<9} {(rss1 - rss0) / max(1, len(socks)):7.1f} KiB/conn  ({len(socks)} conns: "
            f"RSS {rss0} -> {rss1} KiB, fds {fd0} -> {fd1})")

    def variants(self) -> None:
        """HANDSHAKE_VARIANTS: conn/s in client mode with the proxies reconfigured, then back."""
        for v in HANDSHAKE_VARIANTS:
            w, pc = self.work, self.proxy_cpus
            self.procs["ssaproxy"].stop()
            self.procs["ssaproxy"] = bp.ssaproxy_proc(w, self.ca, self.chain, self.key, pc, self.args.workers,
                                                      extra=v.ssaproxy_extra, resumption=v.ssaproxy_resumption)
            self.procs["ssaproxy"].start()
            if v.haproxy_reuse:
                self.procs["haproxy"].stop()
                self.procs["haproxy"] = bp.haproxy_proc(w, self.ca, self.chain, self.key, pc, reuse=True)
                self.procs["haproxy"].start()
            for t in self.targets["client"]:
                if t.name in ("ssaproxy", "haproxy") and self.left() > 20:
                    log(f"  variant {v.name}: client mode, {t.name}")
                    self.handshakes(t, key=f"conn_{v.name}")

    def run(self) -> None:
        self.pinning()
        self.setup()
        self.info.update(header(self.args, self.size, self.p))
        for k, v in self.info.items():
            log(f"{k}: {v}")
        self.functional_checks()
        # Memory first: it takes seconds, and a loaded machine that slows the rounds down must
        # not cost the run its steadiest figure.
        log("Memory per idle connection (a fresh process each):")
        for mode in self.modes:
            for t in self.targets[mode]:
                if self.left() > 15:
                    self.idle(mode, t)
                else:
                    self.notes.append(f"skipped idle {mode} {t.name} (global deadline near)")
        for rnd in range(self.p["rounds"]):
            log(f"Round {rnd + 1} of {self.p['rounds']}")
            self.one_round(rnd)
        self.info["backend totals"] = self.backend_stats()  # the full-handshake rounds: nothing resumed
        self.variants()
        self.info["ssaproxy outcomes"] = dict(ssaproxy_outcomes(self.procs["ssaproxy"].logs))
        report(self)
        if self.args.json:
            with open(self.args.json, "w") as f:
                json.dump({"info": self.info, "notes": self.notes, "checks": self.checks,
                           "results": [{"mode": m, "target": n, "figure": k, "values": v}
                                       for (m, n, k), v in sorted(self.results.items())]}, f, indent=1, default=str)


def ssaproxy_outcomes(paths: list[str]) -> collections.Counter[str]:
    import re  # noqa: PLC0415

    rx = re.compile(r"\bconn \d+ ([a-z-]+):")
    c: collections.Counter[str] = collections.Counter()
    for path in paths:
        with open(path, errors="replace") as f:
            for line in f:
                m = rx.search(line)
                if m:
                    c[m.group(1)] += 1
                elif "Traceback" in line or "Unhandled" in line:
                    c["TRACEBACK"] += 1
    return c


def header(args: argparse.Namespace, size: str, p: dict) -> dict[str, object]:
    import OpenSSL  # noqa: PLC0415
    from OpenSSL import SSL  # noqa: PLC0415

    import twisted  # noqa: PLC0415

    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    here = os.path.dirname(os.path.abspath(__file__))
    git = subprocess.run(["git", "-C", here, "describe", "--always", "--dirty"], capture_output=True, text=True)
    v = bp.versions()
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git.stdout.strip() or "?",
        "machine": f"{NCPU} CPUs, {cpu}, Linux {os.uname().release}; load average at start {load}",
        "note": args.note or "-",
        "versions": f"Python {sys.version.split()[0]}, Twisted {twisted.__version__}, pyOpenSSL "
                    f"{OpenSSL.__version__} on {SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()} (ssaproxy); "
                    f"{v['haproxy']}; {v['stunnel']}; {ssl.OPENSSL_VERSION} (Python ssl: loader, backend)",
        "ssaproxy workers": args.workers,
        "size": f"{size}: {p['rounds']} round(s), bulk {p['bulk_mb']} MB, {p['conns']} connections "
                f"x{p['concurrency']}, {p['requests']} keep-alive requests, {p['idle']} idle connections",
    }


def run_inner(args: argparse.Namespace) -> int:
    return bp.run_measured(Bench(args), args.keep, "logs, configs")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes, one round (about 1.5 minutes)")
    size.add_argument("--smoke", action="store_true", help="the smallest run of every path (figures meaningless)")
    parser.add_argument("--workers", type=int, default=1, help="ssaproxy worker processes ([daemon] workers)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of client,server,api")
    parser.add_argument("--proxy-cpus", default="0", help="CPU list the proxy is pinned to (taskset -c)")
    parser.add_argument("--loader-cpus", default="", help="CPU list of loader and backend (default: the others)")
    parser.add_argument("--note", default="", help="recorded in the header, e.g. 'machine shared with other work'")
    parser.add_argument("--markdown", action="store_true", help="also print the block for docs/benchmarks.md")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs, certificates)")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json:
        args.json = os.path.abspath(args.json)
    if args.inner:
        return run_inner(args)
    if any(m not in MODES for m in args.modes.split(",")):
        parser.error(f"--modes: choose from {','.join(MODES)}")
    budget = SIZES["smoke" if args.smoke else "quick" if args.quick else "full"]["budget"]
    return bp.run_in_namespace(__file__, args.json, float(budget) + 180, ("iptables", "taskset", "haproxy"),
                               "network namespace, iptables")


if __name__ == "__main__":
    sys.exit(main())
