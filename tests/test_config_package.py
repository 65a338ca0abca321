"""The shape of `ssaproxy.config`: its enums, and the contract that it is a leaf package
(pure, importing nothing of ssaproxy but `ssaproxy.errors` and itself)."""

from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

import pytest

import ssaproxy.config
from ssaproxy.config import (
    ACTIONS,
    HOSTNAME_SOURCES,
    TLS_VERSIONS,
    Action,
    Config,
    HostnameSource,
    Policy,
    Route,
    TLSVersion,
)

PACKAGE = Path(ssaproxy.config.__file__).parent


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every module a file imports, with the nesting depth of the import (0: module level)."""
    found: list[tuple[str, int]] = []

    def walk(node: ast.AST, depth: int) -> None:
        for child in ast.iter_child_nodes(node):
            inner = depth + isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if isinstance(child, ast.Import):
                found.extend((alias.name, depth) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                found.append((child.module, depth))
            walk(child, inner)

    walk(ast.parse(path.read_text()), 0)
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_config_modules_import_only_errors_and_each_other_at_module_level(path: Path) -> None:
    for module, depth in _imports(path):
        assert depth == 0, f"{path.name}: function-level import of {module}"
        if module.split(".")[0] == "ssaproxy":
            assert module == "ssaproxy.errors" or module.startswith("ssaproxy.config"), (path.name, module)
        assert module.split(".")[0] not in ("OpenSSL", "cryptography", "twisted", "grp", "socket"), (path.name, module)


def test_enums_are_strings_so_old_comparisons_keep_working() -> None:
    route = Config.default().outbound.routes[0]
    assert route.action is Action.UPGRADE and route.action == "upgrade"
    assert route.hostname_from is HostnameSource.HTTP_HOST and route.hostname_from == "http-host"
    assert f"{TLSVersion.TLSv1_3}" == "TLSv1.3" and str(Action.REJECT) == "reject"
    assert {"TLSv1.2": 1}[TLSVersion.TLSv1_2] == 1  # hash like the string
    assert (ACTIONS, HOSTNAME_SOURCES, TLS_VERSIONS) == (
        ("upgrade", "passthrough", "reject"), ("http-host", "address", "resolved"), ("TLSv1.2", "TLSv1.3"))
    assert all(type(s) is str for s in ACTIONS + HOSTNAME_SOURCES + TLS_VERSIONS)  # error messages show repr()


def test_values_convert_strings_to_enums() -> None:
    policy = Policy(min_version="TLSv1.3")  # type: ignore[arg-type]
    assert policy.min_version is TLSVersion.TLSv1_3 and policy == Policy(min_version=TLSVersion.TLSv1_3)
    route = Route(name="r", destination=ipaddress.ip_network("10.0.0.0/8"), action="reject")  # type: ignore[arg-type]
    assert route.action is Action.REJECT and route.hostname_from is None
    with pytest.raises(ValueError, match=r"'TLSv1\.1' is not a valid TLSVersion"):
        Policy(min_version="TLSv1.1")  # type: ignore[arg-type]


def test_one_version_order() -> None:
    low, high = TLSVersion.TLSv1_2, TLSVersion.TLSv1_3
    assert low.rank < high.rank and list(TLSVersion) == [low, high]
    assert TLSVersion.highest("TLSv1.2", high) is high and TLSVersion.lowest(high, "TLSv1.2") is low
    assert TLSVersion.span("TLSv1.2", "TLSv1.3") == (low, high)
    assert TLSVersion.span(high, high) == (high,) and TLSVersion.span(high, low) == ()
