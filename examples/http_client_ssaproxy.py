"""Fetch a page over verified TLS, made by the ssaproxy daemon: `python3 http_client_ssaproxy.py HOST PORT [PATH]`."""

import socket
import sys

import ssaproxy

host, port = sys.argv[1], int(sys.argv[2])
path = sys.argv[3] if len(sys.argv) > 3 else "/"
sock = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
sock.connect((host, port))
sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
response = b""
while True:
    chunk = sock.recv(65536)
    if not chunk:
        break
    response += chunk
sock.close()
sys.stdout.write(response.decode("utf-8", "replace"))
