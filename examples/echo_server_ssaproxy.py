"""Answer each TLS client's lines with "echo: <line>"; the ssaproxy daemon does the TLS:
`python3 echo_server_ssaproxy.py PORT CERT_AND_KEY.pem` (one PEM file: chain, then key)."""

import socket
import sys

import ssaproxy

port = int(sys.argv[1])
server = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
server.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CERTIFICATE_CHAIN, sys.argv[2].encode())
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen()
print("listening", flush=True)
while True:
    conn, (address, client_port) = server.accept()
    print(f"client {address}:{client_port}", flush=True)
    try:
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                stream.write(b"echo: " + line)
                stream.flush()
    except OSError as e:  # one client's reset ends its own connection, never the server
        print(f"client {address}:{client_port}: {e.strerror or e}", flush=True)
