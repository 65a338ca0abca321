"""The drop to the daemon's user (ssaproxy.privileges) and the readiness datagrams
(ssaproxy.kernel.Notifier).  Drops run in a subprocess: a test process that gave up root
could not give it back."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ssaproxy.errors import ConfigError
from ssaproxy.kernel import Notifier
from ssaproxy.privileges import Identity
from tests.lab import REPO

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


def _as_root(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@needs_root
def test_the_drop_cannot_be_undone() -> None:
    r = _as_root("""
        import os
        from ssaproxy.privileges import Identity, drop
        drop(Identity.resolve("nobody"))
        print(os.getresuid(), os.getresgid(), os.getgroups())
        for regain in (os.setuid, os.seteuid, os.setgid):
            try:
                regain(0)
            except PermissionError:
                print(regain.__name__, "refused")
            else:
                print(regain.__name__, "SUCCEEDED")
    """)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "(65534, 65534, 65534) (65534, 65534, 65534) [65534]", lines
    assert lines[1:] == ["setuid refused", "seteuid refused", "setgid refused"]


@needs_root
def test_a_drop_that_root_could_undo_is_caught() -> None:
    """A saved uid of 0 (what `twistd --euid` leaves) means setuid(0) would bring root back."""
    r = _as_root("""
        import os
        from ssaproxy.privileges import Identity, PrivilegeError, check_dropped
        identity = Identity.resolve("nobody")
        os.setgroups([65534]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 0)
        try:
            check_dropped(identity)
        except PrivilegeError as e:
            print("caught:", e)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("caught: running as uid/gid (65534, 65534, 0)"), r.stdout


def test_identities_resolve_names_and_numbers_and_name_the_key() -> None:
    nobody = Identity.resolve("nobody")
    assert (nobody.uid, nobody.name) == (65534, "nobody")
    assert Identity.resolve("65534") == nobody
    assert Identity.resolve("nobody", "0").gid == 0
    assert Identity.resolve("54321", "54321") == Identity(name="54321", uid=54321, gid=54321, groups=(54321,))
    with pytest.raises(ConfigError, match=r"^daemon.user: no such user 'no-such-user-here'"):
        Identity.resolve("no-such-user-here")
    with pytest.raises(ConfigError, match=r"^daemon.group: no such group"):
        Identity.resolve("nobody", "no-such-group-here")
    with pytest.raises(ConfigError, match=r"^daemon.group: user '54321' has no passwd entry"):
        Identity.resolve("54321")


def test_notifier_sends_datagrams_and_forgets_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    notifier = Notifier()
    notifier.open()
    assert "NOTIFY_SOCKET" not in os.environ  # a program the daemon ran would not speak for it
    assert notifier.send("READY=1", "STATUS=serving")
    assert manager.recv(100) == b"READY=1\nSTATUS=serving"
    notifier.close()
    manager.close()
    assert not Notifier({}).send("READY=1")  # not under a manager: nothing to tell


def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"ssaproxy-test-{os.getpid()}"
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind("\0" + name)
    notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
    notifier.open()
    assert notifier.send("STOPPING=1")
    assert manager.recv(100) == b"STOPPING=1"
    notifier.close()
    manager.close()


def test_config_user_and_twistd_uid_together_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[daemon]\nuser = "nobody"\n[api]\nsocket = "/nonexistent/api.sock"\n')
    twistd = Path(sys.executable).parent / "twistd"
    r = subprocess.run([str(twistd), "-n", "--pidfile=", "--uid", "65534", "ssaproxy", "--config", str(config)],
                       capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert r.returncode != 0
    assert "daemon.user: twistd --uid/--gid says the same thing: use one of them" in r.stdout + r.stderr
