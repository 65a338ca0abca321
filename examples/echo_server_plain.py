"""Answer each client's lines with "echo: <line>": `python3 echo_server_plain.py PORT`."""

import socket
import sys

port = int(sys.argv[1])
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
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
