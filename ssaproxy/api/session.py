"""One TLS connection made for a program: the handshake under the admin's policy and the
program's options, then a relay between the TLS stream and the program's carrier.

A session is one of: `connect` (the daemon dials), `upgrade` (STARTTLS: the program handed
over its connected socket, client or server role) or `accept` (a connection that arrived on a
program's listening socket).  It ends in exactly one log event, which names the program (pid,
uid, gid, executable, from SO_PEERCRED).
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket
from typing import Any, Callable, Optional

from OpenSSL import SSL
from OpenSSL._util import lib as _lib
from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from ssaproxy import relay
from ssaproxy.api.carrier import Carrier, CarrierOwner, make_pair
from ssaproxy.api.handover import adopt_connection
from ssaproxy.api.settings import Settings, client_context
from ssaproxy.config import Policy
from ssaproxy.outbound import plain_address
from ssaproxy.proto import options as o
from ssaproxy.proto import wire
from ssaproxy.proto.state import OUTCOME_ERRNO
from ssaproxy.tls.server import negotiated_alpn
from ssaproxy.tls.stream import TLSStream
from ssaproxy.tls.verify import ClientCheck, PeerCheck, Verifier

_ids = itertools.count(1)


class Creds:
    """Who is on the other end of an API connection (SO_PEERCRED), for the log."""

    def __init__(self, pid: int, uid: int, gid: int) -> None:
        self.pid, self.uid, self.gid = pid, uid, gid
        try:
            self.exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            self.exe = "?"

    @classmethod
    def of(cls, sock: Any) -> "Creds":
        import struct

        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, gid = struct.unpack("3i", raw)
        except (OSError, AttributeError):
            pid = uid = gid = -1
        return cls(pid, uid, gid)

    def fields(self) -> dict[str, object]:
        return {"pid": self.pid, "uid": self.uid, "gid": self.gid, "exe": self.exe}


class Limits:
    def __init__(self, connect_timeout: float, handshake_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout


def adopt_carrier(reactor: Any, owner: CarrierOwner) -> tuple[Carrier, socket.socket]:
    """A fresh carrier pair: the daemon's end running `Carrier(owner)` in the reactor, and
    the program's end (a socket to pass and then close)."""
    daemon_end, program_end = make_pair()
    carrier = Carrier(owner)
    try:
        reactor.adoptStreamConnection(daemon_end.fileno(), socket.AF_INET, relay.OneShotFactory(carrier))  # type: ignore[arg-type]
    finally:
        daemon_end.close()  # the reactor holds its own duplicate
    return carrier, program_end


def _version_number(conn: SSL.Connection) -> int:
    return o.VERSION_NUMBERS.get(conn.get_protocol_version_name(), 0)


MAX_CHAIN_PEM = 48 * 1024  # keeps ESTABLISHED/ACCEPTED well inside one socket buffer (docs/api.md)


def _chain_pem(conn: SSL.Connection) -> bytes:
    """The verified chain, leaf first, cut at a certificate boundary so that it stays within
    MAX_CHAIN_PEM bytes (empty if the leaf alone is larger)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    out = b""
    for cert in conn.get_verified_chain() or []:
        pem = cert.to_cryptography().public_bytes(Encoding.PEM)
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
        o.TLS_PEER_CERTIFICATE_CHAIN: _chain_pem(conn) if check.verified else b"",
        o.TLS_TRUSTED_CIPHERS: ":".join(settings.enabled(policy)).encode(),
        o.TLS_CHOSEN_CIPHER: (conn.get_cipher_name() or "").encode(),
        o.TLS_RESUMED_SESSION: o.pack_int(int(_lib.SSL_session_reused(conn._ssl))),
        o.TLS_VERSION_MIN: o.pack_int(o.VERSION_NUMBERS[low]),
        o.TLS_VERSION_MAX: o.pack_int(o.VERSION_NUMBERS[high]),
        o.TLS_VERSION_CONN: o.pack_int(_version_number(conn)),
    }
    return {wire.INFO_BASE + k: v for k, v in values.items()}


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TLSSession(CarrierOwner):
    log = Logger()

    def __init__(self, *, reactor: Any, policy: Policy, settings: Settings, limits: Limits, creds: Creds,
                 op: str, active: set["TLSSession"]) -> None:
        self.reactor = reactor
        self.policy = policy
        self.settings = settings
        self.limits = limits
        self.creds = creds
        self.op = op  # connect | upgrade-client | upgrade-server | accept
        self.active = active
        self.session_id = next(_ids)
        self.started = reactor.seconds()
        self.mode = "setup"  # setup -> relay -> done
        self.carrier: Optional[Carrier] = None
        self.stream: Optional[TLSStream] = None
        self.check: Optional[PeerCheck] = None
        self.relay: Optional[relay.Relay] = None
        self.peer: tuple[str, int] = ("", 0)
        self.local: tuple[str, int] = ("", 0)
        self.target = ""
        self._connecting: Optional[defer.Deferred[Any]] = None
        self._timer: Any = None
        self._tcp_up = False
        self._facts: dict[str, object] = {}
        self._info: dict[int, bytes] = {}
        self.on_ready: Optional[Callable[["TLSSession"], None]] = None  # accept: the listener hands it over
        self.on_end: Optional[Callable[["TLSSession"], None]] = None  # accept: the listener forgets it
        active.add(self)

    # ---- starting
    def start_connect(self, carrier: Carrier, host: str, port: int, family: int) -> None:
        self.carrier = carrier
        self.target = _addr(host, port)
        try:
            ip: Optional[str] = str(ipaddress.ip_address(host))
        except ValueError:
            ip = None
        name = self.settings.hostname or (host if ip is None else None)
        self.check = self._verifier(name, ip)
        stream = self._client_stream(self.check)
        endpoint: Any
        timeout = self.limits.connect_timeout
        if ip is not None:
            kind = TCP6ClientEndpoint if ":" in ip else TCP4ClientEndpoint
            endpoint = kind(self.reactor, ip, port, timeout=timeout)
        else:
            endpoint = HostnameEndpoint(self.reactor, host, port, timeout=timeout)
        self._timer = self.reactor.callLater(timeout + self.limits.handshake_timeout, self._timed_out)
        d = endpoint.connect(relay.OneShotFactory(stream))
        self._connecting = d
        d.addCallbacks(self._tcp_connected, self._connect_failed)

    def start_upgrade(self, carrier: Carrier, sock: socket.socket, server_ctx: Optional[SSL.Context]) -> None:
        """STARTTLS on the program's own connected socket (which the reactor adopts)."""
        self.carrier = carrier
        peer = sock.getpeername()
        self.target = _addr(plain_address(peer[0]), peer[1])
        if server_ctx is None:
            ip = plain_address(peer[0])
            self.check = self._verifier(self.settings.hostname, None if self.settings.hostname else ip)
            stream = self._client_stream(self.check)
        else:
            self.check = ClientCheck(required=self.settings.request_peer_auth, min_rsa_bits=self.policy.min_rsa_bits)
            conn = SSL.Connection(server_ctx, None)
            conn.set_app_data(self.check)
            stream = TLSStream(conn, self.check, server=True)
            stream.sink = self
            self.stream = stream
        self._timer = self.reactor.callLater(self.limits.handshake_timeout, self._timed_out)
        self._tcp_up = True
        adopt_connection(self.reactor, sock, relay.OneShotFactory(stream))
        self._note_addresses()

    def start_accepted(self, stream: TLSStream, check: ClientCheck) -> None:
        self.stream, self.check = stream, check
        stream.sink = self
        self._tcp_up = True
        self._timer = self.reactor.callLater(self.limits.handshake_timeout, self._timed_out)

    def _verifier(self, name: Optional[str], ip: Optional[str]) -> Verifier:
        if name is not None:
            try:
                return Verifier(ip=str(ipaddress.ip_address(name)), min_rsa_bits=self.policy.min_rsa_bits)
            except ValueError:
                return Verifier(hostname=name, min_rsa_bits=self.policy.min_rsa_bits)
        assert ip is not None
        return Verifier(ip=ip, min_rsa_bits=self.policy.min_rsa_bits)

    def _client_stream(self, verifier: Verifier) -> TLSStream:
        conn = SSL.Connection(client_context(self.settings, self.policy), None)
        conn.set_app_data(verifier)
        if verifier.hostname is not None:
            conn.set_tlsext_host_name(verifier.hostname.encode("ascii"))
        stream = TLSStream(conn, verifier)
        stream.sink = self
        self.stream = stream
        return stream

    def _tcp_connected(self, _: Any) -> None:
        self._connecting = None
        self._tcp_up = True
        self._note_addresses()

    def _note_addresses(self) -> None:
        if self.stream is None or self.stream.transport is None:
            return
        peer: Any = self.stream.transport.getPeer()  # type: ignore[union-attr]
        here: Any = self.stream.transport.getHost()  # type: ignore[union-attr]
        self.peer = (plain_address(peer.host), peer.port)
        self.local = (plain_address(here.host), here.port)

    def _connect_failed(self, reason: Failure) -> None:
        self._connecting = None
        if self.mode != "setup" or reason.check(defer.CancelledError):
            return
        if reason.check(error.ConnectionRefusedError):
            self.fail("refused", reason.getErrorMessage())
        elif reason.check(error.TimeoutError):
            self.fail("connect-timeout", f"no TCP connection to {self.target} in {self.limits.connect_timeout:g}s")
        elif reason.check(error.DNSLookupError):
            self.fail("no-address", f"cannot resolve {self.target}")
        elif reason.check(error.NoRouteError):
            self.fail("unreachable", reason.getErrorMessage())
        else:
            os_error = getattr(reason.value, "osError", None)
            import errno as _errno

            if os_error in (_errno.EHOSTUNREACH, _errno.ENETUNREACH):
                self.fail("unreachable", reason.getErrorMessage())
            else:
                self.fail("refused", reason.getErrorMessage())

    def _timed_out(self) -> None:
        self._timer = None
        if self.mode != "setup":
            return
        if self._tcp_up:
            self.fail("handshake-timeout", f"no TLS handshake with {self.target} in time")
        else:
            self.fail("connect-timeout", f"no TCP connection to {self.target} in time")

    # ---- the TLS stream (UpstreamSink)
    def upstream_ready(self) -> None:
        self._cancel_timer()
        assert self.stream is not None and self.check is not None
        self._note_addresses()
        tls = self.stream.tls
        server = self.op in ("upgrade-server", "accept")
        self._info = info(tls, self.check, self.settings, self.policy, server=server)
        sni = tls.get_servername()
        self._facts = {"tls_version": tls.get_protocol_version_name(), "cipher": tls.get_cipher_name(),
                       "sni": sni.decode("ascii", "replace") if sni else None, "alpn": negotiated_alpn(tls)}
        if self.op == "accept":
            assert self.on_ready is not None
            self.on_ready(self)  # the listener makes the carrier and calls splice
            return
        assert self.carrier is not None and self.carrier.transport is not None
        frame = wire.encode(wire.Kind.ESTABLISHED, {
            wire.Tag.PEER_HOST: self.peer[0], wire.Tag.PEER_PORT: self.peer[1],
            wire.Tag.LOCAL_HOST: self.local[0], wire.Tag.LOCAL_PORT: self.local[1], **self._info})
        self.carrier.transport.write(frame)
        self.splice(self.carrier)

    def splice(self, carrier: Carrier) -> None:
        assert self.stream is not None and carrier.transport is not None
        self.carrier = carrier
        self.mode = "relay"
        self.relay = relay.Relay(relay.tcp(carrier.transport), self.stream, self._relay_done)
        carrier.splice(self.relay)

    def upstream_data(self, data: bytes) -> None:  # never before ready
        pass

    def upstream_eof(self) -> None:
        pass

    def upstream_lost(self, how: str, detail: Optional[str]) -> None:
        if self.mode != "setup":
            return
        outcome = {relay.VERIFY_FAILED: "verify-failed", relay.HANDSHAKE_FAILED: "handshake-failed"}.get(how, "reset")
        self.fail(outcome, detail or how)

    # ---- the program's carrier (CarrierOwner)
    def program_data(self, data: bytes) -> None:
        pass

    def program_eof(self) -> None:
        # The library never half-closes before the result (its shutdown() waits for it), so
        # a FIN now means the program closed its socket.
        if self.mode == "setup":
            self._end("program-gone", "the program closed its socket during the handshake", error_frame=False)

    def program_lost(self, reason: Failure) -> None:
        if self.mode == "setup":
            self._end("program-gone", "the program closed its socket during the handshake", error_frame=False)

    # ---- endings
    @property
    def info_attrs(self) -> dict[int, bytes]:
        return self._info

    def shut_down(self) -> None:
        if self.mode == "relay" and self.relay is not None:
            self.relay.detach()
            if self.stream is not None:
                self.stream.abort()
            if self.carrier is not None and self.carrier.transport is not None:
                relay.reset(self.carrier.transport)
            self._log("shutdown", "daemon stopping")
            return
        self.fail("shutdown", "daemon stopping")

    def fail(self, outcome: str, detail: Optional[str]) -> None:
        self._end(outcome, detail, error_frame=True)

    def _end(self, outcome: str, detail: Optional[str], *, error_frame: bool) -> None:
        if self.mode == "done":
            return
        self.mode = "done"
        self._cancel_timer()
        if self._connecting is not None:
            d, self._connecting = self._connecting, None
            d.cancel()
        if self.stream is not None:
            self.stream.sink = None
            self.stream.abort()
        carrier = self.carrier
        if carrier is not None and carrier.transport is not None:
            carrier.owner = None
            if error_frame:
                code = OUTCOME_ERRNO.get(outcome, OUTCOME_ERRNO["reset"])
                text = f"{outcome}: {detail}" if detail else outcome
                carrier.transport.write(wire.encode(wire.Kind.ERROR, {wire.Tag.ERRNO: code, wire.Tag.TEXT: text}))
                carrier.transport.loseConnection()  # the frame, then a FIN: the result was delivered
            else:
                relay.reset(carrier.transport)
        self._log(outcome, detail)

    def _relay_done(self, outcome: str, detail: Optional[str]) -> None:
        self.mode = "done"
        self._log(outcome, detail)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _log(self, outcome: str, detail: Optional[str]) -> None:
        self.mode = "done"
        self.active.discard(self)
        on_end, self.on_end, self.on_ready = self.on_end, None, None
        if on_end is not None:
            on_end(self)
        rl, self.relay = self.relay, None
        check = self.check
        fields = dict(
            session=self.session_id, op=self.op, outcome=outcome, detail=detail, target=self.target or None,
            peer=_addr(*self.peer) if self.peer[0] else None,
            hostname=self.settings.hostname,
            verified=check.verified if check is not None and (check.presented or isinstance(check, Verifier)) else None,
            bytes_out=rl.bytes_out if rl else 0, bytes_in=rl.bytes_in if rl else 0,
            duration=round(self.reactor.seconds() - self.started, 4),
            tls_version=self._facts.get("tls_version"), cipher=self._facts.get("cipher"),
            sni=self._facts.get("sni"), alpn=self._facts.get("alpn"), **self.creds.fields())
        quiet = outcome == "closed"
        (self.log.info if quiet else self.log.warn)(
            "api session {session} {op} {outcome}: pid={pid} uid={uid} gid={gid} exe={exe} target={target} "
            "peer={peer} hostname={hostname} verified={verified} tls={tls_version} cipher={cipher} sni={sni} "
            "alpn={alpn} bytes_out={bytes_out} bytes_in={bytes_in} duration={duration}s detail={detail}", **fields)
