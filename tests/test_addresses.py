"""Addresses as text: IP literals, one spelling per address, host:port."""

from __future__ import annotations

import ipaddress

from ssaproxy.addresses import host_port, ip_version, is_ip_literal, normalize, plain_address


def test_is_ip_literal() -> None:
    assert is_ip_literal("192.0.2.1") and is_ip_literal("::1") and is_ip_literal("2001:db8::1")
    assert not is_ip_literal("example.com") and not is_ip_literal("") and not is_ip_literal("[::1]")
    assert (ip_version("192.0.2.1"), ip_version("::1"), ip_version("example.com")) == (4, 6, None)


def test_one_spelling_per_address() -> None:
    assert plain_address("::ffff:192.0.2.1") == "192.0.2.1"
    assert plain_address("fe80::1%eth0") == "fe80::1"
    assert plain_address("2001:DB8::1") == "2001:db8::1"
    assert plain_address("not an address") == "not an address"
    assert normalize(ipaddress.ip_address("::ffff:10.0.0.1")) == ipaddress.ip_address("10.0.0.1")


def test_host_port() -> None:
    assert host_port("192.0.2.1", 443) == "192.0.2.1:443"
    assert host_port("2001:db8::1", 443) == "[2001:db8::1]:443"
    assert host_port("example.com", 80) == "example.com:80"
