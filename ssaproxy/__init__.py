"""ssaproxy: TLS as a system service, in user space."""

__version__ = "0.1.0"
