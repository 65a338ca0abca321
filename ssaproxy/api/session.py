"""One TLS connection made for a program: the handshake under the admin's policy and the
program's options, then a relay between the TLS stream and the program's carrier.

A session is one of: `connect` (the daemon dials; the program's own socket waits parked, and
the result goes on the control connection before that socket is completed or failed),
`upgrade` (STARTTLS: the program handed over its connected socket, client or server role; the
result is the first frame on a fresh carrier) or `accept` (a connection that arrived on a
program's listening socket, delivered to the program's loopback listener by `listener`).
It ends in exactly one log event, which names the program (pid, uid, gid, executable, from
SO_PEERCRED).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any, Callable, Optional

from OpenSSL import SSL, crypto
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.logger import Logger

from ssaproxy.addresses import host_port, plain_address
from ssaproxy.api.carrier import Carrier, Parked, make_pair
from ssaproxy.api.handover import adopt_connection
from ssaproxy.api.settings import Settings, client_context
from ssaproxy.config import Policy, Profile
from ssaproxy.kernel import Creds
from ssaproxy.lifecycle import Lifecycle, State, fail_closed
from ssaproxy.policy import Identity
from ssaproxy.proto import options as o
from ssaproxy.proto import wire
from ssaproxy.proto.connection import OUTCOME_ERRNO, Error, Established
from ssaproxy.streams import How, OneShotFactory, graceful_close
from ssaproxy.tls._openssl import session_reused
from ssaproxy.tls.connection import client_stream, server_stream, session_key
from ssaproxy.tls.context import negotiated_alpn
from ssaproxy.tls.revcheck import for_connection
from ssaproxy.tls.stream import TLSStream
from ssaproxy.tls.verify import ClientCheck, PeerCheck, Verifier

__all__ = ["Creds", "Limits", "TLSSession", "adopt_carrier", "identity_of", "info"]


class Limits:
    def __init__(self, connect_timeout: float, handshake_timeout: float, idle_timeout: float = 0.0) -> None:
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout  # a relay with no bytes either way this long is reset; 0: never


def adopt_carrier(reactor: Any, owner: TLSSession) -> tuple[Carrier, socket.socket]:
    """A fresh carrier pair: the daemon's end, the session's near end, running in the reactor;
    and the program's end (a socket to pass and then close)."""
    daemon_end, program_end = make_pair()
    carrier = Carrier()
    carrier.sink = owner
    owner.near = carrier
    try:
        reactor.adoptStreamConnection(daemon_end.fileno(), socket.AF_INET, OneShotFactory(carrier))
    finally:
        daemon_end.close()  # the reactor holds its own duplicate
    return carrier, program_end


def identity_of(profile: Optional[Profile]) -> Optional[tuple[str, str]]:
    """The client certificate and key files a program's profile presents for it, if any."""
    if profile is None or profile.client_certificate is None or profile.client_key is None:
        return None
    return profile.client_certificate, profile.client_key


def _version_number(conn: SSL.Connection) -> int:
    return o.VERSION_NUMBERS.get(conn.get_protocol_version_name(), 0)


MAX_CHAIN_PEM = 48 * 1024  # keeps ESTABLISHED/ACCEPTED well inside one socket buffer (docs/api.md)


def _chain_pem(conn: SSL.Connection, check: PeerCheck) -> bytes:
    """The verified chain, leaf first, cut at a certificate boundary so that it stays within
    MAX_CHAIN_PEM bytes (empty if the leaf alone is larger).  A resumed session's is the one
    its full handshake verified, kept with it in the session cache."""
    out = b""
    for cert in conn.get_verified_chain() or check.resumed_chain:
        pem = crypto.dump_certificate(crypto.FILETYPE_PEM, cert)  # a third of to_cryptography()'s cost
        if len(out) + len(pem) > MAX_CHAIN_PEM:
            break
        out += pem
    return out


MAX_IDENTITY = 8 * 1024


def _capped(identities: bytes) -> bytes:
    """At most MAX_IDENTITY bytes, cut after a whole entry of the comma-separated list."""
    if len(identities) <= MAX_IDENTITY:
        return identities
    return identities[:MAX_IDENTITY].rpartition(b",")[0]


def info(conn: SSL.Connection, check: PeerCheck, settings: Settings, policy: Policy, *,
         server: bool) -> dict[int, bytes]:
    """Every getsockopt value of an established connection, by option number."""
    low, high = settings.versions(policy)
    sni = conn.get_servername()
    if server:
        identity = ",".join(check.identities) if isinstance(check, ClientCheck) else ""
    else:
        identity = check.identity if isinstance(check, Verifier) else ""
    values = {
        o.TLS_REMOTE_HOSTNAME: (identity if not server else "").encode(),
        o.TLS_SERVER_NAME: sni or b"",
        o.TLS_ALPN: (negotiated_alpn(conn) or "").encode(),
        o.TLS_PEER_IDENTITY: _capped(identity.encode()) if check.verified else b"",
        o.TLS_REQUEST_PEER_AUTH: o.pack_int(int(settings.request_peer_auth)),
        o.TLS_PEER_CERTIFICATE_CHAIN: _chain_pem(conn, check) if check.verified else b"",
        o.TLS_TRUSTED_CIPHERS: ":".join(settings.enabled(policy)).encode(),
        o.TLS_CHOSEN_CIPHER: (conn.get_cipher_name() or "").encode(),
        o.TLS_RESUMED_SESSION: o.pack_int(int(session_reused(conn))),
        o.TLS_SESSION_REUSE: o.pack_int(int(settings.reuses(policy))),
        o.TLS_VERSION_MIN: o.pack_int(o.VERSION_NUMBERS[low]),
        o.TLS_VERSION_MAX: o.pack_int(o.VERSION_NUMBERS[high]),
        o.TLS_VERSION_CONN: o.pack_int(_version_number(conn)),
    }
    return {wire.INFO_BASE + k: v for k, v in values.items()}


class TLSSession(Lifecycle):
    """A program's TLS connection.  `near` is the program's carrier, `far` the TLS stream."""

    log = Logger()
    kind = "api session"
    log_format = ("api session {session} {op} {outcome}: pid={pid} uid={uid} gid={gid} exe={exe} target={target} "
                  "peer={peer} hostname={hostname} verified={verified} resumed={resumed} tls={tls_version} "
                  "cipher={cipher} sni={sni} alpn={alpn} profile={profile} bytes_out={bytes_out} "
                  "bytes_in={bytes_in} duration={duration}s detail={detail}")

    def __init__(self, *, reactor: Any, policy: Policy, settings: Settings, limits: Limits, creds: Creds,
                 op: str, active: set[TLSSession], profile: Optional[Profile] = None) -> None:
        super().__init__(reactor, active)
        active.add(self)
        self.policy = policy
        self.settings = settings
        self.limits = limits
        self.creds = creds
        self.op = op  # connect | upgrade-client | upgrade-server | accept
        self.profile = profile  # the [[profile]] whose policy applies (None: the admin's [policy])
        self.identity = identity_of(profile)
        self.check: Optional[PeerCheck] = None
        self.peer: tuple[str, int] = ("", 0)
        self.local: tuple[str, int] = ("", 0)
        self.target = ""
        self.parked: Optional[Parked] = None  # connect: the program's socket, until the result
        self._info: dict[int, bytes] = {}
        self.on_ready: Optional[Callable[[TLSSession], None]] = None  # accept: the listener hands it over
        self.on_end: Optional[Callable[[TLSSession], None]] = None  # accept: the listener forgets it
        self.on_finish: Optional[Callable[[], None]] = None  # once, at the end: the uid's session slot back
        self.idle_timeout = limits.idle_timeout or None
        self.allow_ragged_eof = settings.allow_ragged_eof  # a listener's applies to each accepted connection

    # ---- starting
    def start_connect(self, parked: Parked, host: str, port: int, family: int) -> None:
        self.parked = parked
        self.target = host_port(host, port)
        try:
            ip: Optional[str] = str(ipaddress.ip_address(host))
        except ValueError:
            ip = None
        name = self.settings.hostname or (host if ip is None else None)
        stream = self._client_stream(Identity.of(name) if name is not None else Identity(ip=ip), host, port)
        timeout = self.limits.connect_timeout
        endpoint: Any
        if ip is not None:
            kind = TCP6ClientEndpoint if ":" in ip else TCP4ClientEndpoint
            endpoint = kind(self.reactor, ip, port, timeout=timeout)
        else:
            endpoint = HostnameEndpoint(self.reactor, host, port, timeout=timeout)
        # Each phase has its own deadline: the connect (name resolution included) now, the
        # handshake once TCP is up.
        self.arm("setup", timeout, "connect-timeout", f"no TCP connection to {self.target} in {timeout:g}s")
        self.connect(endpoint, stream)

    def start_upgrade(self, carrier: Carrier, sock: socket.socket, server_ctx: Optional[SSL.Context]) -> None:
        """STARTTLS on the program's own connected socket (which the reactor adopts)."""
        peer = sock.getpeername()
        self.target = host_port(plain_address(peer[0]), peer[1])
        if server_ctx is None:
            name = self.settings.hostname
            stream = self._client_stream(Identity.of(name) if name else Identity(ip=plain_address(peer[0])),
                                         plain_address(peer[0]), peer[1])
        else:
            check = ClientCheck(required=self.settings.request_peer_auth, min_rsa_bits=self.policy.min_rsa_bits)
            revocation = (for_connection(self.reactor, self.policy, self.settings.revocation_mode(self.policy),
                                         self.kind) if self.settings.request_peer_auth else None)
            stream = server_stream(server_ctx, check, TLSStream, revocation)
            self.check = check
        self._handshaking(stream)
        try:
            adopt_connection(self.reactor, sock, OneShotFactory(stream))
        except OSError as e:  # no descriptor left for it, say: the program hears it on its carrier
            self.fail("overload" if e.errno in (errno.EMFILE, errno.ENFILE) else "reset",
                      f"cannot take over the socket: {e.strerror or e}")
            return
        self._note_addresses()

    def start_accepted(self, stream: TLSStream, check: ClientCheck) -> None:
        self.check = check
        self._handshaking(stream)

    def _client_stream(self, identity: Identity, peer: str, port: int) -> TLSStream:
        ctx = client_context(self.settings, self.policy, self.identity)
        bits = self.policy.min_rsa_bits
        resume = session_key(ctx, identity, peer, port, bits, self.settings.alpn, self.creds.uid) \
            if self.settings.reuses(self.policy) else None
        revocation = for_connection(self.reactor, self.policy, self.settings.revocation_mode(self.policy), self.kind)
        stream = client_stream(ctx, identity, bits, resume, revocation)
        self.check = stream.verifier
        return stream

    def _handshaking(self, stream: TLSStream) -> None:
        self.far = stream
        stream.sink = self
        self.go(State.HANDSHAKING)
        self.arm("setup", self.limits.handshake_timeout, "handshake-timeout",
                 f"no TLS handshake with {self.target} in time")

    @property
    def far_stream(self) -> Optional[TLSStream]:
        return self.far if isinstance(self.far, TLSStream) else None

    def far_connected(self) -> None:
        self._note_addresses()
        if not self.done:
            self._handshaking(self.far_stream)  # type: ignore[arg-type]

    def _note_addresses(self) -> None:
        stream = self.far_stream
        if stream is None or stream.transport is None:
            return
        peer, here = stream.tcp.getPeer(), stream.tcp.getHost()
        self.peer = (plain_address(peer.host), peer.port)
        self.local = (plain_address(here.host), here.port)

    def connect_failed(self, outcome: str, detail: str) -> None:
        if outcome == "connect-timeout":
            detail = f"no TCP connection to {self.target} in {self.limits.connect_timeout:g}s"
        elif outcome == "no-address":
            detail = f"cannot resolve {self.target}"
        elif outcome in ("connect-refused", "connect-failed"):
            outcome = "refused"
        self.fail(outcome, detail)

    def timed_out(self, name: str, outcome: str, detail: str) -> None:
        if self.state is State.HANDSHAKING:
            outcome, detail = "handshake-timeout", f"no TLS handshake with {self.target} in time"
        super().timed_out(name, outcome, detail)

    # ---- the TLS stream, before the relay
    def far_ready(self) -> None:
        self.disarm()
        stream, check = self.far_stream, self.check
        assert stream is not None and check is not None
        self._note_addresses()
        tls = stream.tls
        self._info = info(tls, check, self.settings, self.policy, server=self.op in ("upgrade-server", "accept"))
        sni = tls.get_servername()
        self.facts.update(stream.facts(), sni=sni.decode("ascii", "replace") if sni else None,
                          alpn=negotiated_alpn(tls))
        if self.op == "accept":
            assert self.on_ready is not None
            self.on_ready(self)  # the listener makes the carrier and calls splice
            return
        if self.parked is not None:  # connect: the result on the control connection, then the socket
            result = Established(self.peer, self.local, {t - wire.INFO_BASE: v for t, v in self._info.items()})
            # The far end's bytes are held meanwhile; an end of the session before the
            # completion's abandons it (`_end`), and neither callback runs then.
            self.parked.establish(result, self._completed, self._not_completed)
            return
        assert self.near is not None
        self.near.write(wire.encode(wire.Kind.ESTABLISHED, {
            wire.Tag.PEER_HOST: self.peer[0], wire.Tag.PEER_PORT: self.peer[1],
            wire.Tag.LOCAL_HOST: self.local[0], wire.Tag.LOCAL_PORT: self.local[1], **self._info}))
        self.begin_relay()

    @fail_closed
    def _completed(self, carrier: Carrier) -> None:
        self.parked = None
        if self.done:  # cannot happen (an end abandons the completion first): never relay then
            carrier.abort()
            return
        self.splice(carrier)

    @fail_closed
    def _not_completed(self, why: str) -> None:
        self.parked = None  # the ESTABLISHED frame went: no ERROR can follow it
        self.fail("no-carrier", f"cannot complete the program's socket: {why}")

    def splice(self, carrier: Carrier) -> None:
        self.near = carrier
        carrier.sink = self
        self.begin_relay()

    def far_lost(self, how: How, detail: Optional[str]) -> None:
        self.far = None
        outcome = {How.VERIFY_FAILED: "verify-failed", How.HANDSHAKE_FAILED: "handshake-failed"}.get(how, "reset")
        self.fail(outcome, detail or str(how))

    # ---- the program's carrier, before the relay
    def near_eof(self) -> None:
        # The library never half-closes before the result (its shutdown() waits for it), so
        # a FIN now means the program closed its socket.
        self._end("program-gone", "the program closed its socket during the handshake", error_frame=False)

    def near_lost(self, how: How, detail: Optional[str]) -> None:
        self._end("program-gone", "the program closed its socket during the handshake", error_frame=False)

    def program_gone(self) -> None:
        """connect: the program closed its control connection before the result."""
        self._end("program-gone", "the program closed its control connection during the handshake",
                  error_frame=False)

    # ---- endings
    @property
    def info_attrs(self) -> dict[int, bytes]:
        return self._info

    def refuse(self, outcome: str, detail: Optional[str]) -> None:
        if self.state is State.RELAYING:
            super().refuse(outcome, detail)
        else:
            self.fail(outcome, detail)  # the program learns why, as an errno

    def fail(self, outcome: str, detail: Optional[str]) -> None:
        self._end(outcome, detail, error_frame=True)

    def _end(self, outcome: str, detail: Optional[str], *, error_frame: bool) -> None:
        if self.done:
            return
        self.abandon_far()
        parked, self.parked = self.parked, None
        if parked is not None:
            if error_frame:
                code = OUTCOME_ERRNO.get(outcome, errno.ECONNRESET)
                parked.fail(Error(code, f"{outcome}: {detail}" if detail else outcome))
            else:
                parked.abandon()
        near = self.near
        if near is not None and near.transport is not None:
            near.sink = None
            if error_frame:
                code = OUTCOME_ERRNO.get(outcome, errno.ECONNRESET)
                text = f"{outcome}: {detail}" if detail else outcome
                near.write(wire.encode(wire.Kind.ERROR, {wire.Tag.ERRNO: code, wire.Tag.TEXT: text}))
                graceful_close(near.transport)  # the frame, then a FIN: the result was delivered
            else:
                near.abort()
        self.finish(outcome, detail, reset_near=False)

    def ended(self, outcome: str, detail: Optional[str]) -> None:
        on_end, self.on_end, self.on_ready = self.on_end, None, None
        on_finish, self.on_finish = self.on_finish, None
        if on_finish is not None:
            on_finish()
        if on_end is not None:
            on_end(self)
        super().ended(outcome, detail)

    def record(self, outcome: str, detail: Optional[str]) -> dict[str, object]:
        check = self.check
        return {
            **super().record(outcome, detail), "session": self.conn_id, "op": self.op,
            "target": self.target or None, "peer": host_port(*self.peer) if self.peer[0] else None,
            "hostname": self.settings.hostname,
            "verified": check.verified if check is not None and (check.presented or isinstance(check, Verifier))
            else None,
            "tls_version": self.facts.get("tls_version"), "cipher": self.facts.get("cipher"),
            "resumed": self.facts.get("resumed"), "sni": self.facts.get("sni"), "alpn": self.facts.get("alpn"),
            "profile": self.profile.name if self.profile is not None else None,
            **self.creds.fields()}
