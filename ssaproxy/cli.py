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
from ssaproxy.errors import ConfigError
from ssaproxy.tls.load import read_config


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ssaproxy", description="TLS as a system service: the companion command of the ssaproxy daemon "
        "(`twistd ssaproxy`), which upgrades redirected plaintext connections to verified TLS, terminates "
        "TLS in front of local services, and serves TLS sockets to programs (docs/api.md).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file")
    ipt = sub.add_parser("iptables", help="the nat rules for transparent outbound mode")
    ipt.add_argument("action", choices=["print", "apply", "remove"])
    ipt.add_argument("--config", help="configuration file (default: the embedded default)")
    ipt.add_argument("--uid", help="user (name or number) the daemon runs as; its own connections are "
                                   "excluded from the redirect (required for print and apply)")
    conn = sub.add_parser("connect", help="stdin/stdout over a verified TLS connection made by the daemon")
    conn.add_argument("host", help="host name (resolved by the daemon) or IP address")
    conn.add_argument("port", type=int)
    conn.add_argument("--hostname", help="the name the certificate must prove (default: HOST)")
    conn.add_argument("--alpn", help="comma-separated ALPN protocols to offer")
    conn.add_argument("--ca", help="PEM file of trust anchors for this connection (instead of the policy's)")
    conn.add_argument("--cert", help="client certificate chain (PEM file)")
    conn.add_argument("--key", help="client private key (PEM file)")
    rel = sub.add_parser("reload", help="make the running daemon reload its config file (SIGHUP)")
    which = rel.add_mutually_exclusive_group()
    which.add_argument("--pidfile", help="the daemon's pid file (default: twistd.pid, twistd's default)")
    which.add_argument("--pid", type=int, help="the daemon's process id")
    args = parser.parse_args(argv)
    if args.command == "reload":
        return _reload(args.pidfile, args.pid)
    if args.command == "connect":
        from ssaproxy.client.netcat import run  # noqa: PLC0415 - the daemon's imports stay out of a client's start

        return run(args.host, args.port, hostname=args.hostname, alpn=args.alpn, ca=args.ca, cert=args.cert,
                   key=args.key)
    try:
        if args.command == "check-config":
            config = read_config(args.file)
            print(f"{args.file}: OK ({len(config.outbound.routes)} routes)")
            return 0
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
        return 2
    except subprocess.CalledProcessError as e:
        print(f"ssaproxy: {' '.join(e.cmd)} failed: {(e.stderr or '').strip()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
