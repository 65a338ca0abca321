"""`ssaproxy run` and `ssaproxy c-flags`: argument handling, the environment the preloaded C
library gets, and the errors a user sees (no daemon, no library, no program), with a real
daemon answering ROUTES.  The C library itself is the clib branch's (tests of its own); here a
small shared library built with cc stands in for it where one must be loaded or linked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ssaproxy.client import run as runmod
from tests.api_harness import ApiDaemon, free_port
from tests.lab import REPO
from tests.pki import PKI

ROUTES = """
[outbound]
listen = ["tcp:{port}:interface=127.0.0.1", 'tcp6:{port}:interface=\\:\\:1']
[[outbound.route]]
name = "web"
destination = "192.0.2.0/24"
ports = [80, 8080]
tls_port = 443
hostname_from = "resolved"
[[outbound.route]]
name = "no-telnet"
destination = "0.0.0.0/0"
ports = [23]
action = "reject"
[[outbound.route]]
name = "raw6"
destination = "2001:db8::/32"
action = "passthrough"
"""
EXPECTED_ROUTES = ("upgrade 192.0.2.0/24 80\nupgrade 192.0.2.0/24 8080\nreject 0.0.0.0/0 23\n"
                   "passthrough 2001:db8::/32 0\n")


@pytest.fixture(scope="module")
def daemon(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiDaemon]:
    api = ApiDaemon(tmp_path_factory.mktemp("run"), pki, extra=ROUTES.format(port=free_port()))
    api.start()
    try:
        yield api
    finally:
        api.stop()


def _build_library(directory: Path) -> Path:
    """A real shared library named libssaproxy.so, with a header, laid out as the package's c/."""
    (directory / "include").mkdir(parents=True)
    (directory / "include" / "ssaproxy.h").write_text("int ssaproxy_standin(void);\n")
    source = directory / "standin.c"
    source.write_text('#include "ssaproxy.h"\nint ssaproxy_standin(void) { return 42; }\n')
    lib = directory / "libssaproxy.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-Wall", "-Wextra", f"-I{directory / 'include'}", "-o", str(lib),
                    str(source)], check=True)
    return lib


def _cli(args: list[str], c_dir: Path | None = None, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`ssaproxy ARGS` in a subprocess; with `c_dir`, the library is looked for there."""
    code = "import sys\nfrom pathlib import Path\nimport ssaproxy.client.run as r\n"
    if c_dir is not None:
        code += f"r.c_dir = lambda: Path({str(c_dir)!r})\n"
    code += "from ssaproxy.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          env=full_env, cwd=cwd)


PRINT_ENV = textwrap.dedent("""
    import json, os
    keys = ("LD_PRELOAD", "SSAPROXY_SOCKET", "SSAPROXY_REDIRECT", "SSAPROXY_ROUTES")
    print(json.dumps({k: os.environ.get(k) for k in keys}))
""")


def test_run_execs_the_program_with_the_library_preloaded(daemon: ApiDaemon, tmp_path: Path) -> None:
    c_dir = tmp_path / "c"
    lib = _build_library(c_dir)
    other = _build_library(tmp_path / "other")  # a preload already there stays, after ours
    relative = os.path.relpath(daemon.socket, tmp_path)
    r = _cli(["run", "--socket", relative, "--", sys.executable, "-c", PRINT_ENV], c_dir,
             env={"LD_PRELOAD": str(other)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["LD_PRELOAD"] == f"{lib}:{other}"
    assert seen["SSAPROXY_SOCKET"] == daemon.socket  # made absolute: the program may chdir
    assert seen["SSAPROXY_REDIRECT"] == "1"
    assert seen["SSAPROXY_ROUTES"] == EXPECTED_ROUTES


def test_run_takes_the_socket_from_the_environment_and_passes_arguments_through(daemon: ApiDaemon,
                                                                                 tmp_path: Path) -> None:
    lib = _build_library(tmp_path / "c")
    r = _cli(["run", sys.executable, "-c", "import sys, os; print(sys.argv[1:], os.environ['LD_PRELOAD'])",
              "--socket", "x y"], tmp_path / "c", env={"SSAPROXY_SOCKET": daemon.socket, "LD_PRELOAD": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"['--socket', 'x y'] {lib}"  # the program's own arguments are its own


def test_run_fails_clearly_when_the_daemon_does_not_answer(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    missing = tmp_path / "no-daemon.sock"
    r = _cli(["run", "--socket", str(missing), "--", "touch", str(marker)], _build_library(tmp_path / "c").parent)
    assert r.returncode == 1
    assert r.stderr.startswith("ssaproxy run: ") and str(missing) in r.stderr and "does not answer" in r.stderr
    assert not marker.exists()  # nothing ran


def test_run_fails_clearly_without_the_library(daemon: ApiDaemon, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    r = _cli(["run", "--socket", daemon.socket, "--", "touch", str(marker)], tmp_path / "empty")
    assert r.returncode == 1
    assert "the ssaproxy C library is not installed" in r.stderr and str(tmp_path / "empty" / "libssaproxy.so") \
        in r.stderr
    assert not marker.exists()


def test_run_without_a_program_or_with_one_that_cannot_run(daemon: ApiDaemon, tmp_path: Path) -> None:
    c_dir = _build_library(tmp_path / "c").parent
    r = _cli(["run", "--socket", daemon.socket, "--"], c_dir)
    assert r.returncode == 1 and "no program given" in r.stderr
    r = _cli(["run", "--socket", daemon.socket, "--", str(tmp_path / "no-such-program")], c_dir)
    assert r.returncode == 127 and "cannot run" in r.stderr and "no-such-program" in r.stderr


def test_c_flags_build_and_run_a_program_against_the_library(tmp_path: Path) -> None:
    c_dir = tmp_path / "c"
    _build_library(c_dir)
    assert runmod.c_flags("cflags", c_dir) == f"-I{c_dir / 'include'}"
    assert runmod.c_flags("libs", c_dir) == f"-L{c_dir} -Wl,-rpath,{c_dir} -lssaproxy"
    r = _cli(["c-flags"], c_dir)
    assert r.returncode == 0, r.stderr
    flags = r.stdout.split()
    assert flags == [f"-I{c_dir / 'include'}", f"-L{c_dir}", f"-Wl,-rpath,{c_dir}", "-lssaproxy"]
    assert _cli(["c-flags", "--cflags"], c_dir).stdout.split() == flags[:1]
    assert _cli(["c-flags", "--libs"], c_dir).stdout.split() == flags[1:]
    program = tmp_path / "prog.c"
    program.write_text('#include <ssaproxy.h>\nint main(void) { return ssaproxy_standin() == 42 ? 0 : 1; }\n')
    subprocess.run(["cc", "-Wall", "-Wextra", "-o", str(tmp_path / "prog"), str(program), *flags], check=True)
    # The rpath finds the library: no LD_LIBRARY_PATH needed.
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    assert subprocess.run([str(tmp_path / "prog")], env=env).returncode == 0


def test_c_flags_of_this_installation(tmp_path: Path) -> None:
    r = _cli(["c-flags"], cwd=tmp_path)
    installed = runmod.c_dir() / "libssaproxy.so"
    if installed.is_file():  # the C library has been built into this installation
        assert r.returncode == 0 and f"-L{installed.parent} " in r.stdout and r.stdout.strip().endswith(
            "-lssaproxy")
    else:
        assert r.returncode == 1 and f"no {installed}" in r.stderr
