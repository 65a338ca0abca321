"""The strict reader: takes known keys out of a parsed TOML table, so that anything left over
is an unknown key, and finds the line a dotted key path stands on.

Errors name the key's dotted path (``outbound.route[1].ports``); `line_of` turns that path back
into a line of the source text, so the parsers never carry line numbers around.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Iterator, Mapping, Optional, Sequence, TypeVar

from ssaproxy.errors import ConfigError

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_KIND_NAMES: dict[type, str] = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
                                list: "an array", dict: "a table"}
_TOML_TYPES: dict[type, str] = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
                                list: "an array", dict: "a table"}


class Reader:
    """Takes keys out of one table, so that whatever is left over is an unknown key."""

    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        self.data = dict(data)
        self.path = path

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def take(self, name: str, kind: type | tuple[type, ...], default: Any = None, what: str = "") -> Any:
        if name not in self.data:
            return default
        value = self.data.pop(name)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; TOML true is never a number here.
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        elif float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok = True
            try:
                value = float(value)
            except OverflowError:
                raise ConfigError(self.key(name), f"number too large: {value}") from None
        else:
            ok = isinstance(value, kinds)
        if not ok:
            raise ConfigError(self.key(name), f"expected {what or _kind_name(kinds)}, got {toml_type(value)}")
        return value

    def table(self, name: str) -> Reader:
        value = self.take(name, dict, {}, "a table")
        return Reader(value, self.key(name))

    def check(self, name: str, ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(self.key(name), message)

    def name(self, default: str) -> str:
        """The table's `name` key: a label for logs and errors (`default` when absent)."""
        name: str = self.take("name", str, default)
        self.check("name", bool(_NAME_RE.fullmatch(name)), "must be 1-64 characters of letters, digits, _ . : -")
        return name

    def one_of(self, name: str, value: T, allowed: Sequence[T]) -> T:
        self.check(name, value in allowed, f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value

    def positive(self, name: str, value: float, limit: float) -> float:
        self.check(name, 0 < value <= limit, f"must be greater than 0 and at most {limit:g}, got {value:g}")
        return value

    def timeout(self, name: str, default: float) -> float:
        """Seconds: greater than 0, at most 300."""
        return self.positive(name, self.take(name, float, default), 300)

    def off_or_positive(self, name: str, default: float, limit: float) -> float:
        """Seconds up to `limit`, or 0 for never."""
        value: float = self.take(name, float, default)
        self.check(name, 0 <= value <= limit, f"must be 0 (never) or seconds up to {limit:g}, got {value:g}")
        return value

    def idle(self, name: str, default: float) -> float:
        """Seconds of silence before a relay is reset: 0 (never) up to a week."""
        value: float = self.take(name, float, default)
        self.check(name, 0 <= value <= 604800, f"must be 0 (off) up to 604800 seconds, got {value:g}")
        return value

    def bounded(self, name: str, default: int, low: int, high: int) -> int:
        value: int = self.take(name, int, default)
        self.check(name, low <= value <= high, f"must be {low}-{high}, got {value}")
        return value

    def network(self, name: str, text: str) -> Network:
        try:
            return ipaddress.ip_network(text, strict=True)
        except ValueError as e:
            raise ConfigError(self.key(name), f"not a CIDR network: {e}") from None

    def port(self, name: str, value: int) -> int:
        self.check(name, 1 <= value <= 65535, f"port must be 1-65535, got {value}")
        return value

    def ports(self, name: str, raw: list[Any]) -> tuple[int, ...]:
        """An array of port numbers (TOML integers, never booleans)."""
        self.check(name, all(isinstance(p, int) and not isinstance(p, bool) for p in raw),
                   "must be an array of integers")
        return tuple(self.port(name, p) for p in raw)

    def tables(self, name: str, what: str) -> Iterator[Reader]:
        """A Reader for each table of the array of tables `name` (keys `name[i]`), in order."""
        for i, raw in enumerate(self.take(name, list, [], what)):
            path = self.key(f"{name}[{i}]")
            if not isinstance(raw, dict):
                raise ConfigError(path, f"expected a table, got {toml_type(raw)}")
            yield Reader(raw, path)

    def done(self) -> None:
        for name in self.data:
            raise ConfigError(self.key(name), "unknown key")


def _kind_name(kinds: Sequence[type]) -> str:
    return " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)


def toml_type(value: object) -> str:
    """How an error names the TOML type of a value it did not expect."""
    return _TOML_TYPES.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------- line numbers

_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY_RE = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def line_of(text: str, key: str) -> Optional[int]:
    """The line of `key` in `text`, or of its closest enclosing key that has a line of its own
    (keys inside inline tables have none)."""
    line = None
    while key and line is None:
        line = _locate(text, key)
        key = key.rpartition(".")[0]
    return line


def _locate(text: str, key: str) -> Optional[int]:
    """Best-effort line of a dotted key path such as ``outbound.route[1].ports``.

    Handles the shapes our config uses ([table], [[array.of.tables]], key = value); falls back to
    the line of the enclosing table header, or None.
    """
    parts: list[tuple[str, str]] = re.findall(r"([A-Za-z0-9_-]+)(?:\[(\d+)\])?", key)
    if not parts:
        return None
    # Split into the table path (everything but the last part) and the leaf key.
    table_parts = parts[:-1]
    leaf, leaf_index = parts[-1]
    want_table = ".".join(p for p, _ in table_parts)
    want_index = next((int(i) for _, i in reversed(table_parts) if i), None)
    seen: dict[str, int] = {}
    current, current_index, header_line = "", None, None
    best: Optional[int] = None
    for lineno, line in enumerate(text.splitlines(), 1):
        h = _HEADER_RE.match(line)
        if h:
            current = h.group(2)
            if h.group(1) == "[[":
                current_index = seen.get(current, 0)
                seen[current] = current_index + 1
            else:
                current_index = None
            if current == want_table and current_index == want_index:
                header_line = lineno
                best = best or lineno
            # A leaf that is itself a table/array-of-tables: [outbound] or [[outbound.route]].
            full = f"{want_table}.{leaf}" if want_table else leaf
            if current == full and (not leaf_index or current_index == int(leaf_index)):
                return lineno
            continue
        k = _KEY_RE.match(line)
        if k and k.group(1) == leaf and current == want_table and current_index == want_index:
            return lineno
    return header_line if header_line is not None else best
