"""`ssaproxy run -- PROGRAM ARGS...` and `ssaproxy c-flags`: the C library, preloaded or linked.

`run` asks the daemon for its outbound routes (ROUTES) first, so a daemon that does not answer
is a clear error before the program starts rather than a program whose connections fail; then
it sets the environment the C library reads and replaces itself with the program (execvp):

    LD_PRELOAD         the installed libssaproxy.so, before anything already there
    SSAPROXY_SOCKET    the API socket (absolute path)
    SSAPROXY_REDIRECT  1: plain TCP connects the routes cover go to the daemon (REDIRECT)
    SSAPROXY_ROUTES    the ROUTES answer, so the library refuses those destinations even if the
                       daemon goes away later (never a plaintext connection instead)

The library and its headers are installed inside the package (`ssaproxy/c/`); `c-flags` prints
the compiler and linker flags for this installation.  Standard library only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from ssaproxy.client._io import ENV_SOCKET, socket_path
from ssaproxy.client.redirect import ENV_ROUTES, routes_text

__all__ = ["ENV_REDIRECT", "LIBRARY", "c_dir", "c_flags", "library", "run"]

LIBRARY = "libssaproxy.so"
ENV_REDIRECT = "SSAPROXY_REDIRECT"
EXIT_FAILED, EXIT_CANNOT_RUN = 1, 127  # 127: as a shell says when it cannot run a command


def c_dir() -> Path:
    """Where this installation keeps the C library: `c/` beside the package's modules."""
    return Path(__file__).resolve().parent.parent / "c"


def library(base: Optional[Path] = None) -> Path:
    """The installed libssaproxy.so; FileNotFoundError (naming the path) if it is not there."""
    path = (base or c_dir()) / LIBRARY
    if not path.is_file():
        raise FileNotFoundError(f"the ssaproxy C library is not installed: no {path} (install ssaproxy with "
                                "the C library built, as the README's set-up command does)")
    return path


def c_flags(which: str = "all", base: Optional[Path] = None) -> str:
    """`-I<include>` (cflags), `-L<libdir> -Wl,-rpath,<libdir> -lssaproxy` (libs), or both."""
    libdir = library(base).parent
    include = libdir / "include"
    cflags, libs = f"-I{include}", f"-L{libdir} -Wl,-rpath,{libdir} -lssaproxy"
    return {"cflags": cflags, "libs": libs}.get(which, f"{cflags} {libs}")


def environment(env: dict[str, str], lib: Path, api_socket: str, routes: str) -> dict[str, str]:
    """`env` with what the preloaded library reads (see the module docstring)."""
    out = dict(env)
    preload = env.get("LD_PRELOAD", "").strip()
    out["LD_PRELOAD"] = f"{lib}:{preload}" if preload else str(lib)
    out[ENV_SOCKET] = api_socket
    out[ENV_REDIRECT] = "1"
    out[ENV_ROUTES] = routes
    return out


def run(argv: Sequence[str], api_socket: Optional[str] = None) -> int:
    """Exec `argv` with the library preloaded; returns (an exit status) only if it cannot."""
    if not argv:
        print("ssaproxy run: no program given (ssaproxy run [--socket PATH] -- PROGRAM ARGS...)", file=sys.stderr)
        return EXIT_FAILED
    path = os.path.abspath(api_socket or socket_path())
    try:
        routes = routes_text(path)
    except OSError as e:
        detail = str(e.strerror or e)
        if path not in detail:
            detail = f"the ssaproxy daemon at {path} did not answer ROUTES: {detail}"
        print(f"ssaproxy run: {detail}", file=sys.stderr)
        return EXIT_FAILED
    try:
        lib = library()
    except FileNotFoundError as e:
        print(f"ssaproxy run: {e}", file=sys.stderr)
        return EXIT_FAILED
    env = environment(dict(os.environ), lib, path, routes)
    try:
        os.execvpe(argv[0], list(argv), env)
    except OSError as e:
        print(f"ssaproxy run: cannot run {argv[0]}: {e.strerror or e}", file=sys.stderr)
    return EXIT_CANNOT_RUN
