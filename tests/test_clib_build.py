"""The C library as it is built and installed: warning-free sources, the files `pip install .`
puts inside the package, headers that carry both SSA generations' numbers (and agree with the
Python side), pkg-config, the examples compiling, and a fresh virtual environment's install."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from ssaproxy.proto import options as o
from tests.clib import EXAMPLES, WARNINGS, compile_c, installed, run
from tests.lab import REPO

SOURCES = REPO / "ssaproxy" / "c"


def test_library_sources_compile_without_a_warning(tmp_path: Path) -> None:
    sources = sorted(SOURCES.glob("*.c"))
    listed = re.search(r"C_SOURCES = \[([^\]]*)\]", (REPO / "setup.py").read_text())
    assert listed is not None
    assert sorted(re.findall(r'"([^"]+)"', listed.group(1))) == [p.name for p in sources]  # setup.py builds them all
    r = run(["gcc", *WARNINGS, "-O2", "-fPIC", "-shared", "-o", str(tmp_path / "libssaproxy.so"),
             *map(str, sources), "-ldl", "-lpthread"])
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_pip_installed_the_library_headers_and_pkgconfig_file_in_the_package() -> None:
    lib = installed()
    for name in ("libssaproxy.so", "include/ssaproxy.h", "include/in_tls.h", "ssaproxy.pc"):
        assert (lib / name).is_file(), name
    exported = run(["nm", "-D", "--defined-only", str(lib / "libssaproxy.so")]).stdout
    functions = {line.split()[-1] for line in exported.splitlines() if " T " in line}
    # The interposed calls and the version, nothing else of ours leaks into a program's namespace.
    assert functions == {"socket", "connect", "bind", "listen", "accept", "accept4", "setsockopt", "getsockopt",
                         "getpeername", "getsockname", "shutdown", "close", "getaddrinfo", "ssaproxy_version"}


CONSTANTS = ["IPPROTO_TLS", "AF_HOSTNAME", "TCP_UPGRADE_TLS", "TLS_HOSTNAME", "TLS_REMOTE_HOSTNAME", "TLS_1_0",
             "TLS_SERVER_NAME", "TLS_CHOSEN_VERSION", "TLS_1_2", "TLS_1_3", "TLS_CACHE_REVOCATION",
             "TLS_TRUSTED_PEER_CERTIFICATES_ONLY", "TLS_ALLOW_RAGGED_EOF"] + \
            [name for name in o.__all__ if name.startswith("TLS") and name not in ("TLS_HOSTNAME",)]


def _constants(tmp_path: Path, *defines: str) -> dict[str, int]:
    source = tmp_path / "constants.c"
    body = "".join(f'    printf("{name} %d\\n", (int)({name}));\n' for name in CONSTANTS)
    source.write_text("".join(f"#define {d}\n" for d in defines) +
                      "#include <stdio.h>\n#include <netinet/tcp.h>\n#include <ssaproxy.h>\n"
                      f"int main(void)\n{{\n{body}    return 0;\n}}\n")
    binary = compile_c(source, tmp_path)
    out = run([str(binary)]).stdout.split()
    return {out[i]: int(out[i + 1]) for i in range(0, len(out), 2)}


def test_headers_carry_both_generations_and_agree_with_the_python_table(tmp_path: Path) -> None:
    values = _constants(tmp_path)
    assert values["IPPROTO_TLS"] == 205 and values["AF_HOSTNAME"] == 43 and values["TCP_UPGRADE_TLS"] == 33
    assert values["TLS_HOSTNAME"] == values["TLS_REMOTE_HOSTNAME"] == 85  # the 2020 header's numbering
    assert values["TLS_1_2"] == 0x0303 and values["TLS_1_3"] == 0x0304 and values["TLS_1_0"] == 0x0301
    assert values["TLS_CHOSEN_VERSION"] == 113 and values["TLS_CACHE_REVOCATION"] == 106
    assert values["TLS_TRUSTED_PEER_CERTIFICATES_ONLY"] == 120 and values["TLS_ALLOW_RAGGED_EOF"] == 121
    for name in CONSTANTS:  # every name the Python library knows has the same number in C
        if hasattr(o, name):
            assert values[name] == getattr(o, name), name
    paper = tmp_path / "paper"
    paper.mkdir()
    assert _constants(paper, "SSA_PAPER_NUMBERING")["TLS_HOSTNAME"] == 86


def test_pkg_config_gives_flags_that_build_a_working_program(tmp_path: Path) -> None:
    env = {**os.environ, "PKG_CONFIG_PATH": str(installed())}
    r = run(["pkg-config", "--cflags", "--libs", "ssaproxy"], env=env)
    assert r.returncode == 0, r.stderr
    assert f"-I{installed() / 'include'}" in r.stdout and "-lssaproxy" in r.stdout
    source = tmp_path / "version.c"
    source.write_text('#include <stdio.h>\n#include <ssaproxy.h>\n'
                      'int main(void) { puts(ssaproxy_version()); return 0; }\n')
    build = run(["gcc", *WARNINGS, str(source), "-o", str(tmp_path / "version"), *r.stdout.split()])
    assert build.returncode == 0 and build.stderr == "", build.stderr
    assert run([str(tmp_path / "version")], cwd="/").stdout == "ssaproxy-c 2\n"


def test_ssaproxy_c_flags_build_an_ssa_program_that_runs(tmp_path: Path) -> None:
    """The issue's "done when": an SSA C program builds with $(ssaproxy c-flags), outside the tree."""
    ssaproxy = str(Path(sys.executable).parent / "ssaproxy")
    r = run([ssaproxy, "c-flags"], cwd="/")
    assert r.returncode == 0, r.stderr
    assert f"-I{installed() / 'include'}" in r.stdout and "-lssaproxy" in r.stdout
    build = run(["gcc", *WARNINGS, str(EXAMPLES / "https_client_ssa.c"), "-o", str(tmp_path / "client"),
                 *r.stdout.split()], cwd="/")
    assert build.returncode == 0 and build.stderr == "", build.stderr
    usage = run([str(tmp_path / "client")], cwd="/")
    assert usage.returncode == 2 and "usage:" in usage.stderr  # it loads and runs (no loader error)


@pytest.mark.parametrize("source", sorted(p.name for p in EXAMPLES.glob("*.c")))
def test_every_c_example_compiles_without_a_warning(source: str, tmp_path: Path) -> None:
    compile_c(EXAMPLES / source, tmp_path)


def test_pip_install_into_a_fresh_venv_builds_the_library(tmp_path: Path) -> None:
    """From the files git tracks, with /usr/bin/python3, as the README's command does."""
    tree = tmp_path / "src"
    files = run(["git", "ls-files"], cwd=REPO).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tree / name)
    venv = tmp_path / "venv"
    run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    r = run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(tree)], timeout=600)
    assert r.returncode == 0, r.stderr
    (site,) = venv.glob("lib/python3*/site-packages")
    lib = site / "ssaproxy" / "c" / "libssaproxy.so"
    assert lib.is_file() and (site / "ssaproxy" / "c" / "include" / "in_tls.h").is_file()
    assert lib.read_bytes()[:4] == b"\x7fELF"
    program = tmp_path / "version.c"
    program.write_text('#include <stdio.h>\n#include <ssaproxy.h>\nint main(void) { puts(ssaproxy_version()); }\n')
    c = lib.parent
    build = run(["gcc", *WARNINGS, str(program), "-o", str(tmp_path / "version"), f"-I{c / 'include'}", f"-L{c}",
                 f"-Wl,-rpath,{c}", "-lssaproxy"])
    assert build.returncode == 0 and build.stderr == "", build.stderr
    assert run([str(tmp_path / "version")]).stdout == "ssaproxy-c 2\n"
