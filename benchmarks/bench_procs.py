"""The processes of the benchmark: /proc accounting for a process tree, starting and stopping
by PID, and the three proxies' configurations (ssaproxy, stunnel, haproxy), each serving both
modes from one process:

    client mode (plaintext in, verified TLS out):   server mode (TLS in, plaintext out):
      ssaproxy  REDIRECT 127.0.0.2:8080 -> :15001     ssaproxy  127.0.0.1:15011 (inbound)
      stunnel   127.0.0.1:15002                       stunnel   127.0.0.1:15012
      haproxy   127.0.0.1:15003                       haproxy   127.0.0.1:15013
    upstream: TLS 127.0.0.2:8443 (backend.test)       backend: plaintext 127.0.0.2:8090

Client mode verifies like ssaproxy does: the chain against the bench CA, the name
backend.test, SNI backend.test; no session is offered (full handshakes).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

HOSTNAME = "backend.test"
BACKEND_TLS = ("127.0.0.2", 8443)
BACKEND_PLAIN = ("127.0.0.2", 8090)
VIRTUAL_ADDR = ("127.0.0.2", 8080)  # what a client dials for ssaproxy; REDIRECTed to 15001
CLIENT_PORTS = {"ssaproxy": 15001, "stunnel": 15002, "haproxy": 15003}
SERVER_PORTS = {"ssaproxy": 15011, "stunnel": 15012, "haproxy": 15013}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str = "") -> None:
    print(msg, flush=True)


# =========================================================================== /proc


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree(pid: int) -> list[int]:
    """pid and every live descendant (worker processes, if any)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                children.setdefault(int(st[1]), []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process tree (all threads; reaped children through cutime/cstime)."""
    if pid is None:
        return 0.0
    total = 0
    for p in tree(pid):
        st = _stat(p)
        if st is not None:
            total += int(st[11]) + int(st[12]) + int(st[13]) + int(st[14])
    return total / CLK_TCK


def status_kib(pid: int, key: str = "VmRSS") -> int:
    """VmRSS (or another status field) summed over the process tree, in KiB."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def fd_count(pid: int) -> int:
    n = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            n += len(os.listdir(f"/proc/{p}/fd"))
    return n


def system_busy() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


def listening(port: int) -> bool:
    want = f":{port:04X}"
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1].endswith(want) and parts[3] == "0A":
                        return True
        except OSError:
            pass
    return False


def wait_listening(ports: list[int], proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if all(listening(p) for p in ports):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening")
        time.sleep(0.05)
    raise RuntimeError(f"{what} is not listening on ports {ports} after {timeout:.0f}s")


def remove_namespace(ns: str) -> None:
    """End every process left in network namespace `ns` (TERM, then KILL), then delete it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), sig)
        if not pids:
            break
        time.sleep(1.0)
    subprocess.run(["ip", "netns", "del", ns], check=False)


def stop_process(proc: subprocess.Popen, what: str, timeout: float = 15.0) -> None:
    """SIGTERM this one PID, then SIGKILL it if it does not go."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"  ! {what} (pid {proc.pid}) ignored SIGTERM for {timeout:.0f}s; killing it")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def start_backend(work: str, chain: str, key: str, max_seconds: float) -> tuple[subprocess.Popen, list[int]]:
    """bench_backend.py on BACKEND_TLS and BACKEND_PLAIN, listening; (its process, its PIDs
    with the pre-forked workers').  It ends itself after `max_seconds` if nobody stops it."""
    here = os.path.dirname(os.path.abspath(__file__))
    with open(f"{work}/backend.log", "w") as err:
        backend = subprocess.Popen(
            [sys.executable, os.path.join(here, "bench_backend.py"), "--cert", chain, "--key", key,
             "--tls", "{}:{}".format(*BACKEND_TLS), "--plain", "{}:{}".format(*BACKEND_PLAIN),
             "--max-seconds", str(int(max_seconds))],
            stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True)
    ready = backend.stdout.readline().split()  # type: ignore[union-attr]
    if not ready or ready[0] != "READY":
        stop_process(backend, "backend")
        raise RuntimeError(f"the backend did not start (see {work}/backend.log)")
    wait_listening([BACKEND_TLS[1], BACKEND_PLAIN[1]], backend, "backend")
    return backend, [backend.pid] + [int(x) for x in ready[1:]]


def run_measured(runner: Any, keep: bool, what: str) -> int:
    """`runner.run()` inside the namespace, then `runner.teardown()` and its work directory
    (`runner.work`) removed unless `keep`; SIGTERM unwinds through the clean-up."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    try:
        runner.run()
    finally:
        runner.teardown()
        log(f"elapsed: {time.monotonic() - t0:.0f} s")
        if keep:
            log(f"work dir kept ({what}): {runner.work}")
        else:
            shutil.rmtree(runner.work, ignore_errors=True)
    return 0


def run_in_namespace(script: str, json_path: str | None, limit: float, tools: tuple[str, ...], why: str) -> int:
    """Run `script --inner` with this process's arguments (--json given again as `json_path`,
    absolute) in a network namespace made for it, and delete the namespace afterwards, ending
    whatever is left in it.  Needs root and `tools`; stops the run after `limit` seconds."""
    name = os.path.basename(script)
    if os.geteuid() != 0:
        print(f"{name} needs root ({why})", file=sys.stderr)
        return 2
    for tool in ("ip", *tools):
        if shutil.which(tool) is None:
            print(f"{name} needs {tool}", file=sys.stderr)
            return 2
    argv, skip = [], False
    for a in sys.argv[1:]:  # everything but --json, which goes again as an absolute path
        if skip or a.startswith("--json"):
            skip = a == "--json"
            continue
        argv.append(a)
    argv += ["--json", json_path] if json_path else []
    ns = f"ssap-{name.removesuffix('.py')}-{os.getpid()}"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    subprocess.run(["ip", "netns", "add", ns], check=True)
    inner = None
    rc = 1
    try:
        inner = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, os.path.abspath(script), "--inner",
                                  *argv], stdin=subprocess.DEVNULL)
        try:
            rc = inner.wait(limit)
        except subprocess.TimeoutExpired:
            print(f"{name}: the run did not finish in {limit:.0f}s; stopping it", file=sys.stderr)
            stop_process(inner, "benchmark", timeout=15)
            rc = 1
    except (KeyboardInterrupt, SystemExit):
        if inner is not None:
            stop_process(inner, "benchmark", timeout=15)
        rc = 130
    finally:
        remove_namespace(ns)  # anything still in it was started by this run
    return rc


class Proc:
    """A proxy we start (pinned with taskset when `cpus` is set) and stop by PID."""

    def __init__(self, name: str, argv: list[str], ports: list[int], workdir: str, cpus: str | None) -> None:
        self.name = name
        self.argv = (["taskset", "-c", cpus] if cpus else []) + argv  # taskset execs: the PID is the proxy's
        self.ports = ports
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.logs: list[str] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self.starts += 1
        path = os.path.join(self.workdir, f"{self.name}-{self.starts}.log")
        self.logs.append(path)
        with open(path, "wb") as out:  # the child has its own copy once Popen returns
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.workdir)
        try:
            wait_listening(self.ports, self.proc, self.name)
        except RuntimeError as e:
            with open(path, errors="replace") as f:
                tail = f.read()[-1500:]
            raise RuntimeError(f"{e}; the end of its output:\n{tail}") from None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        stop_process(self.proc, self.name)
        rc = self.proc.returncode
        self.proc = None
        return rc

    def restart(self) -> None:
        self.stop()
        self.start()


# =========================================================================== configurations


def _write(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return path


def ssaproxy_proc(work: str, ca: str, chain: str, key: str, cpus: str | None, workers: int,
                  extra: str = "", name: str = "ssaproxy", resumption: bool = False) -> Proc:
    """ssaproxy: outbound (transparent), inbound and the socket API in one daemon.  `extra` is
    appended to the config (a variant is a few lines of TOML).  Session resumption is off
    unless asked for: the figures are for full handshakes, as the other proxies are set up."""
    # Always written: a daemon without the key runs one worker per CPU it may use.
    daemon = f"\n[daemon]\nworkers = {workers}\n"
    conf = _write(os.path.join(work, f"{name}.toml"), f"""\
        [policy]
        trust_store = "{ca}"
        session_resumption = {"true" if resumption else "false"}

        [api]
        socket = "{work}/{name}-api.sock"
        mode = "0600"
        max_sessions_per_uid = 2000   # the loader is one user holding the idle test's sessions

        [outbound]
        listen = "tcp:{CLIENT_PORTS['ssaproxy']}:interface=127.0.0.1"

        [[outbound.route]]
        name = "bench"
        destination = "{VIRTUAL_ADDR[0]}/32"
        ports = [{VIRTUAL_ADDR[1]}]
        tls_port = {BACKEND_TLS[1]}
        hostname = "{HOSTNAME}"

        [[inbound]]
        name = "bench"
        listen = "tcp:{SERVER_PORTS['ssaproxy']}:interface=127.0.0.1"
        backend = "tcp:{BACKEND_PLAIN[0]}:{BACKEND_PLAIN[1]}"
        certificates = [ {{ chain = "{chain}", key = "{key}" }} ]
        worker_affinity = "none"   # every load comes from one address: spread it over the workers
        """ + daemon + extra)
    twistd = shutil.which("twistd") or os.path.join(os.path.dirname(sys.executable), "twistd")
    return Proc(name, [twistd, "-n", "--pidfile=", "ssaproxy", "--config", conf],
                [CLIENT_PORTS["ssaproxy"], SERVER_PORTS["ssaproxy"]], work, cpus)


def stunnel_proc(work: str, ca: str, chain: str, key: str, cpus: str | None) -> Proc:
    # sessionResume = no: with its defaults (even with NO_TICKET) stunnel resumes TLS 1.3
    # sessions, and the handshake figure is for full handshakes.
    conf = _write(os.path.join(work, "stunnel.conf"), f"""\
        foreground = quiet
        pid =
        syslog = no
        output = {work}/stunnel-output.log
        debug = notice

        [client]
        client = yes
        accept = 127.0.0.1:{CLIENT_PORTS['stunnel']}
        connect = {BACKEND_TLS[0]}:{BACKEND_TLS[1]}
        sni = {HOSTNAME}
        verifyChain = yes
        CAfile = {ca}
        checkHost = {HOSTNAME}
        sslVersionMin = TLSv1.2
        sessionResume = no
        options = NO_TICKET

        [server]
        accept = 127.0.0.1:{SERVER_PORTS['stunnel']}
        connect = {BACKEND_PLAIN[0]}:{BACKEND_PLAIN[1]}
        cert = {chain}
        key = {key}
        sslVersionMin = TLSv1.2
        options = NO_TICKET
        """)
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel") or "/usr/bin/stunnel4"
    return Proc("stunnel", [stunnel, conf], [CLIENT_PORTS["stunnel"], SERVER_PORTS["stunnel"]], work, cpus)


def haproxy_proc(work: str, ca: str, chain: str, key: str, cpus: str | None, reuse: bool = False) -> Proc:
    combined = os.path.join(work, "haproxy-crt.pem")
    with open(combined, "w") as out:
        for path in (chain, key):
            with open(path) as f:
                out.write(f.read())
    # One thread (the proxy is pinned to one core anyway); no logging, as haproxy ships;
    # no-ssl-reuse: every upstream connection is a full handshake (unless `reuse`, for a
    # resumption variant: haproxy's default reuse of its last session).
    no_reuse = "" if reuse else " no-ssl-reuse no-tls-tickets"
    conf = _write(os.path.join(work, "haproxy.cfg"), f"""\
        global
            nbthread 1
            maxconn 4000
            ssl-server-verify required

        defaults
            mode tcp
            timeout connect 10s
            timeout client 1h
            timeout server 1h

        listen client_mode
            bind 127.0.0.1:{CLIENT_PORTS['haproxy']}
            server up {BACKEND_TLS[0]}:{BACKEND_TLS[1]} ssl verify required ca-file {ca} sni str({HOSTNAME}) \
verifyhost {HOSTNAME}{no_reuse} ssl-min-ver TLSv1.2

        listen server_mode
            bind 127.0.0.1:{SERVER_PORTS['haproxy']} ssl crt {combined} no-tls-tickets ssl-min-ver TLSv1.2
            server be {BACKEND_PLAIN[0]}:{BACKEND_PLAIN[1]}
        """)
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    return Proc("haproxy", [haproxy, "-db", "-f", conf], [CLIENT_PORTS["haproxy"], SERVER_PORTS["haproxy"]],
                work, cpus)


def versions() -> dict[str, str]:
    def first(argv: list[str], stream: str = "stdout") -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except OSError:
            return "?"
        lines = getattr(r, stream).splitlines()
        return " ".join(lines[0].split()) if lines else "?"

    stunnel = shutil.which("stunnel4") or "stunnel4"
    out = subprocess.run([stunnel, "-version"], capture_output=True, text=True).stderr.splitlines()
    st = [" ".join(x.split()) for x in out if x.startswith("stunnel ") or x.startswith("Running")]
    return {"haproxy": first(["haproxy", "-v"]), "stunnel": ", ".join(st),
            "openssl": first(["openssl", "version"])}
