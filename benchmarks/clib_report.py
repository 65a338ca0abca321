"""benchmarks/clib.py's summary: one table, a column per client and the ratios between them,
as plain text and, with --markdown, as the block docs/benchmarks.md takes."""

from __future__ import annotations

import statistics
from typing import Any

from bench_report import _markdown, _ratio, _text

CLIENTS = ("C libssaproxy", "C OpenSSL", "Python ssaproxy.socket", "Python ssl")
# (figure, label, format, which way is better)
ROWS = [
    ("connect_p50_us", "connect + handshake, p50 (us wall)", "{:.0f}", "lower"),
    ("connect_p99_us", "connect + handshake, p99 (us wall)", "{:.0f}", "lower"),
    ("cycle_p50_us", "whole connection, p50 (us wall; + PING/PONG, end)", "{:.0f}", "lower"),
    ("client_cpu_us", "client CPU per connection (us)", "{:.0f}", "lower"),
    ("daemon_cpu_us", "daemon CPU per connection (us)", "{:.0f}", "lower"),
    ("total_cpu_us", "client + daemon CPU per connection (us)", "{:.0f}", "lower"),
    ("download_mbps", "bulk download MB/s (backend->client)", "{:.0f}", "higher"),
    ("upload_mbps", "bulk upload MB/s (client->backend)", "{:.0f}", "higher"),
    ("download_mb_per_cpu", "download MB per CPU-second (client + daemon)", "{:.0f}", "higher"),
    ("upload_mb_per_cpu", "upload MB per CPU-second (client + daemon)", "{:.0f}", "higher"),
]
RATIOS = [("C lib / C OpenSSL", "C libssaproxy", "C OpenSSL"),
          ("Py lib / C OpenSSL", "Python ssaproxy.socket", "C OpenSSL"),
          ("C lib / Py lib", "C libssaproxy", "Python ssaproxy.socket"),
          ("Py lib / Py ssl", "Python ssaproxy.socket", "Python ssl")]


def log(msg: str = "") -> None:
    print(msg, flush=True)


LEGEND = ("Medians over rounds.  CPU = user + system seconds of the client process (getrusage) and of the "
          "daemon (/proc); the backend's is left out (the same for all).  MB = 10^6 bytes; MB/s over the "
          "client's whole transfer, its connect included.  Ratios: for times and CPU lower is better, for "
          "MB/s and MB per CPU-second higher is better.")


def table(run: Any) -> tuple[list[str], list[list[str]]]:
    fig = {k: statistics.median(v) for k, v in run.results.items() if v}
    head = ["figure", *CLIENTS, *(r[0] for r in RATIOS), "better"]
    body = []
    for key, label, fmt, better in ROWS:
        vals = [fig.get((c, key)) for c in CLIENTS]
        if all(v is None for v in vals):
            continue
        body.append([label, *("-" if v is None else fmt.format(v) for v in vals),
                     *(_ratio(fig.get((a, key)), fig.get((b, key))) for _, a, b in RATIOS), better])
    return head, body


def report(run: Any) -> None:
    log("")
    log("=" * 100)
    for k, v in run.info.items():
        log(f"{k}: {v}")
    log(LEGEND)
    log("")
    head, body = table(run)
    for line in _text(head, body):
        log(line)
    log("")
    log("All rounds:")
    for (name, key), xs in sorted(run.results.items()):
        log(f"  {name:<24}{key:<22}" + "  ".join(f"{x:.1f}" for x in xs))
    bad = [c for c in run.checks if c["sent"] != c["counted"]]
    log(f"byte counts: {len(run.checks) - len(bad)} of {len(run.checks)} transfers counted exactly the bytes sent")
    for note in run.notes:
        log(f"NOTE: {note}")
    if run.args.markdown:
        log("")
        log("----- markdown for docs/benchmarks.md -----")
        for k in ("date", "commit", "note", "machine", "versions", "pinning", "size"):
            log(f"- {k}: {run.info.get(k)}")
        log("")
        log(LEGEND)
        log("")
        for line in _markdown(head, body):
            log(line)
        log("----- end -----")
