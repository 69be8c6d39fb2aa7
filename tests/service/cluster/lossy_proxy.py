"""A TCP proxy in front of a real Redis that loses the traffic of one command on demand:
the request (it never reaches Redis) or the reply (Redis ran it; the caller never hears),
closing the connection either way, as a network failure would."""

from __future__ import annotations

import contextlib
import socket
import threading

from support import port_open


class LossyProxy:
    """Listens on the first free port of ``ports`` and relays to ``upstream`` (host, port).
    ``lose(n, what, where)``: the next ``n`` commands whose request bytes
    hold ``what`` lose their ``where`` ("request" or "reply"). ``lost`` counts them."""

    def __init__(self, upstream: tuple[str, int], ports: range) -> None:
        self.upstream = upstream
        self.port = next(p for p in ports if not port_open("127.0.0.1", p))
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._lock = threading.Lock()
        self._left, self._what, self._where = 0, b"", "reply"
        self.lost = 0
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def lose(self, n: int, what: bytes, where: str) -> None:
        assert where in ("request", "reply")
        with self._lock:
            self._left, self._what, self._where = n, what, where

    def heal(self) -> None:
        self.lose(0, b"", "reply")

    def _take(self, data: bytes, where: str) -> bool:
        """Whether this request's ``where`` is to be lost (counted)."""
        with self._lock:
            if self._left == 0 or self._where != where or self._what not in data:
                return False
            self._left -= 1
            self.lost += 1
            return True

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            doomed = threading.Event()  # the reply to what was just sent is to be lost
            self._socks += [client, server]
            threading.Thread(target=self._up, args=(client, server, doomed), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, doomed), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, doomed: threading.Event) -> None:
        while data := _recv(client):
            if self._take(data, "request"):
                break
            if self._take(data, "reply"):
                doomed.set()
            server.sendall(data)
        _close(client, server)

    def _down(self, server: socket.socket, client: socket.socket, doomed: threading.Event) -> None:
        while (data := _recv(server)) and not doomed.is_set():
            client.sendall(data)
        _close(client, server)

    def close(self) -> None:
        self._server.close()
        for s in self._socks:
            _close(s)


def _recv(s: socket.socket) -> bytes:
    try:
        return s.recv(65536)
    except OSError:
        return b""


def _close(*socks: socket.socket) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()
