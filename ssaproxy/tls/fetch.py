"""Fetching revocation answers over HTTP, and the caches every connection shares.

Theory of operation: OpenSSL's callbacks are synchronous, so a connection's revocation check
has two steps.  `Revocation.judge_now` runs inside the handshake (the status callback of a
client, the verify callback of a server) with what is at hand: the stapled response, the CRL
files, and cached answers.  A refusal there fails the handshake, so the peer gets OpenSSL's
alert.  If nothing at hand is conclusive, `Revocation.fetch` runs after the handshake and
before the stream reports ready (`TLSStream`): OCSP from the certificate's AIA, then its CRL
distribution points, with Twisted's HTTP client, a timeout and a size limit.  Answers are
cached until their nextUpdate (bounded in entries, least recently used out first); a CRL is
refetched a little before its nextUpdate.  Concurrent checks of one certificate share one fetch.
"""

from __future__ import annotations

import collections
import datetime
import io
import os
from typing import Any, Callable, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from ssaproxy import metrics
from ssaproxy.tls import revocation as rv
from ssaproxy.tls.revocation import Answer, Status

MAX_BODY = 4 << 20  # bytes of an OCSP response or CRL
CACHE_ENTRIES = 4096
CRL_REFRESH_AHEAD = datetime.timedelta(minutes=5)  # a cached CRL is refetched this long before nextUpdate
FAILED_TTL = datetime.timedelta(seconds=30)  # a responder that did not answer is not asked again at once
LOG_EVERY = datetime.timedelta(minutes=10)  # an allowed unknown status is logged once per certificate this often


class _Body(protocol.Protocol):
    def __init__(self, done: defer.Deferred[bytes], limit: int) -> None:
        self.done, self.limit, self.size = done, limit, 0
        self.parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            if self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]
            if not self.done.called:
                self.done.errback(ValueError(f"response larger than {self.limit} bytes"))
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


class Http:
    """GET and POST with a deadline and a size limit; bytes or a failure."""

    def __init__(self, reactor: Any, timeout: float) -> None:
        self.reactor = reactor
        self.timeout = timeout
        pool = HTTPConnectionPool(reactor, persistent=False)  # type: ignore[no-untyped-call]
        self.agent = Agent(reactor, connectTimeout=timeout, pool=pool)  # type: ignore[no-untyped-call]

    def fetch(self, url: str, body: Optional[bytes] = None, content_type: str = "") -> defer.Deferred[bytes]:
        producer = None if body is None else FileBodyProducer(io.BytesIO(body))  # type: ignore[no-untyped-call]
        headers = Headers({b"Content-Type": [content_type.encode()]} if content_type else {})
        d = self.agent.request(b"POST" if body is not None else b"GET", url.encode("ascii"), headers, producer)

        def got(response: IResponse) -> defer.Deferred[bytes]:
            if response.code != 200:
                response.deliverBody(protocol.Protocol())  # type: ignore[no-untyped-call]
                raise ValueError(f"HTTP {response.code}")
            if response.length is not None and isinstance(response.length, int) and response.length > MAX_BODY:
                raise ValueError(f"response of {response.length} bytes is over the limit")
            done: defer.Deferred[bytes] = defer.Deferred()
            response.deliverBody(_Body(done, MAX_BODY))  # type: ignore[no-untyped-call]
            return done

        body_d: defer.Deferred[bytes] = d.addCallback(got)
        body_d.addTimeout(self.timeout, self.reactor, onTimeoutCancel=_timed_out)
        return body_d


def _timed_out(result: object, timeout: float) -> Failure:
    """However the cancelled request failed (Agent wraps it), it was the deadline."""
    return Failure(defer.TimeoutError(f"no answer in {timeout:g}s"))


class _Bounded(collections.OrderedDict[Any, Any]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)

    def fresh(self, key: Any, at: datetime.datetime) -> Any:
        value = self.get(key)
        if value is None:
            return None
        if value[1] is not None and value[1] <= at:
            del self[key]
            return None
        self.move_to_end(key)
        return value[0]


class Revocation:
    """The daemon's revocation checking: CRL files, caches and fetching, shared by every
    connection of every face."""

    log = Logger()

    def __init__(self, reactor: Any, *, crl_files: tuple[str, ...] = (), timeout: float = 5.0,
                 http: Optional[Http] = None) -> None:
        self.reactor = reactor
        self.crl_files = crl_files
        self.http = http or Http(reactor, timeout)
        self.ocsp_cache = _Bounded(CACHE_ENTRIES)  # cache_key -> (Answer, until)
        self.crl_cache = _Bounded(CACHE_ENTRIES)  # url -> ((CRL, refresh at), nextUpdate)
        self._files: dict[str, tuple[float, list[x509.CertificateRevocationList]]] = {}
        self._missing: set[str] = set()  # configured CRL files found gone (logged once each time)
        self._logged = _Bounded(CACHE_ENTRIES)  # certificates whose unknown status was logged lately
        self._inflight: dict[Any, list[defer.Deferred[Answer]]] = {}  # fetches running, and who waits for them

    # ---- in the handshake: what is at hand
    def judge_now(self, cert: x509.Certificate, issuer: x509.Certificate, staple: Optional[bytes],
                  *, use_cache: bool = True) -> Optional[Answer]:
        """A conclusive answer from the staple, the CRL files or the caches; None: fetch."""
        at = rv.now()
        answers: list[Answer] = []
        if staple:
            answers.append(rv.judge_ocsp(staple, cert, issuer, at))
        answers += [rv.judge_crl(crl, cert, issuer, at) for crl in self._file_crls()]
        cached: Optional[Answer] = None
        if use_cache:
            cached = self.ocsp_cache.fresh(rv.cache_key(cert, issuer), at)
            if cached is not None:
                answers.append(cached)
            for url in rv.crl_urls(cert):
                entry = self.crl_cache.fresh(url, at)
                if entry is not None:
                    crl, refresh_at = entry
                    answers.append(rv.judge_crl(crl, cert, issuer, at))
                    if at >= refresh_at:
                        self._refresh_crl(url)
        conclusive = rv.first_conclusive(answers)
        if conclusive is None and cached is not None:
            return cached  # "unknown", remembered from a fetch nobody answered: not asked again at once
        return conclusive

    def _file_crls(self) -> list[x509.CertificateRevocationList]:
        """The configured CRL files, reread when one changes."""
        out: list[x509.CertificateRevocationList] = []
        for path in self.crl_files:
            try:
                mtime = os.stat(path).st_mtime
            except OSError as e:
                if path not in self._missing:  # once per disappearance, not per check
                    self._missing.add(path)
                    self.log.warn("revocation: CRL file {path} is gone ({error}); its revocations are not "
                                  "checked until it is back", path=path, error=e.strerror or e)
                continue
            self._missing.discard(path)
            seen = self._files.get(path)
            if seen is None or seen[0] != mtime:
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                    crls = split_crls(data)
                except (OSError, ValueError) as e:
                    self.log.warn("revocation: cannot read CRL file {path}: {error}", path=path, error=e)
                    crls = []
                seen = self._files[path] = (mtime, crls)
            out += seen[1]
        return out

    # ---- after the handshake: ask the network
    def fetch(self, cert: x509.Certificate, issuer: x509.Certificate) -> defer.Deferred[Answer]:
        key = rv.cache_key(cert, issuer)
        waiter: defer.Deferred[Answer] = defer.Deferred()
        waiting = self._inflight.get(key)
        if waiting is not None:
            waiting.append(waiter)
            return waiter
        self._inflight[key] = [waiter]

        def tell(result: Any) -> None:
            for w in self._inflight.pop(key, []):
                w.callback(result) if not isinstance(result, Failure) else w.errback(result)

        defer.ensureDeferred(self._fetch(cert, issuer)).addBoth(tell)
        return waiter

    async def _fetch(self, cert: x509.Certificate, issuer: x509.Certificate) -> Answer:
        why: list[str] = []
        for url in rv.ocsp_urls(cert):
            try:
                der = await self.http.fetch(url, rv.ocsp_request(cert, issuer), "application/ocsp-request")
            except Exception as e:  # noqa: BLE001 - any failure to fetch is "no answer"
                why.append(f"OCSP {url}: {_why(e)}")
                continue
            answer = rv.judge_ocsp(der, cert, issuer)
            if answer.status is not Status.UNKNOWN or answer.until is not None:
                self.ocsp_cache.put(rv.cache_key(cert, issuer), (answer, answer.until))
            if answer.status is not Status.UNKNOWN:
                return answer
            why.append(f"OCSP {url}: {answer.detail}")
        for url in rv.crl_urls(cert):
            try:
                crl = rv.load_crl(await self.http.fetch(url))
            except Exception as e:  # noqa: BLE001
                why.append(f"CRL {url}: {_why(e)}")
                continue
            answer = rv.judge_crl(crl, cert, issuer)
            if answer.until is not None:
                self._keep_crl(url, crl, answer.until)
            if answer.status is not Status.UNKNOWN:
                return answer
            why.append(f"CRL {url}: {answer.detail}")
        if not why:
            return rv.unknown("the certificate names no OCSP responder or CRL")
        answer = rv.unknown("; ".join(why))
        self.ocsp_cache.put(rv.cache_key(cert, issuer), (answer, rv.now() + FAILED_TTL))
        return answer

    def _keep_crl(self, url: str, crl: x509.CertificateRevocationList, until: datetime.datetime) -> None:
        """Cached until its nextUpdate; refetched (in the background) from CRL_REFRESH_AHEAD before."""
        self.crl_cache.put(url, ((crl, until - CRL_REFRESH_AHEAD), until))

    def _refresh_crl(self, url: str) -> None:
        """Fetch a newer CRL while the cached one still holds.  The new one replaces it if it has
        the same issuer and is current; judge_crl checks its signature for every certificate."""
        key = ("crl", url)
        if key in self._inflight:
            return
        self._inflight[key] = []
        old = self.crl_cache.get(url)

        def got(data: bytes) -> None:
            crl = rv.load_crl(data)
            nxt = crl.next_update_utc
            if old is not None and crl.issuer == old[0][0].issuer and nxt is not None and nxt > rv.now():
                self._keep_crl(url, crl, nxt)

        def failed(reason: Failure) -> None:
            self.log.info("revocation: refreshing the CRL from {url} failed: {error}", url=url,
                          error=reason.getErrorMessage())

        d = self.http.fetch(url)
        d.addCallback(got).addErrback(failed).addBoth(lambda _: self._inflight.pop(key, None))

    def check(self, mode: str, kind: str, verdict: Callable[[Optional[str]], None],
              cert: x509.Certificate, issuer: x509.Certificate) -> defer.Deferred[None]:
        """Fetch and hand `verdict` None (go on) or the refusal's text."""

        def judged(answer: Answer) -> None:
            verdict(self.conclude(mode, kind, answer, "fetched", cert))

        def failed(reason: Failure) -> None:  # fail closed: a bug here is a refusal
            verdict(f"revocation check failed: {reason.getErrorMessage()}")

        return self.fetch(cert, issuer).addCallback(judged).addErrback(failed)

    def _worth_logging(self, cert: x509.Certificate, refused: bool) -> bool:
        """A refusal always; an unknown let through once per certificate per LOG_EVERY (the
        metrics count every one)."""
        if refused:
            return True
        at, key = rv.now(), cert.fingerprint(hashes.SHA256())
        if self._logged.fresh(key, at) is not None:
            return False
        self._logged.put(key, (True, at + LOG_EVERY))
        return True

    def conclude(self, mode: str, kind: str, answer: Answer, source: str,
                 cert: Optional[x509.Certificate]) -> Optional[str]:
        """The refusal (or None) for `answer` under `mode`, counted and, when unknown, logged."""
        why = rv.refusal(mode, answer)
        result = answer.status.value if answer.status is not Status.UNKNOWN else (
            "unknown-refused" if why else "unknown-allowed")
        metrics.revocation(kind, result, source)
        if answer.status is Status.UNKNOWN and (cert is None or self._worth_logging(cert, bool(why))):
            self.log.info("revocation status unknown for {subject} ({mode}: {action}): {detail}",
                          subject=cert.subject.rfc4514_string() if cert is not None else "a peer", mode=mode,
                          action="refused" if why else "allowed", detail=answer.detail)
        return why


def split_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    marker = b"-----BEGIN X509 CRL-----"
    if marker not in data:
        return [rv.load_crl(data)]
    return [rv.load_crl(marker + part) for part in data.split(marker)[1:]]


def _why(e: Exception) -> str:
    if isinstance(e, defer.TimeoutError | defer.CancelledError):
        return f"no answer in time ({e})"
    return str(e) or type(e).__name__


_SHARED: dict[int, Revocation] = {}


def shared(reactor: Any, crl_files: tuple[str, ...], timeout: float) -> Revocation:
    """One `Revocation` per (reactor, CRL files, timeout): the caches outlive a reload that
    leaves those alone."""
    key = hash((id(reactor), crl_files, timeout))
    found = _SHARED.get(key)
    if found is None:
        found = _SHARED[key] = Revocation(reactor, crl_files=crl_files, timeout=timeout)
    return found
