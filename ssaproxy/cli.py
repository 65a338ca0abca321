"""The `ssaproxy` console script."""

from __future__ import annotations

import argparse
import os
import pwd
import signal
import subprocess
import sys
from typing import Optional, Sequence

from ssaproxy import __version__, netfilter
from ssaproxy.config import Config
from ssaproxy.errors import ConfigError
from ssaproxy.tls.load import check_config, check_config_as, floor_removes, read_config


def _uid(value: Optional[str]) -> int:
    # No default: guessing wrong (say, root, while the daemon runs as its own user) would send
    # the daemon's upstream connections back to itself.
    if value is None:
        raise SystemExit("ssaproxy: --uid USER is required: the user the daemon runs as")
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise SystemExit(f"ssaproxy: no such user {value!r}") from None


EXIT_OK, EXIT_WARNING, EXIT_REFUSED = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The command line, for `main` and for the man page (tools/manpage.py renders it)."""
    parser = argparse.ArgumentParser(
        prog="ssaproxy", description="TLS as a system service: the companion command of the ssaproxy daemon "
        "(`twistd ssaproxy`), which upgrades redirected plaintext connections to verified TLS, terminates "
        "TLS in front of local services, and serves TLS sockets to programs (docs/api.md).",
        epilog="The daemon itself runs as `twistd -n ssaproxy --config FILE` (`twistd ssaproxy --help`).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = sub.add_parser(
        "check-config", help="validate a configuration file as the daemon would",
        description="Check FILE as the daemon would at start: the TOML, every key and value, listeners that "
        "would collide (the same port on overlapping addresses), and every certificate, key and trust store "
        "it names (readable, loadable, matching).  Exit status: 0 the daemon would run it; 1 it is valid but "
        "would do nothing (a warning on stderr: no routes, no [[inbound]], no [api]); 2 the daemon would "
        "refuse it (one line on stderr: FILE: key.path (line N): what is wrong).  A note on stderr names each "
        "configured TLS 1.2 suite that ssaproxy's cipher floor removes (the exit status is unchanged).")
    check.add_argument("file", metavar="FILE", help="the TOML configuration file to check")
    check.add_argument("--as-user", metavar="USER",
                       help="check that the files it names are readable by USER (name or number), the user "
                            "the daemon runs as: the checks run in a child process that has become USER "
                            "(needs root)")
    ipt = sub.add_parser(
        "iptables", help="the nat rules for transparent outbound mode",
        description="Show, install or remove the iptables/ip6tables nat rules that redirect plaintext "
        "connections to the outbound listener (chain SSAPROXY_OUTPUT from OUTPUT) and to transparent "
        "inbound listeners (SSAPROXY_INBOUND from PREROUTING).  A [[profile]] with its own listener gets "
        "owner-match rules (--uid-owner, --gid-owner) that lead its programs there, before the general rules.")
    ipt.add_argument("action", choices=["print", "apply", "remove"], metavar="ACTION",
                     help="print: show the rules (iptables-restore format); apply: install them, replacing "
                          "ssaproxy's chains; remove: delete ssaproxy's chains and jumps from both families")
    ipt.add_argument("--config", metavar="FILE", help="configuration file (default: the embedded default)")
    ipt.add_argument("--uid", metavar="USER", help="user (name or number) the daemon runs as; its own "
                                                   "connections are excluded from the redirect (required for "
                                                   "print and apply)")
    conn = sub.add_parser(
        "connect", help="stdin/stdout over a verified TLS connection made by the daemon",
        description="Relay stdin and stdout over a TLS connection that the daemon makes and verifies under its "
        "policy, through the local socket API (the socket in $SSAPROXY_SOCKET, or /run/ssaproxy/api.sock).")
    conn.add_argument("host", metavar="HOST", help="host name (resolved by the daemon) or IP address")
    conn.add_argument("port", metavar="PORT", type=int, help="TCP port")
    conn.add_argument("--hostname", metavar="NAME", help="the name the certificate must prove (default: HOST)")
    conn.add_argument("--alpn", metavar="LIST", help="comma-separated ALPN protocols to offer")
    conn.add_argument("--ca", metavar="FILE",
                      help="PEM file of trust anchors for this connection (instead of the policy's)")
    conn.add_argument("--cert", metavar="FILE", help="client certificate chain (PEM file)")
    conn.add_argument("--key", metavar="FILE", help="client private key (PEM file)")
    run = sub.add_parser(
        "run", help="run an unmodified program with its plain TCP connections upgraded, without iptables",
        description="Run PROGRAM with the ssaproxy C library preloaded (LD_PRELOAD): its plain TCP connections "
        "to destinations that one of the daemon's [[outbound.route]]s covers are handed to the daemon, which "
        "treats each exactly as a connection iptables redirected (upgrade with verification, passthrough or "
        "reject; hostname_from = \"resolved\" verifies the name the program resolved); every other connection "
        "is left alone.  No root, capabilities or iptables rules are needed.  The daemon is asked for its "
        "routes first: if it does not answer, nothing is run (exit status 1).  If the daemon goes away later, "
        "connections to those destinations fail (ECONNREFUSED), never in clear.")
    run.add_argument("--socket", metavar="PATH",
                     help="the daemon's API socket (default: $SSAPROXY_SOCKET, else /run/ssaproxy/api.sock)")
    run.add_argument("program", nargs=argparse.REMAINDER, metavar="-- PROGRAM ARGS",
                     help="the program to run and its arguments")
    flags = sub.add_parser(
        "c-flags", help="compiler and linker flags for C programs using the ssaproxy library",
        description="Print the flags that build a C program against this installation's ssaproxy library "
        "(headers ssaproxy.h and in_tls.h, libssaproxy.so): `cc prog.c $(ssaproxy c-flags)`.  A pkg-config "
        "file, ssaproxy.pc, is installed beside the library too.  Exit status 1 if the library is not "
        "installed.")
    which_flags = flags.add_mutually_exclusive_group()
    which_flags.add_argument("--cflags", action="store_const", const="cflags", dest="which",
                             help="only the compiler flags (-I)")
    which_flags.add_argument("--libs", action="store_const", const="libs", dest="which",
                             help="only the linker flags (-L, -Wl,-rpath, -lssaproxy)")
    status = sub.add_parser(
        "status", help="listeners, live connections and last failures, from the admin endpoint",
        description="Print the daemon's listeners, its live connections (face, age, bytes) and its last "
        "failures with their reasons, from the admin endpoint's /status ([admin] in the configuration).  "
        "Exit status 1, with one line on stderr, when the endpoint cannot be reached.")
    status.add_argument("--admin", metavar="URL",
                        help="the admin endpoint's base URL (default: http://127.0.0.1:9901)")
    rel = sub.add_parser(
        "reload", help="make the running daemon reload its configuration file (SIGHUP)",
        description="Send SIGHUP to the running daemon, after checking that the process is an ssaproxy "
        "daemon.  The daemon re-reads the configuration file it was started with and applies it to new "
        "connections, or refuses it whole (one line in its log) and keeps serving the old one; live "
        "connections are never touched.")
    which = rel.add_mutually_exclusive_group()
    which.add_argument("--pidfile", metavar="PATH",
                       help="the daemon's pid file (default: twistd.pid, twistd's default)")
    which.add_argument("--pid", metavar="PID", type=int, help="the daemon's process id")
    return parser


def _check(path: str, as_user: Optional[str]) -> int:
    config = Config.from_file(path)
    if as_user is not None:
        check_config_as(config, as_user)
    else:
        check_config(config)
    for key, dropped in floor_removes(config):
        line = config.line_of(key)
        where = f"{key} (line {line})" if line else key
        print(f"ssaproxy: {path}: note: {where}: ssaproxy's cipher floor removes {len(dropped)} of the suites it "
              f"names: {', '.join(dropped)}", file=sys.stderr)
    idle = config.idle_reason()
    if idle is not None:
        print(f"ssaproxy: {path}: warning: {idle}", file=sys.stderr)
        return EXIT_WARNING
    who = f", readable by {as_user}" if as_user is not None else ""
    print(f"{path}: OK ({len(config.outbound.routes)} routes, {len(config.inbound)} inbound, "
          f"api {'on' if config.api is not None else 'off'}{who})")
    return EXIT_OK


def _reload(pidfile: Optional[str], pid: Optional[int]) -> int:
    """Send SIGHUP to the daemon; it reloads its config file and logs one line on the outcome."""
    if pid is None:
        path = pidfile or "twistd.pid"  # twistd's own default
        try:
            with open(path) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError) as e:
            print(f"ssaproxy: cannot read a pid from {path}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
            return 1
    try:  # a stale pid file could name some other program, which SIGHUP would kill
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"ssaproxy" not in f.read():
                print(f"ssaproxy: process {pid} is not an ssaproxy daemon", file=sys.stderr)
                return 1
    except FileNotFoundError:
        print(f"ssaproxy: no process {pid}", file=sys.stderr)
        return 1
    except OSError:
        pass  # no /proc: trust the caller
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        print(f"ssaproxy: cannot signal process {pid}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"ssaproxy: sent SIGHUP to {pid}; its log says whether the new configuration was applied")
    return 0


def _run(args: argparse.Namespace) -> int:
    """`ssaproxy run` and `ssaproxy c-flags` (ssaproxy.client.run)."""
    from ssaproxy.client.run import c_flags, run  # noqa: PLC0415 - the daemon's imports stay out of a client's start

    if args.command == "c-flags":
        try:
            print(c_flags(args.which or "all"))
        except FileNotFoundError as e:
            print(f"ssaproxy c-flags: {e}", file=sys.stderr)
            return 1
        return 0
    program = list(args.program)
    if program[:1] == ["--"]:
        program = program[1:]
    return run(program, args.socket)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "reload":
        return _reload(args.pidfile, args.pid)
    if args.command == "status":
        from ssaproxy.admin.show import run as show  # noqa: PLC0415 - the daemon's imports stay out of a client's start

        return show(args.admin)
    if args.command in ("run", "c-flags"):
        return _run(args)
    if args.command == "connect":
        from ssaproxy.client.netcat import run  # noqa: PLC0415 - the daemon's imports stay out of a client's start

        return run(args.host, args.port, hostname=args.hostname, alpn=args.alpn, ca=args.ca, cert=args.cert,
                   key=args.key)
    try:
        if args.command == "check-config":
            return _check(args.file, args.as_user)
        config = read_config(args.config)
        if args.action == "print":
            sys.stdout.write(netfilter.render(netfilter.rules(config, _uid(args.uid))))
        elif args.action == "apply":
            netfilter.apply(config, _uid(args.uid))
        else:
            netfilter.remove()
        return 0
    except ConfigError as e:
        source = getattr(args, "file", None) or getattr(args, "config", None) or "<embedded default>"
        print(f"ssaproxy: {source}: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except subprocess.CalledProcessError as e:
        print(f"ssaproxy: {' '.join(e.cmd)} failed: {(e.stderr or '').strip()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
