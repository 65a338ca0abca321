"""Source-address affinity for a group of SO_REUSEPORT listening sockets: a client's new
connections all go to one worker, so the session tickets that worker issued resume.

Theory of operation.  With `[daemon] workers` above 1 the main process (ssaproxy.supervisor)
binds each TCP listener once per worker with SO_REUSEPORT; left alone, the kernel picks a
socket of the group by a hash of the connection's four-tuple, so a returning client reaches
the worker that issued its ticket about once in N times.  A worker's ticket keys cannot be
shared with the others (the OpenSSL linked into the cryptography wheel is static, and its
bindings expose neither SSL_CTX_set_tlsext_ticket_keys nor the ticket key callbacks), so the
connections are steered instead: a classic BPF program attached to the group with
SO_ATTACH_REUSEPORT_CBPF returns, for each SYN, the index of the socket to take it.

The program reads the client's address from the packet's network header (SKF_NET_OFF): the
IPv4 source address (offset 12), or the four words of the IPv6 one (offsets 8 to 20) folded
with XOR, so a dual-stack group (an IPv6 wildcard socket that also takes IPv4) works with both
versions.  The word is mixed (xor-shift, multiply, xor-shift, 32-bit) so that neighbouring
addresses spread, and taken modulo the group's size.  Any other network header yields `count`,
an index out of range, for which the kernel falls back to its own hash (reuseport_select_sock);
a load past the packet ends the program with 0, the first socket.

The index is a position in the kernel's array of the group's sockets, which is the order in
which they started listening; the main process makes them listen in worker order and keeps its
copy of each for the daemon's life, so the array never changes while the daemon serves (a
closed socket would be replaced by the last one, changing the mapping) and a restarted worker
takes over its predecessor's socket and clients.  While a worker is down its socket still
queues connections for its replacement; `down` names such workers, and the program then sends
only the clients that mapped to them elsewhere, spread over the workers that are up (the
other clients keep their worker, and their tickets).

`index_for` computes in Python what the program computes in the kernel, for tests and for
reasoning; tests run the program itself through a small interpreter and through the kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import socket
import struct
from collections.abc import Iterable, Sequence
from typing import Union

from twisted.logger import Logger

from ssaproxy.config import Config, ListenAddress

SO_ATTACH_REUSEPORT_CBPF = 51  # asm-generic/socket.h
SO_DETACH_REUSEPORT_BPF = 68
SKF_NET_OFF = 0x100000  # the network header, as a negative load offset (linux/filter.h)
MIX = 0x45D9F3B  # the multiplier of the 32-bit integer mix below
MAX_GROUP = 256  # [daemon] workers at most (the program grows by four instructions a socket at most)

# Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
LD_W_ABS, LD_B_ABS = 0x20, 0x30
ALU_RSH_K, ALU_XOR_X, ALU_MUL_K, ALU_DIV_K, ALU_MOD_K = 0x74, 0xAC, 0x24, 0x34, 0x94
JMP_JA, JMP_JEQ_K = 0x05, 0x15
RET_K, RET_A = 0x06, 0x16
MISC_TAX, MISC_TXA = 0x07, 0x87

Instruction = tuple[int, int, int, int]  # code, jump if true, jump if false, k
Target = Union[int, str]  # a jump (or JA's k): an offset, or a label resolved by _assemble
Labelled = tuple[int, Target, Target, Target]


def _net(offset: int) -> int:
    return (offset - SKF_NET_OFF) & 0xFFFFFFFF


def _mix(word: int) -> int:
    word ^= word >> 16
    word = (word * MIX) & 0xFFFFFFFF
    return word ^ (word >> 16)


def fold(address: Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address]) -> int:
    """The 32-bit word the program reads for `address` (an IPv6 address: its words XORed)."""
    packed = ipaddress.ip_address(address).packed
    word = 0
    for (part,) in struct.iter_unpack("!I", packed):
        word ^= part
    return word


def index_for(address: Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address], count: int,
              down: Iterable[int] = ()) -> int:
    """The socket index the program of `program(count, down)` picks for a client at `address`
    (an IPv4-mapped IPv6 address as its IPv4 one, as it reaches a dual-stack socket)."""
    parsed = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    hashed = _mix(fold(parsed))
    index = hashed % count
    alive = _alive(count, down)
    if index in alive or not alive:
        return index
    return alive[(hashed // count) % len(alive)]


def _alive(count: int, down: Iterable[int]) -> list[int]:
    gone = set(down)
    alive = [i for i in range(count) if i not in gone]
    return alive if alive else list(range(count))


def program(count: int, down: Iterable[int] = ()) -> list[Instruction]:
    """The classic BPF program steering a group of `count` sockets by source address, away
    from the sockets in `down` (every socket down: as if none were)."""
    if not 1 <= count <= MAX_GROUP:
        raise ValueError(f"a group of {count} sockets: 1 to {MAX_GROUP}")
    alive = _alive(count, down)
    dead = [i for i in range(count) if i not in alive]
    code: list[Union[str, Labelled]] = [
        (LD_B_ABS, 0, 0, _net(0)),
        (ALU_RSH_K, 0, 0, 4),  # the IP version
        (JMP_JEQ_K, "v4", 0, 4),
        (JMP_JEQ_K, "v6", 0, 6),
        (RET_K, 0, 0, count),  # neither: out of range, the kernel's hash decides
        "v4", (LD_W_ABS, 0, 0, _net(12)), (JMP_JA, 0, 0, "mix"),
        "v6", (LD_W_ABS, 0, 0, _net(8)),
    ]
    for offset in (12, 16, 20):
        code += [(MISC_TAX, 0, 0, 0), (LD_W_ABS, 0, 0, _net(offset)), (ALU_XOR_X, 0, 0, 0)]
    code += [
        "mix", (MISC_TAX, 0, 0, 0), (ALU_RSH_K, 0, 0, 16), (ALU_XOR_X, 0, 0, 0), (ALU_MUL_K, 0, 0, MIX),
        (MISC_TAX, 0, 0, 0), (ALU_RSH_K, 0, 0, 16), (ALU_XOR_X, 0, 0, 0),
        (MISC_TAX, 0, 0, 0),  # X: the hash
        (ALU_MOD_K, 0, 0, count),
    ]
    for d in dead:  # conditional jumps reach 255 instructions at most: JA goes further
        code += [(JMP_JEQ_K, 0, 1, d), (JMP_JA, 0, 0, "remap")]
    code.append((RET_A, 0, 0, 0))
    if dead:
        code += ["remap", (MISC_TXA, 0, 0, 0), (ALU_DIV_K, 0, 0, count), (ALU_MOD_K, 0, 0, len(alive))]
        for j, index in enumerate(alive[:-1]):
            code += [(JMP_JEQ_K, 0, 1, j), (RET_K, 0, 0, index)]
        code.append((RET_K, 0, 0, alive[-1]))
    return _assemble(code)


def _assemble(code: Sequence[Union[str, Labelled]]) -> list[Instruction]:
    """Instructions and labels (strings naming the instruction after them) to plain
    instructions, each label in a jump turned into its forward offset."""
    labels: dict[str, int] = {}
    plain: list[Labelled] = []
    for item in code:
        if isinstance(item, str):
            labels[item] = len(plain)
        else:
            plain.append(item)

    def resolve(target: Target, pc: int) -> int:
        return labels[target] - pc - 1 if isinstance(target, str) else target

    out = [(op, resolve(jt, pc), resolve(jf, pc), resolve(k, pc)) for pc, (op, jt, jf, k) in enumerate(plain)]
    if any(not (0 <= jt <= 255 and 0 <= jf <= 255) for _, jt, jf, _ in out):
        raise ValueError("a jump offset out of range")
    return out


def encode(instructions: Sequence[Instruction]) -> bytes:
    """The instructions as an array of struct sock_filter."""
    return b"".join(struct.pack("=HBBI", *i) for i in instructions)


def attach(sock: socket.socket, count: int, down: Iterable[int] = ()) -> None:
    """Steer the SO_REUSEPORT group `sock` belongs to (it must be listening already) by source
    address over `count` sockets; OSError if the kernel refuses."""
    code = encode(program(count, down))
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("@HP", len(code) // 8, ctypes.addressof(buffer))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    del buffer  # the kernel copied the program during the call


def detach(sock: socket.socket) -> None:
    """Back to the kernel's own hash for the group of `sock` (ENOENT: there was no program)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise


Where = tuple[str, int]  # a listener's (interface, port), as the supervisor keys its groups


def affine_listeners(config: Config) -> set[Where]:
    """Where every inbound listener whose clients keep to one worker listens."""
    found = set()
    for i in config.inbound:
        if i.worker_affinity == "source-address":
            address = ListenAddress.parse(i.listen, f"inbound.{i.name}.listen")
            found.add((address.interface, address.port))
    return found


class Steering:
    """The SO_REUSEPORT groups of a daemon with `count` workers that are steered by source
    address, and the workers that are down now (their clients go elsewhere meanwhile)."""

    log = Logger()

    def __init__(self, count: int) -> None:
        self.count = count
        self.groups: dict[Where, socket.socket] = {}  # a socket of each steered group
        self.down: frozenset[int] = frozenset()

    def steer(self, where: Where, sock: socket.socket) -> None:
        """Steer the group of `sock` (listening); OSError if the kernel refuses."""
        attach(sock, self.count, self.down)
        self.groups[where] = sock

    def release(self, where: Where) -> None:
        """Leave the group at `where` to the kernel's hash (it is not steered any more, or closed)."""
        sock = self.groups.pop(where, None)
        if sock is not None and sock.fileno() >= 0:
            detach(sock)

    def follow(self, wanted: set[Where], groups: dict[Where, list[socket.socket]]) -> list[Where]:
        """Steer the groups at `wanted` (of `groups`, the sockets of each listener), and no
        other (none with one worker); the groups the kernel refused to steer (logged)."""
        if self.count < 2:
            wanted = set()
        for where in set(self.groups) - wanted:
            with contextlib.suppress(OSError):  # left steered, which serves as well
                self.release(where)
        failed = []
        for where in sorted(wanted & set(groups) - set(self.groups)):
            try:
                self.steer(where, groups[where][0])
                self.log.info("listener {where}: each client address keeps to one of {workers} workers "
                              "(worker_affinity)", where=_text(where), workers=self.count)
            except OSError as e:
                failed.append(where)
                self.log.warn("listener {where}: no worker affinity (the kernel refused the BPF program: {error}); "
                              "returning clients resume on about one connection in {workers}",
                              where=_text(where), error=e.strerror, workers=self.count)
        return failed

    def set_down(self, down: Iterable[int]) -> list[Where]:
        """Steer away from the workers in `down` (none, or all of them: as if every worker
        served); the groups the kernel refused to change (logged)."""
        wanted = frozenset(down)
        if len(wanted) >= self.count:
            wanted = frozenset()
        if wanted == self.down:
            return []
        self.down = wanted
        failed = []
        for where, sock in self.groups.items():
            try:
                attach(sock, self.count, wanted)
            except OSError as e:
                failed.append(where)
                self.log.warn("listener {where}: cannot change its worker affinity: {error}", where=_text(where),
                              error=e.strerror)
        if self.groups:
            self.log.info("worker affinity: {how}", how=f"clients of worker(s) {', '.join(map(str, sorted(wanted)))} "
                          "go to the others meanwhile" if wanted else "every worker serves its own clients again")
        return failed


def _text(where: Where) -> str:
    interface, port = where
    return f"[{interface}]:{port}" if ":" in interface else f"{interface or '*'}:{port}"
