"""The admin endpoint: metrics, health, readiness and status over HTTP on `[admin] listen`,
and the `ssaproxy status` command that reads it.  Wiring-level: it may look at every face's
live connections, but nothing below it imports it."""
