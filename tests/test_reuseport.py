"""ssaproxy.reuseport: the BPF program that keeps a client address to one socket of a group.

Three views must agree: `index_for` (what the program should compute, in Python), the program
itself run by the small classic-BPF interpreter below on packets built here, and the kernel
choosing among real SO_REUSEPORT sockets on loopback (client addresses across 127.0.0.0/8)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import select
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssaproxy import reuseport
from ssaproxy.reuseport import Instruction

# ---- a classic BPF interpreter for the instructions the module emits


def run(program: Sequence[Instruction], network_header: bytes) -> int:
    """The program's return value for a packet whose network header (and what follows) is
    `network_header`; a load past its end returns 0, as in the kernel."""
    a = x = 0
    pc = 0
    for _ in range(len(program) + 1):
        code, jt, jf, k = program[pc]
        pc += 1
        if code in (reuseport.LD_W_ABS, reuseport.LD_B_ABS):
            offset = (k + reuseport.SKF_NET_OFF) & 0xFFFFFFFF
            size = 4 if code == reuseport.LD_W_ABS else 1
            if offset + size > len(network_header):
                return 0
            a = int.from_bytes(network_header[offset:offset + size], "big")
        elif code == reuseport.ALU_RSH_K:
            a >>= k
        elif code == reuseport.ALU_XOR_X:
            a ^= x
        elif code == reuseport.ALU_MUL_K:
            a = (a * k) & 0xFFFFFFFF
        elif code == reuseport.ALU_DIV_K:
            a //= k
        elif code == reuseport.ALU_MOD_K:
            a %= k
        elif code == reuseport.MISC_TAX:
            x = a
        elif code == reuseport.MISC_TXA:
            a = x
        elif code == reuseport.JMP_JA:
            pc += k
        elif code == reuseport.JMP_JEQ_K:
            pc += jt if a == k else jf
        elif code == reuseport.RET_A:
            return a
        elif code == reuseport.RET_K:
            return k
        else:
            raise AssertionError(f"an instruction the interpreter does not know: {code:#x}")
    raise AssertionError("the program ran past its length (a backward jump?)")


def ipv4_header(source: str) -> bytes:
    return bytes([0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0]) + ipaddress.IPv4Address(source).packed + bytes(4)


def ipv6_header(source: str) -> bytes:
    return bytes([0x60, 0, 0, 0, 0, 40, 6, 64]) + ipaddress.IPv6Address(source).packed + bytes(16)


ipv4s = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6s = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
groups = st.integers(1, 8).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1))))


@given(ipv4s, groups)
def test_the_program_computes_index_for_ipv4(address: str, group: tuple[int, set[int]]) -> None:
    count, down = group
    got = run(reuseport.program(count, down), ipv4_header(address))
    assert got == reuseport.index_for(address, count, down)
    assert 0 <= got < count
    if len(down) < count:
        assert got not in down


@given(ipv6s, groups)
def test_the_program_computes_index_for_ipv6(address: str, group: tuple[int, set[int]]) -> None:
    count, down = group
    got = run(reuseport.program(count, down), ipv6_header(address))
    assert got == reuseport.index_for(address, count, down)
    if len(down) < count:
        assert got not in down


@given(ipv4s, st.integers(2, 8), st.data())
def test_a_worker_down_moves_only_its_own_clients(address: str, count: int, data: st.DataObject) -> None:
    down = data.draw(st.sets(st.integers(0, count - 1), max_size=count - 1))
    before = reuseport.index_for(address, count)
    after = reuseport.index_for(address, count, down)
    assert after == before if before not in down else after not in down


def test_other_network_headers_get_an_index_out_of_range() -> None:
    """Out of range: the kernel falls back to its own hash."""
    for count in (1, 2, 5):
        assert run(reuseport.program(count), bytes([0x50]) + bytes(40)) == count
    assert run(reuseport.program(3), ipv4_header("10.0.0.1")[:14]) == 0  # a load past the end: the first


def test_addresses_spread_over_the_group() -> None:
    seen = [reuseport.index_for(f"192.0.2.{n}", 4) for n in range(256)]
    assert all(40 <= seen.count(i) <= 90 for i in range(4)), [seen.count(i) for i in range(4)]
    six = [reuseport.index_for(f"2001:db8::{n:x}", 2) for n in range(256)]
    assert 90 <= six.count(0) <= 166


def test_a_mapped_address_is_its_ipv4_address() -> None:
    for n in range(50):
        assert reuseport.index_for(f"::ffff:198.51.100.{n}", 3) == reuseport.index_for(f"198.51.100.{n}", 3)


def test_group_sizes_out_of_range_are_refused() -> None:
    for count in (0, reuseport.MAX_GROUP + 1):
        with pytest.raises(ValueError, match="sockets"):
            reuseport.program(count)
    biggest = reuseport.program(reuseport.MAX_GROUP, range(1, 250))
    assert len(biggest) < 4096  # BPF_MAXINSNS
    with group(2) as (socks, port):
        reuseport.attach(socks[0], reuseport.MAX_GROUP, range(1, 250))  # the kernel takes the largest
        assert accepted_by(socks, "127.0.0.1", port) in (0, 1)


# ---- the kernel


@contextlib.contextmanager
def group(count: int, family: socket.AddressFamily = socket.AF_INET, host: str = "127.0.0.1"
          ) -> Iterator[tuple[list[socket.socket], int]]:
    socks: list[socket.socket] = []
    port = 0
    try:
        for _ in range(count):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
            s.listen(16)
            port = s.getsockname()[1]
        yield socks, port
    finally:
        for s in socks:
            s.close()


def accepted_by(socks: list[socket.socket], source: str, port: int, target: str = "127.0.0.1") -> int:
    """The index of the socket that accepts a connection from `source`."""
    with socket.socket(socket.AF_INET6 if ":" in target else socket.AF_INET) as client:
        client.bind((source, 0))
        client.connect((target, port))
        ready, _, _ = select.select(socks, [], [], 10)
        assert len(ready) == 1, ready
        conn, _ = ready[0].accept()
        conn.close()
        return socks.index(ready[0])


SOURCES = [f"127.{n}.{(n * 37) % 250 + 1}.{(n * 11) % 250 + 1}" for n in range(1, 41)]


@pytest.mark.parametrize(("count", "down"), [(2, ()), (3, ()), (4, (1,)), (4, (0, 3)), (3, (0, 1, 2))])
def test_the_kernel_picks_the_socket_index_for_names(count: int, down: tuple[int, ...]) -> None:
    with group(count) as (socks, port):
        reuseport.attach(socks[0], count, down)
        got = [accepted_by(socks, source, port) for source in SOURCES]
    assert got == [reuseport.index_for(source, count, down) for source in SOURCES]
    assert len(set(got)) == count - (len(down) if len(down) < count else 0)


def test_a_dual_stack_group_steers_ipv4_clients_too() -> None:
    with group(3, socket.AF_INET6, "::") as (socks, port):
        reuseport.attach(socks[-1], 3)  # any socket of the group carries the program
        got = [accepted_by(socks, source, port) for source in SOURCES[:20]]
    assert got == [reuseport.index_for(source, 3) for source in SOURCES[:20]]


def test_an_index_past_the_group_falls_back_to_the_kernel_hash() -> None:
    """A program for more sockets than the group has (a listener some workers lack): the
    connections whose index is out of range are still accepted, by the kernel's choice."""
    with group(2) as (socks, port):
        reuseport.attach(socks[0], 9)
        got = [accepted_by(socks, source, port) for source in SOURCES]
    assert set(got) == {0, 1}


def test_detach_gives_the_group_back_to_the_kernel() -> None:
    with group(2) as (socks, port):
        reuseport.attach(socks[0], 2, down=[1])
        assert {accepted_by(socks, source, port) for source in SOURCES[:20]} == {0}
        reuseport.detach(socks[0])
        reuseport.detach(socks[0])  # none attached: not an error
        assert {accepted_by(socks, "127.0.0.1", port) for _ in range(40)} == {0, 1}


def test_steering_follows_the_config_and_the_workers_down() -> None:
    with group(2) as (socks, port), group(2) as (other, other_port):
        steering = reuseport.Steering(2)
        groups = {("127.0.0.1", port): socks, ("127.0.0.1", other_port): other}
        assert steering.follow({("127.0.0.1", port)}, groups) == []
        by_worker = {i: [s for s in SOURCES if reuseport.index_for(s, 2) == i] for i in (0, 1)}
        assert {accepted_by(socks, s, port) for s in by_worker[1]} == {1}
        assert steering.set_down([1]) == []
        assert {accepted_by(socks, s, port) for s in by_worker[1]} == {0}
        assert {accepted_by(socks, s, port) for s in by_worker[0]} == {0}
        assert steering.set_down([0, 1]) == []  # all down: as if all served
        assert [accepted_by(socks, s, port) for s in SOURCES] == [reuseport.index_for(s, 2) for s in SOURCES]
        steering.follow(set(), groups)
        assert steering.groups == {}
        assert {accepted_by(socks, "127.0.0.1", port) for _ in range(40)} == {0, 1}
        assert reuseport.Steering(1).follow({("127.0.0.1", port)}, groups) == []  # one worker: nothing to steer


def test_attach_to_a_socket_outside_any_group_is_refused() -> None:
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen(1)
        with pytest.raises(OSError, match="Invalid argument"):  # EINVAL: not bound with SO_REUSEPORT
            reuseport.attach(plain, 2)


def test_instructions_encode_as_sock_filter() -> None:
    code = reuseport.encode([(reuseport.RET_K, 1, 2, 7)])
    assert code == struct.pack("=HBBI", reuseport.RET_K, 1, 2, 7)


IPV6_PROBE = """
import json, select, socket, sys
sys.path.insert(0, {root!r})
from ssaproxy import reuseport
socks, port = [], 0
for _ in range(3):
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("fd00::1", port))
    s.listen(16)
    port = s.getsockname()[1]
    socks.append(s)
reuseport.attach(socks[0], 3)
got = []
for source in {sources!r}:
    with socket.socket(socket.AF_INET6) as c:
        c.bind((source, 0))
        c.connect(("fd00::1", port))
        ready, _, _ = select.select(socks, [], [], 10)
        conn, _ = ready[0].accept()
        conn.close()
        got.append(socks.index(ready[0]))
print(json.dumps(got))
"""


@pytest.mark.netns
def test_the_kernel_steers_ipv6_clients() -> None:
    """IPv6 sources need addresses of their own: a network namespace with 24 on its loopback."""
    ns = f"ssa-rp-{os.getpid()}"
    sources = [f"fd00::{n:x}:{n * 7919 % 65536:x}" for n in range(2, 26)]
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=30)
        for address in ["fd00::1", *sources]:
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{address}/128", "dev", "lo", "nodad"], check=True,
                           timeout=30)
        probe = IPV6_PROBE.format(root=str(Path(reuseport.__file__).parents[1]), sources=sources)
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe], check=True, timeout=60,
                             capture_output=True, text=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)
    got = json.loads(out)
    assert got == [reuseport.index_for(s, 3) for s in sources]
    assert set(got) == {0, 1, 2}


def test_affine_listeners_are_the_inbound_ones_that_ask() -> None:
    from ssaproxy.config import Config  # noqa: PLC0415

    def inbound(name: str, listen: str, extra: str = "") -> str:
        return (f'[[inbound]]\nname = "{name}"\nlisten = \'{listen}\'\nbackend = "tcp:127.0.0.1:8080"\n'
                f'certificates = [ {{ chain = "/c.pem", key = "/k.pem" }} ]\n{extra}')

    config = Config.from_toml('[outbound]\nlisten = "tcp:15001:interface=127.0.0.1"\n'
                              '[[outbound.route]]\nname = "r"\ndestination = "192.0.2.1/32"\nports = [80]\n'
                              'tls_port = 443\nhostname = "r.test"\n'
                              + inbound("a", "tcp:8443") + inbound("b", "tcp6:8444:interface=\\:\\:1")
                              + inbound("c", "tcp:8445:interface=127.0.0.1", 'worker_affinity = "none"\n'))
    assert reuseport.affine_listeners(config) == {("", 8443), ("::1", 8444)}
