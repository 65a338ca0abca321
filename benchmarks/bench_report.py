"""The benchmark's summary: one table per mode (ssaproxy, stunnel, haproxy and the ratios to
haproxy), the socket API table, a header (machine, versions, date, pinning), as plain text
and, with --markdown, as the block docs/benchmarks.md takes."""

from __future__ import annotations

import statistics
from typing import Any

# (figure key, label, format, which way is better)
ROWS = [
    ("upload_mbps", "bulk upload MB/s (client->backend)", "{:.0f}", "higher"),
    ("download_mbps", "bulk download MB/s (backend->client)", "{:.0f}", "higher"),
    ("upload_mb_per_cpu", "upload MB per proxy CPU-second", "{:.0f}", "higher"),
    ("download_mb_per_cpu", "download MB per proxy CPU-second", "{:.0f}", "higher"),
    ("conn_rate", "new connections/s (full handshake)", "{:.0f}", "higher"),
    ("conn_cpu_us", "proxy CPU per new connection (us)", "{:.0f}", "lower"),
    # handshake variants (bench.HANDSHAKE_VARIANTS) are inserted here
    ("req_cpu_us", "proxy CPU per keep-alive request (us)", "{:.1f}", "lower"),
    ("req_added_p50_us", "latency added per request, p50 (us)", "{:.0f}", "lower"),
    ("req_added_p99_us", "latency added per request, p99 (us)", "{:.0f}", "lower"),
    ("idle_kib", "RSS per idle relayed connection (KiB)", "{:.1f}", "lower"),
]
PROXIES = ("ssaproxy", "stunnel", "haproxy")


def _median(xs: list[float] | None) -> float | None:
    return statistics.median(xs) if xs else None


def figures(bench: Any) -> dict[tuple[str, str, str], float]:
    """Medians over rounds, plus the added latency (proxied minus direct, medians of each)."""
    out = {key: m for key, xs in bench.results.items() if (m := _median(xs)) is not None}
    for q in ("p50", "p99"):
        direct = out.get(("direct", "direct TLS", f"req_{q}_us"))
        if direct is None:
            continue
        for (mode, name, fig), v in list(out.items()):
            if fig == f"req_{q}_us" and mode != "direct":
                out[(mode, name, f"req_added_{q}_us")] = v - direct
    return out


def rows(variants: list[str]) -> list[tuple[str, str, str, str]]:
    out = list(ROWS)
    at = [r[0] for r in out].index("conn_cpu_us") + 1
    for v in reversed(variants):
        out[at:at] = [(f"conn_{v}_rate", f"new connections/s, {v}", "{:.0f}", "higher"),
                      (f"conn_{v}_cpu_us", f"proxy CPU per new connection, {v} (us)", "{:.0f}", "lower")]
    return out


def _fmt(fmt: str, v: float | None) -> str:
    return "-" if v is None else fmt.format(v)


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0 or a < 0:
        return "-"
    return f"{a / b:.2f}x"


def mode_table(fig: dict, mode: str, variants: list[str]) -> tuple[list[str], list[list[str]]]:
    head = ["figure", "ssaproxy", "stunnel", "haproxy", "ssaproxy / haproxy", "stunnel / haproxy", "better"]
    body = []
    for key, label, fmt, better in rows(variants):
        vals = [fig.get((mode, p, key)) for p in PROXIES]
        if all(v is None for v in vals):
            continue
        body.append([label, *(_fmt(fmt, v) for v in vals), _ratio(vals[0], vals[2]), _ratio(vals[1], vals[2]),
                     better])
    return head, body


def api_table(fig: dict) -> tuple[list[str], list[list[str]]]:
    head = ["figure", "ssaproxy API", "ssaproxy transparent", "haproxy (client mode)", "API / haproxy", "better"]
    body = []
    for key, label, fmt, better in ROWS:
        a, t, h = fig.get(("api", "ssaproxy", key)), fig.get(("client", "ssaproxy", key)), fig.get(
            ("client", "haproxy", key))
        if a is None:
            continue
        body.append([label, _fmt(fmt, a), _fmt(fmt, t), _fmt(fmt, h), _ratio(a, h), better])
    return head, body


def _text(head: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))  # noqa: E731
    return [line(head), "-" * len(line(head)), *(line(r) for r in body)]


def _markdown(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in body)]


TITLES = {
    "client": "Client mode (transparent outbound: plaintext in, verified TLS out)",
    "server": "Server mode (inbound: TLS in, plaintext to the backend)",
    "api": "Socket API (a program using ssaproxy.socket; client mode through the same daemon)",
}
LEGEND = ("Medians over rounds.  Ratios are each proxy / haproxy in the same run: for rates and MB per "
          "CPU-second higher is better, for costs (CPU, latency, memory) lower is better.  MB = 10^6 bytes; "
          "latency added = proxied minus a direct TLS connection to the backend.")


def blocks(bench: Any, render: Any) -> list[str]:
    fig = figures(bench)
    variants = list(bench.variant_names)
    out: list[str] = []
    for mode in bench.modes:
        head, body = api_table(fig) if mode == "api" else mode_table(fig, mode, variants)
        out += ["", TITLES[mode] + ":" if render is _text else f"**{TITLES[mode]}**", "", *render(head, body)]
    d = {k: fig.get(("direct", "direct TLS", k)) for k in ("upload_mbps", "download_mbps", "req_p50_us",
                                                           "req_p99_us", "conn_rate")}
    out += ["", "Direct TLS to the backend (baseline, no proxy): " + ", ".join(
        f"{k} {_fmt('{:.0f}', v)}" for k, v in d.items())]
    return out


def report(bench: Any) -> None:
    def p(s: str = "") -> None:
        print(s, flush=True)

    p("")
    p("=" * 100)
    for k, v in bench.info.items():
        if k not in ("backend totals", "ssaproxy outcomes"):
            p(f"{k}: {v}")
    p(LEGEND)
    for line in blocks(bench, _text):
        p(line)
    p("")
    p("All rounds:")
    for (mode, name, key), xs in sorted(bench.results.items()):
        p(f"  {mode:<7}{name:<11}{key:<22}" + "  ".join(f"{x:.1f}" for x in xs))
    p("Health:")
    p(f"  ssaproxy connection outcomes (its logs): {bench.info.get('ssaproxy outcomes')}")
    p(f"  backend totals: {bench.info.get('backend totals')}")
    bad = [c for c in bench.checks if c["sent"] != c["counted"]]
    p(f"  byte counts: {len(bench.checks) - len(bad)} of {len(bench.checks)} transfers counted exactly the bytes sent")
    for note in bench.notes:
        p(f"  NOTE: {note}")
    if bench.args.markdown:
        p("")
        p("----- markdown for docs/benchmarks.md -----")
        for k in ("date", "commit", "note", "machine", "versions", "pinning", "ssaproxy workers", "size"):
            p(f"- {k}: {bench.info.get(k)}")
        p("")
        p(LEGEND)
        for line in blocks(bench, _markdown):
            p(line)
        p("----- end -----")
