"""The main process of a daemon with `[daemon] workers` above 1: it binds, starts and watches
the workers, and speaks for them to the service manager.  It serves no connection itself.

Theory of operation.  Binding: as root, before anything drops privileges, the main process
binds every TCP listener of the config (outbound, each [[inbound]], the admin endpoint) once
per worker, each socket with SO_REUSEPORT, so the kernel spreads new connections evenly over
the workers' accept queues (one shared socket would let whichever worker wakes first take
most of them); and the API's Unix socket once, shared by every worker (a program's control
connection is accepted by one worker, which makes and hands over the carriers of its sessions
itself, so a session never spans two workers).  It keeps its copies: a worker that dies leaves
its queue to its replacement, which gets the same sockets.

Starting: `reactor.spawnProcess` (no fork of a running reactor) runs `python -m
ssaproxy.worker` with the sockets as inherited descriptors and its start-up facts in a pipe
(ssaproxy.worker); each worker loads its certificates, drops to `[daemon]
user` itself and says READY=1 on a pipe of its own.  When every worker has, the main process
tells the service manager READY=1.  The main process keeps its identity (root, usually): it
reads nothing from the network, and it must be able to start a worker that reads root-only
keys again.  Worker log events arrive as JSON lines and are logged here with the worker's
number and pid.

Watching: a worker that exits while the daemon serves is started again after a pause that
doubles with each quick failure (`RESTART_FIRST` up to `RESTART_MOST` seconds; back to the
first after `RESTART_STEADY` seconds of running).  A worker that exits before the daemon was
ever ready (a config refused, a listener it could not adopt) stops the daemon with its status.

Signals: SIGTERM and SIGINT (and USR1, USR2, QUIT, as in one process) stop: every worker gets
SIGTERM and drains as a single daemon does (ssaproxy.drain); the main process exits after the
last one, non-zero if any worker ended badly.  A second stop signal during the drain is passed
on (the workers then reset what is left).  SIGHUP is passed to every worker, each of which
reloads (ssaproxy.reload); the main process reads the file too and closes its copies of the
sockets of listeners the new config no longer has.  A listener a reload adds is bound by each
worker after its drop, with SO_REUSEPORT beside its siblings (so: ports the daemon's user may
bind, as with one process).

Affinity: the group of an inbound listener with `worker_affinity = "source-address"` gets a BPF
program (ssaproxy.reuseport) that sends one client address to one worker (whose tickets then
resume), and the clients of a worker that is down to the others until its replacement is ready.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from typing import Any, Optional

from prometheus_client import multiprocess
from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger

from ssaproxy import kernel, reuseport
from ssaproxy.config import Config
from ssaproxy.errors import ConfigError, StartupError
from ssaproxy.groups import bind_group, tcp_listeners
from ssaproxy.kernel import Notifier
from ssaproxy.logs import worker_event
from ssaproxy.privileges import Identity
from ssaproxy.service import _claim_directory, _os_text, _prepare_socket_path, _secure_socket_path
from ssaproxy.tls.load import read_config

RESTART_FIRST = 0.5
RESTART_MOST = 30.0
RESTART_STEADY = 10.0
FIRST_CHILD_FD = 5  # 0-2 stdio, 3 the start-up document, 4 readiness
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)
LINE_LIMIT = 1 << 20  # a worker's log line longer than this is cut (a bug, not a log record)


class _Worker(protocol.ProcessProtocol):
    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.pid: Optional[int] = None
        self.ready = False
        self.started = supervisor.reactor.seconds()
        self.pending = {1: b"", 4: b""}

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.pid = transport.pid
        transport.writeToChild(3, self.supervisor.start_document(self.index))
        transport.closeChildFD(3)
        transport.closeChildFD(0)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD not in self.pending:
            return
        lines = (self.pending[childFD] + data).split(b"\n")
        self.pending[childFD] = lines.pop()[:LINE_LIMIT]
        for line in lines:
            if childFD == 1:
                self.supervisor.relog(self, line)
            elif b"READY=1" in line.split(b"\t"):
                self.ready = True
                self.supervisor.worker_ready(self)

    def processEnded(self, reason: Any) -> None:
        self.supervisor.worker_ended(self, reason.value.exitCode, reason.value.signal)


class Supervisor(service.Service):
    log = Logger()

    def __init__(self, config: Config, reactor: Any, identity: Optional[Identity], by_twistd: bool,
                 workers: int, notifier: Optional[Notifier] = None) -> None:
        self.config = config
        self.path = os.path.abspath(config.source) if os.path.exists(config.source) else None
        self.reactor = reactor
        self.identity = identity
        self.by_twistd = by_twistd
        self.count = workers
        self.notifier = notifier if notifier is not None else Notifier()
        self.groups: dict[tuple[str, int], list[socket.socket]] = {}
        self.steering = reuseport.Steering(workers)
        self.api: Optional[socket.socket] = None
        self.api_path: Optional[str] = None  # the socket file we made, removed at the end
        self.shared_dir = ""
        self.workers: dict[int, _Worker] = {}
        self.delays: dict[int, float] = {}
        self.timers: dict[int, Any] = {}
        self.ready = False
        self.stopping = False
        self.exit_code = 0
        self.prepared = False
        self._all_gone: Optional[defer.Deferred[None]] = None
        self._saved: dict[int, Any] = {}

    # ---- binding, as root
    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.prepared:
            return
        self.prepared = True
        before, after, hard = kernel.raise_open_files_limit()
        self.log.info("open files limit: {before} -> {after} (hard limit {hard}); {workers} workers",
                      before=before, after=after, hard=hard, workers=self.count)
        try:
            self.notifier.open()
        except OSError as e:
            raise StartupError("NOTIFY_SOCKET", f"cannot reach the service manager: {e}") from None
        for key, address in tcp_listeners(self.config):
            self.groups[(address.interface, address.port)] = bind_group(address, key, self.count, self.reactor)
        self._steer(self.config)
        if self.config.api is not None:
            self.api = self._bind_api()
            self.api_path = self.config.api.socket
        self.shared_dir = tempfile.mkdtemp(prefix="ssaproxy-workers-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                                           else None)
        if self.identity is not None and os.geteuid() == 0:
            os.chown(self.shared_dir, self.identity.uid, self.identity.gid)

    def _steer(self, config: Config) -> None:
        self.steering.follow(reuseport.affine_listeners(config), self.groups)

    def _steer_around(self) -> None:
        """Steer the clients of workers that are down (not ready) to the others, or back."""
        self.steering.set_down(i for i in range(self.count) if not (i in self.workers and self.workers[i].ready))

    def _bind_api(self) -> socket.socket:
        api = self.config.api
        assert api is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            created = _prepare_socket_path(api)
            if self.identity is not None:
                _claim_directory(api, self.identity, created)
            sock.bind(api.socket)
            _secure_socket_path(api, self.identity)
            sock.listen(128)
        except OSError as e:
            sock.close()
            raise StartupError("api.socket", f"cannot listen on {api.socket}: {_os_text(e)}") from None
        return sock

    # ---- the workers
    def startService(self) -> None:
        super().startService()
        self.privilegedStartService()
        for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT):
            self._saved[signum] = signal.signal(signum, self._signalled)
        self._saved[signal.SIGPIPE] = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        for index in range(self.count):
            self.spawn(index)

    def start_document(self, index: int) -> bytes:
        listeners, fds = self._child_fds(index)
        ids = self.identity
        return json.dumps({
            "index": index, "workers": self.count, "config": self.path, "by_twistd": self.by_twistd,
            "identity": None if ids is None else {"name": ids.name, "uid": ids.uid, "gid": ids.gid,
                                                  "groups": list(ids.groups)},
            "listeners": listeners, "api_fd": fds.get("api"), "shared_dir": self.shared_dir}).encode()

    def _child_fds(self, index: int) -> tuple[list[tuple[str, int, int]], dict[str, Any]]:
        """(interface, port, child fd) per listener, and the child fd map (key "map")."""
        mapping: dict[int, Any] = {0: "w", 1: "r", 2: 2, 3: "w", 4: "r"}
        listeners = []
        child = FIRST_CHILD_FD
        for (interface, port), sockets in self.groups.items():
            mapping[child] = sockets[index].fileno()
            listeners.append((interface, port, child))
            child += 1
        fds: dict[str, Any] = {"map": mapping}
        if self.api is not None:
            mapping[child] = self.api.fileno()
            fds["api"] = child
        return listeners, fds

    def spawn(self, index: int) -> None:
        self.timers.pop(index, None)
        worker = _Worker(self, index)
        self.workers[index] = worker
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID")}
        env["PROMETHEUS_MULTIPROC_DIR"] = self.shared_dir
        _, fds = self._child_fds(index)
        self.reactor.spawnProcess(worker, sys.executable, [sys.executable, "-m", "ssaproxy.worker"], env=env,
                                  childFDs=fds["map"])
        self.log.info("worker {worker} started: pid {worker_pid}", worker=index, worker_pid=worker.pid)

    def relog(self, worker: _Worker, line: bytes) -> None:
        worker_event(line, worker.index, worker.pid)

    def worker_ready(self, worker: _Worker) -> None:
        if self.ready:
            self._steer_around()  # a replacement: its clients come back to it
        if not self.ready and len(self.workers) == self.count and all(w.ready for w in self.workers.values()):
            self.ready = True
            self.notifier.send("READY=1", f"MAINPID={os.getpid()}", f"STATUS=serving with {self.count} workers")
            self.log.info("all {workers} workers ready: pids {pids}", workers=self.count,
                          pids=",".join(str(w.pid) for w in self.workers.values()))

    def worker_ended(self, worker: _Worker, code: Optional[int], signum: Optional[int]) -> None:
        how = f"status {code}" if signum is None else f"signal {signal.Signals(signum).name}"
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if worker.pid is not None:
            multiprocess.mark_process_dead(worker.pid, self.shared_dir)
        with_failure = code != 0 or signum is not None
        if self.stopping:
            self.log.info("worker {worker} (pid {worker_pid}) ended: {how}", worker=worker.index,
                          worker_pid=worker.pid, how=how)
            if with_failure and signum != signal.SIGTERM:
                self.exit_code = self.exit_code or 1
            if not self.workers and self._all_gone is not None:
                self._all_gone.callback(None)
            return
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.shared_dir, f"worker-{worker.index}.json"))
        if not self.ready:
            self.log.critical("worker {worker} (pid {worker_pid}) ended before the daemon was ready ({how}): "
                              "stopping", worker=worker.index, worker_pid=worker.pid, how=how)
            self.exit_code = code if code else 1
            if self.reactor.running:
                self.reactor.stop()
            return
        self._steer_around()
        ran = self.reactor.seconds() - worker.started
        delay = RESTART_FIRST if ran > RESTART_STEADY else min(self.delays.get(worker.index, 0) * 2 or
                                                               RESTART_FIRST, RESTART_MOST)
        self.delays[worker.index] = delay
        self.log.error("worker {worker} (pid {worker_pid}) ended after {ran:.1f}s ({how}): starting it again in "
                       "{delay:g}s", worker=worker.index, worker_pid=worker.pid, ran=ran, how=how, delay=delay,
                       outcome="worker-restart")
        self.timers[worker.index] = self.reactor.callLater(delay, self.spawn, worker.index)

    # ---- signals
    def _signalled(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._signal, signum)

    def _signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.stopping:
            if signum == signal.SIGHUP:
                self.log.warn("{signal} ignored: the daemon is stopping (draining)", signal=name)
                return
            self.log.warn("{signal} received during the drain: passed on to the workers", signal=name)
            self._tell(signal.SIGTERM)
            return
        if signum == signal.SIGHUP:
            # Only to the workers that are serving: one still starting reads the file as it is
            # now anyway, and has no handler yet (a HUP would end it).
            ready = [w for w in self.workers.values() if w.ready]
            self.log.info("SIGHUP received: passed on to {workers} workers", workers=len(ready))
            self._tell(signal.SIGHUP, ready)
            self._forget_removed()
            return
        self.log.warn("{signal} received: stopping as for SIGTERM (live connections drain, then are reset)",
                      signal=name)
        if self.reactor.running:
            self.reactor.stop()

    def _tell(self, signum: int, workers: Optional[list[_Worker]] = None) -> None:
        for worker in list(self.workers.values()) if workers is None else workers:
            with contextlib.suppress(Exception):  # it just ended: processEnded follows
                worker.transport.signalProcess(signum)  # type: ignore[union-attr]

    def _forget_removed(self) -> None:
        """Close our copies of the sockets of listeners the file no longer has (else they would
        stay in the kernel's group and take connections nobody accepts)."""
        try:
            config = read_config(self.path)
        except ConfigError:
            return  # the workers refuse it too, and keep serving
        wanted = {(a.interface, a.port) for _, a in tcp_listeners(config)}
        for where in list(self.groups):
            if where not in wanted:
                self.steering.groups.pop(where, None)
                for sock in self.groups.pop(where):
                    sock.close()
        self._steer(config)

    # ---- the stop
    def stopService(self) -> Optional[defer.Deferred[None]]:
        super().stopService()
        self.stopping = True
        self.notifier.send("STOPPING=1", "STATUS=stopping")
        for timer in self.timers.values():
            if timer.active():
                timer.cancel()
        self.timers.clear()
        for signum in STOP_SIGNALS[1:]:
            self._saved.setdefault(signum, signal.getsignal(signum))
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._saved[signum] = signal.signal(signum, self._signalled)
        # Our copies of the listening sockets go first: each socket then closes as its worker
        # stops listening, and new connections are refused instead of waiting in a queue that
        # nobody accepts from any more.  (The API socket's file is removed at the end.)
        self._close_listeners()
        self.log.info("stopping: {workers} workers drain", workers=len(self.workers))
        if not self.workers:
            self._cleanup()
            return None
        self._all_gone = defer.Deferred()
        self._tell(signal.SIGTERM)
        self._all_gone.addCallback(lambda _: self._cleanup())
        return self._all_gone

    def _close_listeners(self) -> None:
        self.steering.groups.clear()
        for sockets in self.groups.values():
            for sock in sockets:
                sock.close()
        self.groups.clear()
        if self.api is not None:
            self.api.close()
            self.api = None

    def _cleanup(self) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._saved.clear()
        self._close_listeners()
        if self.api_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.api_path)
        shutil.rmtree(self.shared_dir, ignore_errors=True)
        self.log.info("every worker has ended{status}",
                      status=f": exiting with status {self.exit_code}" if self.exit_code else "")
        if self.exit_code:
            _exit_with(self.exit_code, self.reactor)


def _exit_with(code: int, reactor: Any) -> None:
    """twistd ends a process stopped by a signal with that signal, and with 0 otherwise: a
    daemon whose worker failed says so with its status instead."""
    reactor._exitSignal = None  # noqa: SLF001 - twistd would kill us with it after the run
    sys.stdout.flush()
    atexit.register(os._exit, code)
