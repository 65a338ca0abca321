"""twistd plugin: `twistd ssaproxy`.  There is deliberately no __init__.py beside it."""

from twisted.application.service import ServiceMaker

ssaproxy = ServiceMaker(
    "ssaproxy",
    "ssaproxy.tap",
    "TLS as a system service: transparent outbound upgrade to verified TLS",
    "ssaproxy",
)
