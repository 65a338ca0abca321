"""ssaproxy: TLS as a system service, in user space.

Programs use the client library from here (standard library only):

    import socket, ssaproxy
    s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
"""

from ssaproxy.client import (
    DEFAULT_SOCKET,
    TLS_UPGRADE_CLIENT,
    TLS_UPGRADE_SERVER,
    Context,
    install,
    socket,
    socket_path,
    uninstall,
    upgrade,
)
from ssaproxy.proto import options
from ssaproxy.proto.options import *  # noqa: F403 - IPPROTO_TLS, TLS_* options, AF_HOSTNAME, ...

__version__ = "0.1.0"

__all__ = ["DEFAULT_SOCKET", "TLS_UPGRADE_CLIENT", "TLS_UPGRADE_SERVER", "Context", "install", "socket",
           "socket_path", "uninstall", "upgrade"]
__all__ += options.__all__
