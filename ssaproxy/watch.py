"""The certificate watcher: which files a configuration reads, how each looks on disk, and a
look every `[daemon] watch_interval` seconds that tells the reload when one changed.

A file's stamp is its device, inode, size and mtime.  `stat` follows symbolic links, so a
rename over the file (certbot's and cert-manager's way) and a symlink swung to a new target
both show.  The reload decides what the stamps seen at a change mean (`ssaproxy.reload`): they
become the baseline of the next look, so a half-rotated pair (new chain, old key) is refused
once and reloaded when the second file lands, without a refusal every interval meanwhile.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

from twisted.internet.task import LoopingCall

from ssaproxy.config import Config, Inbound

Stamp = Optional[tuple[int, int, int, int]]  # (st_dev, st_ino, st_size, st_mtime_ns); None: missing


def watched_files(config: Config) -> tuple[str, ...]:
    """Every certificate, key and trust file `config` names, in document order."""
    paths: list[str] = []
    if config.policy.trust_store:
        paths.append(config.policy.trust_store)
    for inbound in config.inbound:
        paths += [p for c in inbound.certificates for p in (c.chain, c.key)]
        if inbound.client_ca:
            paths.append(inbound.client_ca)
        if inbound.ocsp_response_file:  # a stapled response is reloaded with its certificate
            paths.append(inbound.ocsp_response_file)
    for route in config.outbound.routes:
        paths += [p for p in (route.client_certificate, route.client_key) if p]
    for profile in config.profiles:
        paths += [p for p in (profile.policy.trust_store, profile.client_certificate, profile.client_key) if p]
    return tuple(dict.fromkeys(paths))


def inbound_files(inbound: Inbound) -> set[str]:
    """The files one inbound listener's TLS context is built from."""
    return ({p for c in inbound.certificates for p in (c.chain, c.key)}
            | ({inbound.client_ca, inbound.ocsp_response_file} - {None}))  # type: ignore[operator]


def stamp(path: str) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def stamps(paths: tuple[str, ...]) -> dict[str, Stamp]:
    return {path: stamp(path) for path in paths}


class Watcher:
    """Looks at a set of files every `interval` seconds and calls `changed(paths)` when any of
    them differs from what it last saw (a look that finds a change sees the new stamps: the
    same change is reported once)."""

    def __init__(self, reactor: Any, seen: dict[str, Stamp], changed: Callable[[list[str]], None]) -> None:
        self.reactor = reactor
        self.changed = changed
        self.seen = seen  # the files watched, as the last look (or the serving generation) saw them
        self._loop: Optional[LoopingCall] = None

    def every(self, interval: float) -> None:
        """Look every `interval` seconds (0: stop looking); the same interval keeps its rhythm."""
        loop = self._loop
        if loop is not None and loop.running:
            if loop.interval == interval:
                return
            loop.stop()
        self._loop = None
        if interval > 0:
            self._loop = LoopingCall(self.look)
            self._loop.clock = self.reactor
            self._loop.start(interval, now=False)

    def look(self) -> None:
        """One look at the watched files; a change is reported."""
        now = stamps(tuple(self.seen))
        changed = [path for path, seen in now.items() if seen != self.seen.get(path)]
        if changed:
            self.seen = now
            self.changed(changed)
