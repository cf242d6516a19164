"""A scripted SSE upstream on a raw socket, for streams no HTTP framework would send: it reads one request, answers
200 `text/event-stream`, close-delimited, and lets the test write the body byte for byte (`answer(conn)`)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

Answer = Callable[[socket.socket], None]
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += conn.recv(65536)


def _serve(sock: socket.socket, answer: Answer) -> None:
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with conn:
            _read_request(conn)
            conn.sendall(SSE_HEAD)
            answer(conn)


def start(answer: Answer) -> tuple[socket.socket, str]:
    """Listen on 127.0.0.1; return the socket (close it to stop) and the `api_base` to configure."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    threading.Thread(target=_serve, args=(sock, answer), daemon=True).start()
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
