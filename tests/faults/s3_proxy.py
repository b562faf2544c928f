"""A fault-injecting HTTP proxy in front of the embedded S3 server: throttling, resets, outages, held requests."""

from __future__ import annotations

import http.client
import random
import socket
import socketserver
import struct
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from tagging_platform.embedded import free_port

_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>fault-proxy</RequestId></Error>"
)
# Hop-by-hop headers, and Expect: this proxy already answered 100-continue to the client.
_NOT_FORWARDED = {"connection", "keep-alive", "proxy-connection", "expect", "upgrade"}


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST, as from a load balancer that drops the connection."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


class S3FaultProxy:
    """Forwards every request to the upstream S3 server, except a configurable share of the chosen methods,
    which get `503 SlowDown` or a connection reset (before the upstream saw the request, or after it
    handled it and before the client saw the answer). `outage()` stops listening altogether (connection
    refused) and resets the connections already open; `hold()` parks matching requests until released.

    Fault decisions come from a seeded random generator, so a run injects a reproducible share.
    """

    def __init__(self, upstream_port: int, *, seed: int = 6) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.slowdown_share = 0.0
        self.reset_share = 0.0
        self.methods = frozenset({"GET", "PUT"})
        self._only: Callable[[str, str], bool] | None = None
        self.injected: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._down = threading.Event()
        self._clients: set[socket.socket] = set()
        self._holds: list[tuple[Callable[[str, str], bool], threading.Event, threading.Event]] = []
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> S3FaultProxy:
        proxy = self

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        class Handler(_Handler):
            owner = proxy

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._drop_clients()

    def outage(self) -> None:
        """From now on the S3 endpoint refuses connections, and every open connection is reset."""
        self._down.set()
        self.stop()

    def restore(self) -> None:
        self._down.clear()
        self.start()

    # --- faults ----------------------------------------------------------------------------------------

    def faults(
        self,
        *,
        slowdown: float = 0.0,
        reset: float = 0.0,
        methods=("GET", "PUT"),
        only: Callable[[str, str], bool] | None = None,
    ) -> None:
        """Fault these shares of the requests with these methods (and, with `only`, for which it is true)."""
        with self._lock:
            self.slowdown_share, self.reset_share, self.methods = slowdown, reset, frozenset(methods)
            self._only = only

    def hold(self, matches: Callable[[str, str], bool]) -> tuple[threading.Event, threading.Event]:
        """Park the requests for which `matches(method, path)` is true; returns (reached, release)."""
        reached, release = threading.Event(), threading.Event()
        with self._lock:
            self._holds.append((matches, reached, release))
        return reached, release

    def release_all(self) -> None:
        with self._lock:
            holds, self._holds = self._holds, []
        for _, _, release in holds:
            release.set()

    @property
    def is_down(self) -> bool:
        return self._down.is_set()

    def count(self, fault: str) -> None:
        with self._lock:
            self.injected[fault] += 1

    def _decide(self, method: str, path: str) -> str | None:
        with self._lock:
            if method not in self.methods or (self._only is not None and not self._only(method, path)):
                return None
            draw = self._random.random()
            if draw < self.slowdown_share:
                return "slowdown"
            if draw < self.slowdown_share + self.reset_share:
                return "reset_before" if self._random.random() < 0.5 else "reset_after"
            return None

    def _wait_if_held(self, method: str, path: str) -> None:
        with self._lock:
            waits = [(reached, release) for matches, reached, release in self._holds if matches(method, path)]
        for reached, release in waits:
            reached.set()
            release.wait(timeout=600)

    def _drop_clients(self) -> None:
        with self._lock:
            clients, self._clients = set(self._clients), set()
        for sock in clients:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)  # wakes the handler blocked on it; its close then resets
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    owner: S3FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._clients.add(self.connection)
        self._upstream: http.client.HTTPConnection | None = None

    def finish(self) -> None:
        with self.owner._lock:
            self.owner._clients.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass  # the connection was reset on purpose
        if self._upstream is not None:
            self._upstream.close()

    def log_message(self, format: str, *args) -> None:
        pass  # thousands of requests per test; the counters say what happened

    def do_GET(self) -> None:
        self._proxy()

    do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

    def _proxy(self) -> None:
        owner = self.owner
        body = self._read_body()
        if owner._down.is_set():
            return self._drop("refused")
        fault = owner._decide(self.command, self.path)
        if fault == "slowdown":
            owner.count("slowdown")
            self.send_response(503, "Slow Down")
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(_SLOW_DOWN)))
            self.end_headers()
            self.wfile.write(_SLOW_DOWN)
            return
        if fault == "reset_before":
            return self._drop("reset_before")
        owner._wait_if_held(self.command, self.path)
        if owner._down.is_set():
            return self._drop("refused")  # the outage began while this request was held
        try:
            status, reason, headers, data = self._forward(body)
        except (http.client.HTTPException, OSError):
            # The upstream closed a kept-alive connection between two requests: once more on a new one.
            self._upstream = None
            status, reason, headers, data = self._forward(body)
        if fault == "reset_after":
            return self._drop("reset_after")
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() not in _NOT_FORWARDED and name.lower() not in ("transfer-encoding", "content-length"):
                self.send_header(name, value)
        length = {k.lower(): v for k, v in headers}.get("content-length", "0")
        self.send_header("Content-Length", length if self.command == "HEAD" else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _drop(self, kind: str) -> None:
        self.owner.count(kind)
        self.close_connection = True
        _reset(self.connection)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raw = bytearray()  # forwarded as it came, chunk framing included
            while True:
                line = self.rfile.readline()
                raw += line
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:
                        trailer = self.rfile.readline()
                        raw += trailer
                        if trailer in (b"\r\n", b"\n", b""):
                            return bytes(raw)
                raw += self.rfile.read(size + 2)
        return self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        if self._upstream is None:
            self._upstream = http.client.HTTPConnection("127.0.0.1", self.owner.upstream_port, timeout=120)
        upstream = self._upstream
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            if name.lower() not in _NOT_FORWARDED:
                upstream.putheader(name, value)
        upstream.endheaders(body or None)
        response = upstream.getresponse()
        data = response.read()
        if response.will_close:
            upstream.close()
            self._upstream = None
        return response.status, response.reason, response.getheaders(), data
