"""The watcher's pure parts: which files a config names, and what counts as a change."""

from __future__ import annotations

import os
from pathlib import Path

from ssaproxy.config import Config
from ssaproxy.generation import generation_client_contexts
from ssaproxy.watch import stamp, watched_files


def test_every_certificate_key_and_trust_file_is_watched_once_in_document_order() -> None:
    config = Config.from_toml(
        '[policy]\ntrust_store = "/t/root.pem"\n'
        '[[inbound]]\nlisten = "tcp:8443"\nbackend = "tcp:127.0.0.1:80"\nclient_auth = "require"\n'
        'client_ca = "/t/clients.pem"\ncertificates = [ { chain = "/t/a.pem", key = "/t/a.key" } ]\n'
        '[outbound]\n[[outbound.route]]\ndestination = "10.0.0.0/8"\nhostname = "x.test"\n'
        'client_certificate = "/t/a.pem"\nclient_key = "/t/c.key"\n')
    assert watched_files(config) == ("/t/root.pem", "/t/a.pem", "/t/a.key", "/t/clients.pem", "/t/c.key")


def test_a_file_renamed_over_is_a_change_even_with_the_same_size_and_mtime(tmp_path: Path) -> None:
    target, new = tmp_path / "chain.pem", tmp_path / "chain.pem.new"
    target.write_bytes(b"A" * 100)
    new.write_bytes(b"B" * 100)
    st = os.stat(target)
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    before = stamp(str(target))
    os.replace(new, target)
    assert before is not None and stamp(str(target)) != before
    target.unlink()
    assert stamp(str(target)) is None


def test_a_generation_keeps_one_client_context_per_policy(tmp_path: Path) -> None:
    """A profile's context is never handed to a connection under [policy] (or the reverse),
    whichever is asked for first; profile files are watched too."""
    config = Config.from_toml(
        '[outbound]\n[[outbound.route]]\ndestination = "10.0.0.0/8"\nhostname = "x.test"\n'
        '[[profile]]\nname = "p"\nmatch_users = [1]\nmin_version = "TLSv1.3"\n')
    lookup = generation_client_contexts(config)
    strict = lookup(config.profiles[0].policy, None, None)
    admin = lookup(config.policy, None, None)
    assert strict is not admin
    assert lookup(config.profiles[0].policy, None, None) is strict and lookup(config.policy, None, None) is admin
    with_files = Config.from_toml(
        '[[profile]]\nname = "p"\nmatch_users = [1]\ntrust_store = "/t/p.pem"\n'
        'client_certificate = "/t/p.crt"\nclient_key = "/t/p.key"\n')
    assert watched_files(with_files) == ("/t/p.pem", "/t/p.crt", "/t/p.key")
