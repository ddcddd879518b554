"""The HTTP server under ``serve``: uvicorn (httptools parser, uvloop) with what a service on a
network needs and uvicorn 0.55 lacks.

- Shutdown that answers every request the kernel accepted before SIGTERM: connections still in the
  listening socket's backlog are taken in before it closes (closing it resets them), and a
  connection is closed as idle only once it has no request in progress, none half-read and no
  bytes waiting in the kernel (with one inference stream on the event loop's thread, a request's
  bytes can sit unread for a whole batch).
- A deadline for a request's head (a slowloris trickling headers held a connection for ever) and a
  bound on its size.
- A connection limit per worker: past it the oldest idle keep-alive connection is closed, or, with
  none idle, the new one gets a 503.
- Its own accept loop, up to 256 connections a turn of the event loop: uvloop accepts one a turn,
  and a turn lasts a whole batch where the batch runs on the loop's thread.

This leans on uvicorn's internals (``HttpToolsProtocol``'s parser callbacks, ``cycle``,
``server_state``; ``Server``'s ``lifespan``, ``startup``, ``shutdown``), read from uvicorn 0.55:
the serve extra's uvicorn range is what was tested.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import socket
import struct
import termios
from collections import OrderedDict

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

try:  # the serve extra's JSON writer: on a service of a small model the json module's time shows
    from orjson import dumps
except ImportError:
    def dumps(content) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


log = logging.getLogger("squeezenet")

MAX_HEAD_BYTES = 64 * 1024  # a request line and headers past this get 431 (nginx allows 4 x 8 KiB lines)
MAX_LINGERING = 256  # refused connections kept open a moment to read the refusal; past this, closed at once
LINGER_S = 1.0
NEW_CONNECTION_GRACE_S = 1.0  # at shutdown, a connection with no request yet is kept this long after it opened
ACCEPT_BATCH = 256  # connections taken in per turn of the event loop


def unread(transport) -> int:
    """Bytes the kernel holds for a connection that it has not been read yet (FIONREAD)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0


class Guard:
    """What the connections of one worker share: the limits, the idle keep-alive connections oldest
    first, and ``event(name)``, called on each connection closed or refused by a limit (metrics)."""

    def __init__(self, max_connections: int, head_timeout: float, event=None):
        self.max_connections, self.head_timeout = max_connections, head_timeout
        self.event = event or (lambda name: None)
        self.idle: OrderedDict[Protocol, None] = OrderedDict()
        self.lingering = 0
        self.stopping = False

    def evict(self) -> bool:
        """Closes the connection idle longest, where one is; whether one was."""
        while self.idle:
            conn, _ = self.idle.popitem(last=False)
            if conn.transport.is_closing() or unread(conn.transport):  # a request waits in it: not idle
                continue
            conn.transport.close()
            self.event("idle_evicted")
            return True
        return False


def response(status: int, message: str, headers: tuple = ()) -> bytes:
    """A whole JSON error response that closes the connection, for the protocol to write itself."""
    body = dumps({"error": message, "status": status})
    head = [STATUS_LINE[status], b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body), b"connection: close\r\n"]
    head += [name + b": " + value + b"\r\n" for name, value in headers]
    return b"".join(head) + b"\r\n" + body


class Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size bound on each request's head, the
    connection limit, JSON for the errors it answers itself, and a shutdown that waits for the
    requests already sent."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.guard: Guard = self.server_state.guard
        self.head_timer = None
        self.head_bytes = -1  # bytes of the request head being read; -1 between requests
        self.head_started = 0.0
        self.refused = self.lingers = False
        self.opened = self.loop.time()
        self.answered = 0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        guard = self.guard
        if len(self.connections) > guard.max_connections and not guard.evict():
            self.connections.discard(self)
            self._refuse()
            return
        self._arm_head_timer()

    def _refuse(self) -> None:
        """A 503 for a connection over the limit; kept open a moment (reading and discarding) so that
        a client sending its request meanwhile reads the answer rather than a reset."""
        self.refused = True
        self.guard.event("connection_limit")
        self.transport.write(response(503, f"this server is at its limit of {self.guard.max_connections:,} "
                                           f"connections per worker: try again", ((b"retry-after", b"1"),)))
        if self.guard.lingering >= MAX_LINGERING or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.guard.lingering += 1
        self.lingers = True
        self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        self.guard.idle.pop(self, None)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()
        except httptools.HttpParserError as e:  # the callback errors below are these too
            too_big = self.head_bytes > MAX_HEAD_BYTES
            self._error(431 if too_big else 400, f"the request's line and headers are over {MAX_HEAD_BYTES:,} bytes"
                        if too_big else f"not an HTTP/1.1 request ({str(e)[:100]})")

    def _error(self, status: int, message: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(response(status, message))
            self.transport.close()

    def _arm_head_timer(self) -> None:
        if self.head_timer is None:
            self.head_started = self.loop.time()
            self.head_timer = self.loop.call_later(self.guard.head_timeout, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timeout(self) -> None:
        self.head_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        late = self.loop.time() - self.head_started - self.guard.head_timeout
        if unread(self.transport) and late < self.guard.head_timeout:
            # its bytes are in but unread (the loop was busy with a batch): read them first
            self.head_timer = self.loop.call_later(0.1, self._head_timeout)
            return
        self.guard.event("head_timeout")
        if self.head_bytes >= 0:
            self._error(408, f"the request's headers did not arrive within {self.guard.head_timeout:g} s")
        else:  # nothing sent: closed without a word, as nginx does
            self.transport.close()

    # parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_bytes = 0
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_head(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > MAX_HEAD_BYTES:
            raise ValueError("head too large")  # httptools raises HttpParserCallbackError from feed_data

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self.head_bytes = -1
        super().on_headers_complete()
        if self.guard.stopping and self.cycle is not None:
            self.cycle.keep_alive = False  # the last request on this connection: said in its answer

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.answered += 1
        if not self.transport.is_closing() and not self.pipeline and self.head_bytes < 0:
            self.guard.idle[self] = None

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        self.guard.idle.pop(self, None)
        if self.refused:
            self.guard.lingering -= self.lingers
            self.parser = None
            return
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """Called at shutdown, again and again until the connection is gone: a request in progress
        is answered with ``connection: close``; a connection with nothing to answer is closed once
        it has no bytes waiting (they may be a request sent before the signal) and, where it has
        had no request yet, once it is past a short grace for the request on its way."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            return
        if self.transport.is_closing() or self.head_bytes >= 0 or unread(self.transport):
            return
        if not self.answered and self.loop.time() - self.opened < NEW_CONNECTION_GRACE_S:
            return
        self.transport.close()


def accept_waiting(sock, limit: int | None = None) -> list:
    """Up to ``limit`` of the connections the kernel accepted on a listening socket and nobody
    took yet; ``OSError`` where it cannot take one (out of file descriptors, say)."""
    accepted = []
    while limit is None or len(accepted) < limit:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            break
        except (ConnectionAbortedError, PermissionError):  # gone before it was taken; a firewall's refusal
            continue
        except OSError:
            if accepted:
                break
            raise
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # answers go out whole, at once
        accepted.append(conn)
    return accepted


class Server(uvicorn.Server):
    """uvicorn's server with the ``Guard`` above, accepting connections itself (uvloop takes one
    per turn of the event loop, and with a batch running on the loop's thread a turn lasts the
    batch: new connections waited in the backlog for tens of seconds under load), and a shutdown
    that answers every request whose connection the kernel accepted before the signal."""

    def __init__(self, config: uvicorn.Config, guard: Guard):
        super().__init__(config)
        self.server_state.guard = guard
        self.listening: list = []

    def protocol(self):  # as uvicorn's startup builds each connection's
        return self.config.http_protocol_class(config=self.config, server_state=self.server_state,
                                               app_state=self.lifespan.state, _loop=asyncio.get_running_loop())

    async def startup(self, sockets=None) -> None:
        """uvicorn's startup for listening sockets passed in, with this server's accept loop."""
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            raise SystemExit(3)  # uvicorn's STARTUP_FAILURE: the app's startup failed, said in the log
        loop = asyncio.get_running_loop()
        self.servers = []
        for sock in sockets or []:
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._accept, sock)
            self.listening.append(sock)
        self.started = True

    def _accept(self, sock) -> None:
        """The connections waiting, ACCEPT_BATCH at most a turn, each to uvicorn's protocol."""
        loop = asyncio.get_running_loop()
        try:
            conns = accept_waiting(sock, ACCEPT_BATCH)
        except OSError as e:  # out of file descriptors: the kernel keeps them waiting; try again shortly
            log.warning(f"cannot accept connections: {e}")
            loop.remove_reader(sock.fileno())
            loop.call_later(0.5, lambda: sock.fileno() >= 0 and loop.add_reader(sock.fileno(), self._accept, sock))
            return
        for conn in conns:
            loop.create_task(self._connect(conn))

    async def _connect(self, conn) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(self.protocol, conn)
        except OSError:
            conn.close()

    async def shutdown(self, sockets=None) -> None:
        loop, state, config = asyncio.get_running_loop(), self.server_state, self.config
        state.guard.stopping = True
        waiting = []
        for sock in self.listening:
            loop.remove_reader(sock.fileno())
            try:
                waiting += accept_waiting(sock)
            except OSError as e:  # these stay with the kernel, which resets them
                log.warning(f"at shutdown, could not take in the connections waiting: {e}")
            sock.close()
        for conn in waiting:
            await self._connect(conn)
        deadline = loop.time() + config.timeout_graceful_shutdown
        while (state.connections or state.tasks) and not self.force_exit and loop.time() < deadline:
            for connection in list(state.connections):
                connection.shutdown()
            await asyncio.sleep(0.02)
        if state.connections or state.tasks:
            log.error(f"{len(state.tasks)} request(s) still unanswered {config.timeout_graceful_shutdown:g} s after "
                      f"the signal: cancelled")
            for task in state.tasks:
                task.cancel(msg="still running when the shutdown's time ran out")
            for connection in list(state.connections):
                connection.transport.close()
        if not self.force_exit:
            await self.lifespan.shutdown()
