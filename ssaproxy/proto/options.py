"""The SSA's constants and option table, shared by the daemon and the client library.

Numbers follow the Secure Socket API (IPPROTO_TLS = 205 is 715 % 255, options 85-113,
AF_HOSTNAME = 43, TCP_UPGRADE_TLS = 33).  Where its two generations disagree (85/86), the
choice is recorded in docs/api.md's compatibility table.  An option marked `unsupported`
answers ENOPROTOOPT in both directions: never a silent no-op.  Standard library only: the
client library imports this into programs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

IPPROTO_TLS = 205
AF_HOSTNAME = 43
SOL_TCP = 6
TCP_UPGRADE_TLS = 33

TLS_REMOTE_HOSTNAME = 85
TLS_HOSTNAME = 85  # the second generation's name for 85
TLS_SERVER_NAME = 86  # the first generation's TLS_HOSTNAME; here: the SNI name (read only)
TLS_TRUSTED_PEER_CERTIFICATES = 87
TLS_CERTIFICATE_CHAIN = 88
TLS_PRIVATE_KEY = 89
TLS_ALPN = 90
TLS_SESSION_TTL = 91
TLS_DISABLE_CIPHER = 92
TLS_PEER_IDENTITY = 93
TLS_REQUEST_PEER_AUTH = 94
TLS_PEER_CERTIFICATE_CHAIN = 95
TLS_ID = 96
TLS_TRUSTED_CIPHERS = 97
TLS_CHOSEN_CIPHER = 98
TLS_ERROR = 100
TLS_REVOCATION_CHECKS = 102
TLS_OCSP_STAPLED_CHECKS = 103
TLS_OCSP_CHECKS = 104
TLS_CRL_CHECKS = 105
TLS_CACHED_REV_CHECKS = 106
TLS_CONTEXT = 107
TLS_SESSION_REUSE = 108
TLS_RESUMED_SESSION = 109
TLS_ENABLE_CIPHER = 110
TLS_VERSION_MIN = 111
TLS_VERSION_MAX = 112
TLS_VERSION_CONN = 113
TLS_TRUSTED_PEER_CERTIFICATES_ONLY = 120  # ours: replaces the policy's anchors (87 adds to them)
TLS_ALLOW_RAGGED_EOF = 121  # ours: a peer's FIN without close_notify reads as EOF, not ECONNRESET

TLS_COMPRESSION = 101  # SSA: never supported here (ENOPROTOOPT): compression is CRIME's door
TLS_SERVER_OCSP_STAPLING = 122  # SSA: the daemon's inbound listeners staple; a program's cannot (ENOPROTOOPT)

# SSA's second-generation names for the same numbers (aliases: one option, two spellings).
TLS_CHOSEN_VERSION = TLS_VERSION_CONN
TLS_CACHE_REVOCATION = TLS_CACHED_REV_CHECKS

# Values of the version options: the TLS wire versions.
TLS1_2_VERSION = 0x0303
TLS1_3_VERSION = 0x0304
# SSA's names for the version values, with the TLS wire numbers as values.  SSA's own header
# numbers them 0-3 (TLS_1_0 ... TLS_1_3); the daemon takes those too (SSA_ORDINAL_VERSIONS: 0 and
# 1 are EPERM like 0x0301/0x0302), so a program built against either header gets what it names.
TLS_1_2 = TLS1_2_VERSION
TLS_1_3 = TLS1_3_VERSION
SSA_ORDINAL_VERSIONS = {0: 0x0301, 1: 0x0302, 2: TLS1_2_VERSION, 3: TLS1_3_VERSION}
VERSION_NAMES = {TLS1_2_VERSION: "TLSv1.2", TLS1_3_VERSION: "TLSv1.3"}
VERSION_NUMBERS = {name: number for number, name in VERSION_NAMES.items()}
LEGACY_VERSIONS = {0x0301: "TLSv1", 0x0302: "TLSv1.1"}  # known, and below any policy we allow

TEXT, INT, PEM = "text", "int", "pem"


@dataclass(frozen=True)
class Option:
    number: int
    name: str
    kind: str  # TEXT, INT or PEM: how the value travels (PEM: bytes, read by the library)
    settable: bool = False
    gettable: bool = False
    connected_only: bool = False  # a get before the handshake answers ENOTCONN
    unsupported: Optional[str] = None  # why it answers ENOPROTOOPT


_TABLE = [
    Option(TLS_REMOTE_HOSTNAME, "TLS_REMOTE_HOSTNAME", TEXT, settable=True, gettable=True),
    Option(TLS_SERVER_NAME, "TLS_SERVER_NAME", TEXT, gettable=True, connected_only=True),
    Option(TLS_TRUSTED_PEER_CERTIFICATES, "TLS_TRUSTED_PEER_CERTIFICATES", PEM, settable=True),
    Option(TLS_CERTIFICATE_CHAIN, "TLS_CERTIFICATE_CHAIN", PEM, settable=True),
    Option(TLS_PRIVATE_KEY, "TLS_PRIVATE_KEY", PEM, settable=True),
    Option(TLS_ALPN, "TLS_ALPN", TEXT, settable=True, gettable=True),
    Option(TLS_SESSION_TTL, "TLS_SESSION_TTL", INT, unsupported="no session cache yet"),
    Option(TLS_DISABLE_CIPHER, "TLS_DISABLE_CIPHER", TEXT, settable=True),
    Option(TLS_PEER_IDENTITY, "TLS_PEER_IDENTITY", TEXT, gettable=True, connected_only=True),
    Option(TLS_REQUEST_PEER_AUTH, "TLS_REQUEST_PEER_AUTH", INT, settable=True, gettable=True),
    Option(TLS_PEER_CERTIFICATE_CHAIN, "TLS_PEER_CERTIFICATE_CHAIN", PEM, gettable=True, connected_only=True),
    Option(TLS_ID, "TLS_ID", INT, unsupported="the SSA's internal socket id has no meaning here"),
    Option(TLS_TRUSTED_CIPHERS, "TLS_TRUSTED_CIPHERS", TEXT, settable=True, gettable=True),
    Option(TLS_CHOSEN_CIPHER, "TLS_CHOSEN_CIPHER", TEXT, gettable=True, connected_only=True),
    Option(TLS_ERROR, "TLS_ERROR", TEXT, gettable=True),
    Option(TLS_COMPRESSION, "TLS_COMPRESSION", INT, unsupported="TLS compression is never used"),
    Option(TLS_REVOCATION_CHECKS, "TLS_REVOCATION_CHECKS", INT, settable=True, gettable=True),
    Option(TLS_OCSP_STAPLED_CHECKS, "TLS_OCSP_STAPLED_CHECKS", INT, settable=True, gettable=True),
    Option(TLS_OCSP_CHECKS, "TLS_OCSP_CHECKS", INT, settable=True, gettable=True),
    Option(TLS_CRL_CHECKS, "TLS_CRL_CHECKS", INT, settable=True, gettable=True),
    Option(TLS_CACHED_REV_CHECKS, "TLS_CACHED_REV_CHECKS", INT, settable=True, gettable=True),
    Option(TLS_CONTEXT, "TLS_CONTEXT", INT, settable=True, gettable=True),
    Option(TLS_SESSION_REUSE, "TLS_SESSION_REUSE", INT, settable=True, gettable=True),
    Option(TLS_RESUMED_SESSION, "TLS_RESUMED_SESSION", INT, gettable=True, connected_only=True),
    Option(TLS_ENABLE_CIPHER, "TLS_ENABLE_CIPHER", TEXT, settable=True),
    Option(TLS_VERSION_MIN, "TLS_VERSION_MIN", INT, settable=True, gettable=True),
    Option(TLS_VERSION_MAX, "TLS_VERSION_MAX", INT, settable=True, gettable=True),
    Option(TLS_VERSION_CONN, "TLS_VERSION_CONN", INT, gettable=True, connected_only=True),
    Option(TLS_TRUSTED_PEER_CERTIFICATES_ONLY, "TLS_TRUSTED_PEER_CERTIFICATES_ONLY", PEM, settable=True),
    Option(TLS_ALLOW_RAGGED_EOF, "TLS_ALLOW_RAGGED_EOF", INT, settable=True, gettable=True),
    Option(TLS_SERVER_OCSP_STAPLING, "TLS_SERVER_OCSP_STAPLING", INT,
           unsupported="stapling is for the daemon's inbound listeners ([[inbound]] ocsp_stapling)"),
]
OPTIONS: dict[int, Option] = {o.number: o for o in _TABLE}
# Reported in ESTABLISHED / ACCEPTED, so that a connected socket answers them without a
# round trip (its stream carries plaintext from then on).
INFO_OPTIONS = (TLS_REMOTE_HOSTNAME, TLS_SERVER_NAME, TLS_ALPN, TLS_PEER_IDENTITY, TLS_REQUEST_PEER_AUTH,
                TLS_PEER_CERTIFICATE_CHAIN, TLS_TRUSTED_CIPHERS, TLS_CHOSEN_CIPHER, TLS_RESUMED_SESSION,
                TLS_VERSION_MIN, TLS_VERSION_MAX, TLS_VERSION_CONN, TLS_SESSION_REUSE)

# Revocation (102-106): the SSA's on/off switches.  A program may turn checking on (or, with
# TLS_REVOCATION_CHECKS = 2, make it hard-fail), never off where the admin's policy has it on.
REVOCATION_OPTIONS = (TLS_REVOCATION_CHECKS, TLS_OCSP_STAPLED_CHECKS, TLS_OCSP_CHECKS, TLS_CRL_CHECKS,
                      TLS_CACHED_REV_CHECKS)

_INT = struct.Struct("!i")


def pack_int(value: int) -> bytes:
    return _INT.pack(value)


def unpack_int(raw: bytes) -> int:
    if len(raw) != _INT.size:
        raise ValueError(f"an integer option needs {_INT.size} bytes, got {len(raw)}")
    return int(_INT.unpack(raw)[0])

# Spelled out, so that type checkers see what `from ssaproxy import *` gives (a test keeps it complete).
__all__ = [
    "AF_HOSTNAME", "IPPROTO_TLS", "SOL_TCP", "TCP_UPGRADE_TLS", "TLS1_2_VERSION", "TLS1_3_VERSION", "TLS_ALPN",
    "TLS_1_2", "TLS_1_3", "TLS_ALLOW_RAGGED_EOF", "TLS_CACHE_REVOCATION", "TLS_CHOSEN_VERSION",
    "TLS_COMPRESSION", "TLS_SERVER_OCSP_STAPLING", "TLS_TRUSTED_PEER_CERTIFICATES_ONLY",
    "TLS_CACHED_REV_CHECKS", "TLS_CERTIFICATE_CHAIN", "TLS_CHOSEN_CIPHER", "TLS_CONTEXT", "TLS_CRL_CHECKS",
    "TLS_DISABLE_CIPHER", "TLS_ENABLE_CIPHER", "TLS_ERROR", "TLS_HOSTNAME", "TLS_ID", "TLS_OCSP_CHECKS",
    "TLS_OCSP_STAPLED_CHECKS", "TLS_PEER_CERTIFICATE_CHAIN", "TLS_PEER_IDENTITY", "TLS_PRIVATE_KEY",
    "TLS_REMOTE_HOSTNAME", "TLS_REQUEST_PEER_AUTH", "TLS_RESUMED_SESSION", "TLS_REVOCATION_CHECKS",
    "TLS_SERVER_NAME", "TLS_SESSION_REUSE", "TLS_SESSION_TTL", "TLS_TRUSTED_CIPHERS",
    "TLS_TRUSTED_PEER_CERTIFICATES", "TLS_VERSION_CONN", "TLS_VERSION_MAX", "TLS_VERSION_MIN", "VERSION_NAMES",
    "VERSION_NUMBERS",
]
