"""PROXY protocol version 2 headers (pure): how an inbound listener tells its backend who the
client really was and what TLS it spoke.

Layout (haproxy's proxy-protocol.txt): the 12-byte signature, version/command 0x21 (v2,
PROXY), family/transport (0x11 TCP over IPv4, 0x21 TCP over IPv6), the length of what follows,
source and destination addresses and ports, then TLVs.  We send:
  0x01 ALPN, 0x02 AUTHORITY (the SNI name), and 0x20 SSL, which holds a client bit field
  (0x01 TLS, 0x02 certificate presented on this connection), a 32-bit verify result (0 means
  verified) and sub-TLVs 0x21 version, 0x22 CN, 0x23 cipher;
  0xE0 (custom) with the client certificate's SANs as "dns:…,uri:…" text, since the standard
  TLVs carry only a CN, which we never use for identity.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Optional

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_TYPE_SSAPROXY_SANS = 0xE0
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
_MAX_SANS = 4096


def tlv(kind: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError("TLV value too long")
    return struct.pack("!BH", kind, len(value)) + value


def v2_header(src: tuple[str, int], dst: tuple[str, int], *, authority: Optional[bytes] = None,
              alpn: Optional[str] = None, tls_version: Optional[str] = None, cipher: Optional[str] = None,
              client_cert: bool = False, client_verified: bool = False, client_cn: Optional[str] = None,
              client_sans: tuple[str, ...] = ()) -> bytes:
    s_ip, d_ip = _ip(src[0]), _ip(dst[0])
    if s_ip.version != d_ip.version:  # e.g. an IPv4-mapped peer on an IPv6 socket: normalized above
        raise ValueError("source and destination of different families")
    if s_ip.version == 4:
        family, addresses = 0x11, s_ip.packed + d_ip.packed + struct.pack("!HH", src[1], dst[1])
    else:
        family, addresses = 0x21, s_ip.packed + d_ip.packed + struct.pack("!HH", src[1], dst[1])
    tlvs = b""
    if alpn:
        tlvs += tlv(PP2_TYPE_ALPN, alpn.encode("ascii"))
    if authority:  # the SNI bytes as the client sent them
        tlvs += tlv(PP2_TYPE_AUTHORITY, authority)
    if tls_version:
        client = PP2_CLIENT_SSL | (PP2_CLIENT_CERT_CONN if client_cert else 0)
        verify = 0 if (client_cert and client_verified) else 1  # 0 only for a verified certificate
        sub = tlv(PP2_SUBTYPE_SSL_VERSION, tls_version.encode("ascii"))
        if cipher:
            sub += tlv(PP2_SUBTYPE_SSL_CIPHER, cipher.encode("ascii"))
        if client_cn:
            sub += tlv(PP2_SUBTYPE_SSL_CN, client_cn.encode("utf-8"))
        tlvs += tlv(PP2_TYPE_SSL, struct.pack("!BI", client, verify) + sub)
    if client_sans:
        sans = ",".join(client_sans).encode("utf-8")
        if len(sans) > _MAX_SANS:  # keep the header bounded: cut at the last whole entry
            sans = sans[:_MAX_SANS].rpartition(b",")[0]
        tlvs += tlv(PP2_TYPE_SSAPROXY_SANS, sans)
    body = addresses + tlvs
    return SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(text.split("%", maxsplit=1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_v2(data: bytes) -> Optional[dict[str, object]]:
    """Decode a v2 header at the start of `data` (for tests and diagnostics): None if
    incomplete; raises ValueError if it is not one."""
    if len(data) < 16:
        return None
    if data[:12] != SIGNATURE or data[12] != 0x21:
        raise ValueError("not a PROXY v2 PROXY header")
    length = struct.unpack("!H", data[14:16])[0]
    if len(data) < 16 + length:
        return None
    body = data[16:16 + length]
    if data[13] == 0x11:
        src = (str(ipaddress.IPv4Address(body[0:4])), struct.unpack("!H", body[8:10])[0])
        dst = (str(ipaddress.IPv4Address(body[4:8])), struct.unpack("!H", body[10:12])[0])
        rest = body[12:]
    elif data[13] == 0x21:
        src = (str(ipaddress.IPv6Address(body[0:16])), struct.unpack("!H", body[32:34])[0])
        dst = (str(ipaddress.IPv6Address(body[16:32])), struct.unpack("!H", body[34:36])[0])
        rest = body[36:]
    else:
        raise ValueError(f"unsupported family/transport 0x{data[13]:02x}")
    return {"src": src, "dst": dst, "tlvs": _tlvs(rest), "length": 16 + length}


def _tlvs(data: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos + 3 <= len(data):
        kind, size = data[pos], struct.unpack("!H", data[pos + 1:pos + 3])[0]
        if pos + 3 + size > len(data):
            raise ValueError("TLV overruns the header")
        out[kind] = data[pos + 3:pos + 3 + size]
        pos += 3 + size
    if pos != len(data):
        raise ValueError("trailing bytes after TLVs")
    return out
