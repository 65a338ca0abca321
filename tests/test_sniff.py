"""First-bytes inspection: ClientHello detection and the HTTP/1.x Host header.

Real ClientHellos come from Python's `ssl` module driven over memory BIOs, so the bytes are
whatever a genuine OpenSSL client sends first, not a hand-made imitation.
"""

from __future__ import annotations

import ssl

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ssaproxy.sniff import HostResult, http_host, looks_like_client_hello

LIMIT = 8192


def client_hello(server_hostname: str | None = "example.com", *,
                 maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
                 alpn: list[str] | None = None) -> bytes:
    """The first flight of a real TLS client: the record(s) carrying its ClientHello."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = maximum
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=False, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    flight = outgoing.read()
    assert flight, "the client wrote nothing"
    return flight


HELLOS = {
    "tls13-sni": lambda: client_hello("example.com"),
    "tls13-no-sni": lambda: client_hello(None),
    "tls12-max": lambda: client_hello("example.org", maximum=ssl.TLSVersion.TLSv1_2),
    "alpn-long-name": lambda: client_hello("a" * 60 + ".example.net", alpn=["h2", "http/1.1"]),
}


@pytest.fixture(params=sorted(HELLOS), scope="module")
def hello(request: pytest.FixtureRequest) -> bytes:
    return HELLOS[request.param]()


# --------------------------------------------------------------------------- ClientHello


def test_real_client_hello_is_recognised(hello: bytes) -> None:
    # Sanity of the fixture itself: a handshake record (0x16, 0x03 0x0N) carrying type 1.
    assert hello[0] == 0x16 and hello[1] == 0x03 and hello[5] == 0x01
    assert looks_like_client_hello(hello) is True
    # The record header and handshake type alone are not enough: the whole record must be there.
    assert looks_like_client_hello(hello[:6]) is None


def test_short_prefixes_of_a_client_hello_are_undecided(hello: bytes) -> None:
    for n in range(1, 6):
        assert looks_like_client_hello(hello[:n]) is None, n


def test_no_genuine_prefix_is_ever_refused(hello: bytes) -> None:
    verdicts = [looks_like_client_hello(hello[:n]) for n in range(1, len(hello) + 1)]
    assert False not in verdicts
    # Undecided until the whole first record has arrived, then a yes.
    record_end = 5 + int.from_bytes(hello[3:5], "big")
    assert set(verdicts[:record_end - 1]) == {None}
    assert set(verdicts[record_end - 1:]) == {True}


def test_empty_input_is_undecided() -> None:
    assert looks_like_client_hello(b"") is None


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"POST /submit HTTP/1.0\r\n",
    b"G",
    b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.6\r\n",
])
def test_plaintext_protocols_are_not_tls(request_bytes: bytes) -> None:
    assert looks_like_client_hello(request_bytes) is False
    assert looks_like_client_hello(request_bytes[:1]) is False


@pytest.mark.parametrize("junk", [
    b"\x16\x00",                          # 0x16 then not 0x03
    b"\x16\x02\x00\x00\x10\x01",          # SSLv2-ish major version
    b"\x16\xff",
    b"\x16\x16\x16\x16\x16\x16",
    b"\x16\x03\x05",                      # minor version past TLS 1.3's 0x04 is not a real record
    b"\x16\x03\x01\x00\x00",              # zero-length record
    b"\x16\x03\x01\x48\x01",              # record length over 2^14 + 2048
    b"\x16\x03\x01\x00\x30\x02",          # a ServerHello, not a ClientHello
    b"\x16\x03\x03\x00\x30\x00",          # HelloRequest
    b"\x17\x03\x03\x00\x30\x01",          # application data record
    b"\x80\x2e\x01\x03\x01",              # SSLv2 ClientHello framing
    b"\x00\x00\x00\x00\x00\x00",
])
def test_binary_junk_is_not_a_client_hello(junk: bytes) -> None:
    assert looks_like_client_hello(junk) is False
    assert looks_like_client_hello(junk + b"\x01" * 10) is False


def test_largest_allowed_record_length_waits_for_the_record() -> None:
    assert looks_like_client_hello(b"\x16\x03\x01" + (16384).to_bytes(2, "big") + b"\x01") is None
    assert looks_like_client_hello(b"\x16\x03\x01" + (16385).to_bytes(2, "big") + b"\x01") is False


def test_sslv3_and_tls13_record_versions_are_accepted(hello: bytes) -> None:
    for minor in range(0, 5):
        assert looks_like_client_hello(hello[:2] + bytes([minor]) + hello[3:]) is True


@pytest.mark.parametrize("after", [
    b"user=admin password=hunter2 and more plaintext to fill the record out to its length....",
    b"\x00" * 80,
    b"\x03\x03" + b"\x00" * 32 + b"\x21" + b"\x00" * 60,   # session id longer than 32
])
def test_client_hello_shaped_prefix_with_other_bytes_is_refused(after: bytes) -> None:
    # A binary protocol that happens to start 16 03 01 LL LL 01 must not be taken for TLS:
    # that would pass its plaintext through unencrypted.
    body = b"\x01" + (len(after)).to_bytes(3, "big") + after
    data = b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body
    assert looks_like_client_hello(data) is False


def test_fields_must_add_up_to_the_handshake_length(hello: bytes) -> None:
    # The handshake and record lengths grow by one byte the extensions length does not cover.
    record_end = 5 + int.from_bytes(hello[3:5], "big")
    hs_end = 5 + 4 + int.from_bytes(hello[6:9], "big")
    assert hs_end == record_end
    truncated_ext = bytearray(hello[:record_end])
    truncated_ext[3:5] = (int.from_bytes(hello[3:5], "big") + 1).to_bytes(2, "big")
    truncated_ext[6:9] = (int.from_bytes(hello[6:9], "big") + 1).to_bytes(3, "big")
    truncated_ext += b"\x00"  # one byte more than the extensions length says
    assert looks_like_client_hello(bytes(truncated_ext)) is False


_tlsish = st.builds(lambda tail: b"\x16\x03" + tail, st.binary(max_size=12))
_any_bytes = st.one_of(st.binary(max_size=16), _tlsish,
                       st.builds(lambda t: b"\x16" + t, st.binary(max_size=8)))


@given(_any_bytes)
def test_looks_like_client_hello_never_raises(data: bytes) -> None:
    assert looks_like_client_hello(data) in (True, False, None)


@given(_any_bytes, st.binary(max_size=16))
@example(b"\x16\x03\x01\x02\x00", b"\x01")
@example(b"\x16", b"\x03")
def test_looks_like_client_hello_is_monotone(data: bytes, more: bytes) -> None:
    verdicts = [looks_like_client_hello(data[:n]) for n in range(len(data) + 1)]
    decided = next((v for v in verdicts if v is not None), None)
    if decided is not None:
        first = verdicts.index(decided)
        assert all(v == decided for v in verdicts[first:])
        assert looks_like_client_hello(data + more) == decided
    # Undecided means "too short to tell": from 6 bytes on there is always an answer.
    if len(data) >= 6:
        assert verdicts[-1] is not None


# --------------------------------------------------------------------------- Host header


def req(*headers: str, line: str = "GET / HTTP/1.1") -> bytes:
    return ("\r\n".join([line, *headers]) + "\r\n\r\n").encode("latin-1")


@pytest.mark.parametrize(("host_header", "expected"), [
    ("example.com", "example.com"),
    ("example.com:8080", "example.com"),
    ("Example.COM", "example.com"),
    ("example.com.", "example.com"),
    ("example.com.:80", "example.com"),
    ("  example.com \t", "example.com"),
    ("192.0.2.7", "192.0.2.7"),
    ("192.0.2.7:8080", "192.0.2.7"),
    ("[::1]", "::1"),
    ("[2001:DB8::1]:443", "2001:db8::1"),
    ("[2001:db8:0:0:0:0:0:1]", "2001:db8::1"),
    ("localhost", "localhost"),
])
def test_host_is_found(host_header: str, expected: str) -> None:
    assert http_host(req(f"Host: {host_header}"), LIMIT) == HostResult(complete=True, host=expected)


def test_simple_request_with_other_headers() -> None:
    data = req("User-Agent: curl/8", "Host: www.example.org", "Accept: */*")
    assert http_host(data, LIMIT) == HostResult(complete=True, host="www.example.org")


@pytest.mark.parametrize("name", ["host", "HOST", "hOsT"])
def test_header_name_is_case_insensitive(name: str) -> None:
    assert http_host(req(f"{name}: example.com"), LIMIT).host == "example.com"


def test_body_after_the_header_block_is_ignored() -> None:
    data = req("Host: example.com", "Content-Length: 5", line="POST /x HTTP/1.0") + b"Host:"
    assert http_host(data, LIMIT) == HostResult(complete=True, host="example.com")


def _refused(result: HostResult, fragment: str) -> None:
    assert result.complete is True
    assert result.host is None
    assert result.error is not None and fragment in result.error


def test_missing_host() -> None:
    _refused(http_host(req("Accept: */*"), LIMIT), "found 0")
    _refused(http_host(b"GET / HTTP/1.0\r\n\r\n", LIMIT), "found 0")


def test_duplicate_host() -> None:
    _refused(http_host(req("Host: a.example", "Host: a.example"), LIMIT), "found 2")
    _refused(http_host(req("Host: a.example", "host: b.example"), LIMIT), "found 2")


@pytest.mark.parametrize("data", [
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"\x16\x03\x01\x00\x05\x01\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: example.com\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\nHost: example.com\r\n\r\n",
    b"GET /\r\n\r\n",
    b"\r\n\r\n",
])
def test_not_http(data: bytes) -> None:
    _refused(http_host(data, LIMIT), "not an HTTP/1.x request")


def test_not_http_is_decided_at_the_end_of_the_first_line() -> None:
    _refused(http_host(b"HELO mail.example\r\n", LIMIT), "not an HTTP/1.x request")
    assert http_host(b"HELO mail.example", LIMIT) == HostResult(complete=False)


@pytest.mark.parametrize("value", [
    "", "exa mple.com", "exa_mple.com", "*.example.com", "example.com:", "example.com:0",
    "example.com:65536", "example.com:123456", "example.com:http", "::1", "[::1", "[::1]x",
    "[::1]:0", "[not-v6]", "-example.com", "a..b",
])
def test_bad_host_values(value: str) -> None:
    _refused(http_host(req(f"Host: {value}"), LIMIT), "is not a name or address")


def test_non_ascii_host() -> None:
    data = b"GET / HTTP/1.1\r\nHost: b\xc3\xbccher.example\r\n\r\n"
    _refused(http_host(data, LIMIT), "not ASCII")


@pytest.mark.parametrize("line", ["Host example.com", " Host: example.com", "Host : example.com",
                                  ": example.com", "\tfolded"])
def test_malformed_header_lines(line: str) -> None:
    _refused(http_host(req("Accept: */*", line), LIMIT), "malformed header line")


def test_host_value_with_a_bare_newline_is_refused() -> None:
    # "\r\n" separates lines; a bare "\n" stays inside the value and must not reach SNI.
    result = http_host(b"GET / HTTP/1.1\r\nHost: example.com\n\r\n\r\n", LIMIT)
    assert result.host is None
    _refused(result, "is not a name or address")


def test_incomplete_request_is_not_complete() -> None:
    full = req("Host: example.com", "Accept: */*")
    for n in range(len(full)):
        prefix = full[:n]
        assert http_host(prefix, LIMIT) == HostResult(complete=False), prefix
    assert http_host(full, LIMIT).host == "example.com"


def test_header_block_over_the_limit() -> None:
    data = req("Host: example.com", "X-Pad: " + "p" * 400)
    assert http_host(data, len(data)).host == "example.com"  # exactly at the limit is fine
    _refused(http_host(data, len(data) - 1), f"no end of HTTP headers within {len(data) - 1} bytes")
    _refused(http_host(data, 256), "no end of HTTP headers within 256 bytes")


def test_unterminated_header_block_at_the_limit() -> None:
    data = b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Pad: " + b"p" * 300
    assert http_host(data[:255], 256) == HostResult(complete=False)
    _refused(http_host(data[:256], 256), "no end of HTTP headers within 256 bytes")
    _refused(http_host(data, 256), "no end of HTTP headers within 256 bytes")


def test_a_complete_refusal_for_lack_of_an_end_stays_the_same() -> None:
    # 16 bytes without CRLF hit the limit: complete.  More bytes cannot settle it differently.
    first = http_host(b"X" * 16, 16)
    _refused(first, "no end of HTTP headers within 16 bytes")
    assert http_host(b"X" * 16 + b"\r\n", 16) == first


# --------------------------------------------------------------------------- Host: properties

_http_like = st.builds(
    lambda method, target, version, headers, tail: (
        f"{method} {target} {version}\r\n".encode() + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + tail),
    st.sampled_from(["GET", "POST", "get", "G3T"]),
    st.sampled_from(["/", "/index.html", "http://example.com/", ""]),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2"]),
    st.lists(st.one_of(
        st.sampled_from([b"Host: example.com", b"Host: [::1]:8080", b"host: 10.0.0.1:80", b"Host:",
                         b"Accept: */*", b"X: \xff", b" folded", b"Host: a\nb"]),
        st.binary(max_size=12).filter(lambda b: b"\r\n" not in b),
    ), max_size=5),
    st.binary(max_size=10),
)


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=64), _http_like), st.integers(min_value=0, max_value=300))
def test_http_host_never_raises(data: bytes, limit: int) -> None:
    result = http_host(data, limit)
    assert isinstance(result, HostResult)
    if result.complete:
        assert (result.host is None) != (result.error is None)
    else:
        assert result.host is None and result.error is None


@settings(max_examples=300)
@given(_http_like, st.binary(max_size=20))
def test_complete_result_is_stable_past_the_header_block(data: bytes, more: bytes) -> None:
    # Every prefix that already gives a complete answer gives the same answer as the whole
    # request, and as the request with further bytes after it.
    whole = http_host(data + more, LIMIT)
    assert whole.complete  # the generated request always holds CRLF CRLF
    for n in range(len(data) + 1):
        partial = http_host(data[:n], LIMIT)
        if partial.complete:
            assert partial == whole, data[:n]


@settings(max_examples=300)
@given(st.binary(max_size=48), st.binary(max_size=16), st.integers(min_value=1, max_value=40))
@example(b"X" * 16, b"\r\n", 16)
def test_complete_means_final(data: bytes, more: bytes, limit: int) -> None:
    # `complete` is documented as "more bytes could no longer settle it": any extension agrees.
    first = http_host(data, limit)
    if first.complete:
        assert http_host(data + more, limit) == first
