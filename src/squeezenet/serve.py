"""``serve``: an HTTP API for a checkpoint (Starlette on uvicorn), with the web page at ``/``.

    POST /predict   image bytes (Content-Type image/* or application/octet-stream), or
                    multipart/form-data with one or more files; ?top_k=K
    GET  /health    {"status": "ok"}
    GET  /model     architecture, classes, preprocessing, the runtime and why, batching counters
    GET  /metrics   Prometheus' text format: requests by status, latency, batch sizes, queue depth
    GET  /          the page of ``export --format web`` (inference in the browser)

One process per core (``--workers``), each on its own port socket (SO_REUSEPORT) and cores.
Requests that arrive together are batched: while a worker's inference streams are busy, requests
queue, and the next free stream takes them all (up to ``max_batch`` images), waiting for requests still
being read at most ``max_wait_ms``; with nothing else arriving it runs at once. A request with an
undecodable upload gets its 400 alone: it is left out of the batch, and the others run.

Limits, each refusal one JSON error: bodies over ``max_bytes`` get 413 (the rest of the body read
and discarded first, within bounds, so that a client still sending reads it); past ``max_queue``
images waiting, 503 with Retry-After at once; no answer within ``timeout_s``, 504 (and the request
is dropped from its batch); headers or body not in within ``read_timeout_s``, 408; past
``max_connections`` per worker, idle keep-alive connections are closed, else 503 (httpd.py).
With ``api_key``, /predict, /model and /metrics need ``Authorization: Bearer KEY``. SIGTERM or
Ctrl-C stop accepting connections and answer every request already sent (httpd.py).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hmac
import importlib.util
import ipaddress
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import torch
from PIL import UnidentifiedImageError

from .checkpoint import load_checkpoint
from .data import decode
from .errors import SqueezeNetError, UsageError
from .httpd import dumps  # orjson where installed
from .predict import top_labels
from .runs import RunMeta
from .runtime import Int8Model, candidates, find_int8, make_engine

log = logging.getLogger("squeezenet")

MAX_BYTES = 10 * 1024 * 1024  # per request: photos from phones are 2-8 MB
MAX_IMAGES = 64  # per request
MAX_BATCH = 32
MAX_WAIT_MS = 5.0
# --max-queue's default, in batches: bursts of a Poisson load at 80% of capacity fit (4 refused
# some), and the wait it bounds (~2 s of a 2-core CPU's work at 128 px) stays well under --timeout-s
QUEUE_BATCHES = 8
TRIM_EVERY_S = 5.0  # how often a worker hands freed heap memory back to the system (glibc's malloc_trim)
TIMEOUT_S = 10.0  # --timeout-s: from a request's body read to its answer
READ_TIMEOUT_S = 30.0  # --read-timeout-s: for a request's headers, then for its body (10 MB at 3 Mbit/s)
MAX_CONNECTIONS = 2048  # per worker
DRAIN_SECONDS = 30  # on SIGTERM, how long requests in flight may take to finish
# A refused body is read and discarded up to this many bytes and seconds before the answer (nginx's
# lingering close): a client sends its whole body before it reads, and a connection closed with its
# bytes unread is reset, the answer lost. 100 MiB covers a phone's video sent by mistake at loopback
# or LAN speed in well under a second of a core; a bigger body is answered at once and the connection closed.
DRAIN_BYTES = 100 * 1024 * 1024
DRAIN_BODY_S = 10.0
# Bodies held in memory by one worker at once (being read, queued, in a batch): past it, 503.
MAX_HELD_BYTES = 256 * 1024 * 1024
MAX_PART_HEAD = 16 * 1024  # a multipart part's headers (its name, its file name)
EXTRA_PARTS = 16  # form fields beside the files that a form may carry
# per worker, summed over workers by /model; the last is a gauge: batch sizes OpenVINO is compiling
COUNTERS = ("inference_calls", "images", "decode_seconds", "inference_seconds", "compiling")
PROTECTED = ("/predict", "/model", "/metrics")  # paths that need the API key where one is set
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)



def require_serve() -> None:
    missing = [m for m in ("starlette", "uvicorn", "python_multipart", "httptools", "prometheus_client")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise SqueezeNetError(f"serve needs the {', '.join(missing)} package(s): pip install 'squeezenet[serve]'")


class BadUpload(Exception):
    """A request refused: its status, its message and any headers of the answer."""

    def __init__(self, status: int, message: str, headers: tuple = ()):
        super().__init__(message)
        self.status, self.headers = status, headers


def default_workers() -> int:
    """Server processes: one per core up to 4, the cores shared out among them."""
    return max(1, min(len(os.sched_getaffinity(0)), 4))


class Metrics:
    """The service's Prometheus metrics (prometheus-client). Across worker processes, in its
    multiprocess mode: each worker writes its values to files in PROMETHEUS_MULTIPROC_DIR (set by
    the supervisor before the workers start, as the client reads it on import), and /metrics sums them."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        reg = {"registry": None if self.multiprocess else self.registry}
        self.requests = Counter("squeezenet_requests", "POST /predict requests answered, by HTTP status",
                                ["code"], **reg)
        self.latency = Histogram("squeezenet_request_seconds", "POST /predict: from its headers to its answer",
                                 buckets=LATENCY_BUCKETS, **reg)
        self.images = Counter("squeezenet_images", "images classified", **reg)
        self.batches = Histogram("squeezenet_batch_size", "images per inference call", buckets=BATCH_BUCKETS, **reg)
        self.batch_seconds = Histogram("squeezenet_batch_seconds", "a batch's decoding and inference",
                                       buckets=LATENCY_BUCKETS, **reg)
        self.queue = Gauge("squeezenet_queue_images", "images waiting for inference", multiprocess_mode="livesum",
                           **reg)
        self.closed = Counter("squeezenet_connections_closed", "connections closed or refused by a limit, by "
                              "reason", ["reason"], **reg)
        self._codes, self._reasons = {}, {}

    def request(self, status: int, seconds: float) -> None:
        counter = self._codes.get(status)
        if counter is None:
            counter = self._codes[status] = self.requests.labels(code=str(status))
        counter.inc()
        self.latency.observe(seconds)

    def connection_closed(self, reason: str) -> None:
        counter = self._reasons.get(reason)
        if counter is None:
            counter = self._reasons[reason] = self.closed.labels(reason=reason)
        counter.inc()

    def batch(self, images: int, seconds: float) -> None:
        self.images.inc(images)
        self.batches.observe(images)
        self.batch_seconds.observe(seconds)

    def text(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)


class Item:
    """One request in the queue: its uploads, its top-k, its future and whether it still counts as queued."""

    __slots__ = ("files", "k", "future", "n", "queued")

    def __init__(self, files, k: int, future):
        self.files, self.k, self.future, self.n, self.queued = files, k, future, len(files), True


@functools.cache
def _libc():
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (musl, macOS): its allocator as it is
        return None


def tame_malloc() -> None:
    """glibc only, in a worker before its threads start: a worker's memory follows its working set
    rather than its bursts. Blocks of 1 MiB and more (uploads, decoded photos) are mapped apart and
    go back to the system when freed (glibc otherwise raises that threshold to the largest block
    freed and keeps such blocks in its heaps), and two heaps in all (one per thread otherwise,
    each growing on its own)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-8, 2)  # M_ARENA_MAX
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD (setting it turns off glibc's dynamic threshold)


def trim_heap() -> None:
    """Hands the heaps' free pages back to the system (glibc only)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class Batcher:
    """Batches the requests queued while a batch runs, and runs each batch on a free stream: it
    decodes the batch's uploads, runs the model on them and takes each image's top-k.

    Each stream is a thread: while a batch runs (decoding and the runtime release the interpreter
    lock), the event loop goes on accepting connections, reading requests and refusing those past
    the queue at once; a batch on the loop's own thread held all of that up for its whole length
    (refusals took 0.5-2 s under overload, benchmarks/RESULTS.md#overload). Several streams are
    threads of one or a few cores each, rather than one stream on every core, because a server's
    cores also read requests and decode images: a runtime spread over every core stalls whenever
    one of them is taken.

    At most ``max_queue`` images wait (a request alone always may): past it, 503 at once. A
    request not answered ``timeout_s`` after it queued gets 504 and is left out of its batch."""

    def __init__(self, engine, meta: RunMeta, max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS,
                 streams: int = 1, counters=None, max_queue: int | None = None, timeout_s: float = TIMEOUT_S,
                 metrics: Metrics | None = None):
        self.engine, self.meta, self.max_batch, self.max_wait = engine, meta, max_batch, max_wait_ms / 1000
        self.streams = streams
        self.max_queue, self.timeout = max_queue or QUEUE_BATCHES * max_batch, timeout_s
        self.trimmed_at = time.perf_counter()  # the clock of run()'s timings
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(streams, thread_name_prefix="squeezenet-infer")
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.lock = threading.Lock()
        # inference calls, images, seconds the streams spent decoding and in inference: this
        # worker's row of an array the workers share, or its own
        self.counters = counters if counters is not None else np.zeros(len(COUNTERS))
        self.arriving = 0  # requests being read: worth waiting for
        self.queued = 0  # images waiting

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=True)
        close = getattr(self.engine, "close", None)  # an Engine's; a plain function (tests) has none
        if close is not None:
            close()

    def _count(self, n: int) -> None:
        self.queued += n
        if self.metrics is not None:
            self.metrics.queue.set(self.queued)

    async def infer(self, files: list[tuple[str, bytes]], k: int) -> list[list[dict]]:
        """Per upload of one request, its ``k`` most probable labels; ``BadUpload`` if one of them
        cannot be decoded, if the queue is full (503) or if no answer comes in time (504)."""
        if self.queued and self.queued + len(files) > self.max_queue:
            raise BadUpload(503, f"busy: {self.queued} images are waiting, at most {self.max_queue}: try again "
                                 f"shortly", ((b"retry-after", b"1"),))
        item = Item(files, k, asyncio.get_running_loop().create_future())
        self._count(item.n)
        self.queue.put_nowait(item)
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), self.timeout)
        except TimeoutError:
            item.future.cancel()  # a batch collecting it later skips it
            if item.queued:
                item.queued = False
                self._count(-item.n)
            raise BadUpload(504, f"no answer within {self.timeout:g} s (--timeout-s): the service is "
                                 f"overloaded, try again later") from None

    def _take(self, item: Item) -> bool:
        """Whether a request taken from the queue is still wanted (not timed out)."""
        if item.future.done():
            return False
        item.queued = False
        self._count(-item.n)
        return True

    async def _collect(self) -> list[Item]:
        """The first request queued and those behind it, up to ``max_batch`` images: requests
        already received get a turn of the event loop to join, and one still being read is waited
        for, at most ``max_wait_ms`` in all."""
        while not self._take(first := await self.queue.get()):
            pass
        items = [first]
        n, loop, quiet = first.n, asyncio.get_running_loop(), 0
        deadline = loop.time() + self.max_wait
        while n < self.max_batch:
            if self.queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0 or (not self.arriving and quiet == 2):
                    break
                if not self.arriving:
                    quiet += 1
                    await asyncio.sleep(0)  # a turn for requests whose bytes are in but not yet parsed
                    continue
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                item = self.queue.get_nowait()
            if self._take(item):
                items.append(item)
                n, quiet = n + item.n, 0
        return items

    def run(self, requests: list[tuple[list[tuple[str, bytes]], int]]) -> list:
        """Per (uploads, k) request, its top-k lists or the ``BadUpload`` of its first undecodable image."""
        t0 = time.perf_counter()
        results, good = [], []
        for files, _ in requests:
            try:
                mine = [decode_upload(data, name, self.meta) for name, data in files]
            except BadUpload as e:
                results.append(e)
                continue
            results.append(len(mine))
            good += mine
        t1 = time.perf_counter()
        if good:
            # the pixels as decoded, (N, H, W, C): the runtime normalises them, in its graph
            logits = self.engine(np.stack([a.transpose(1, 2, 0) for a in good]))
            tops, start = top_labels(logits, self.meta.class_names, max(k for _, k in requests)), 0
            for i, (r, (_, k)) in enumerate(zip(results, requests)):
                if not isinstance(r, BadUpload):
                    results[i], start = [top[:k] for top in tops[start:start + r]], start + r
        t2 = time.perf_counter()
        with self.lock:
            for i, v in enumerate((bool(good), len(good), t1 - t0, t2 - t1)):
                self.counters[i] += v
            self.counters[4] = getattr(self.engine, "compiling", 0)
        if self.metrics is not None and good:
            self.metrics.batch(len(good), t2 - t0)
        if t2 - self.trimmed_at >= TRIM_EVERY_S:
            self.trimmed_at = t2
            trim_heap()
        return results

    @property
    def images(self) -> int:
        return int(self.counters[1])

    async def _loop(self) -> None:
        loop, free = asyncio.get_running_loop(), asyncio.Semaphore(self.streams)
        while True:
            await free.acquire()  # collect only once a stream is free: meanwhile the queue grows
            items = await self._collect()
            requests = [(item.files, item.k) for item in items]
            done = loop.run_in_executor(self.executor, self.run, requests)
            done.add_done_callback(lambda d, items=items: (free.release(), self._deliver(items, d)))

    @staticmethod
    def _deliver(items: list[Item], done) -> None:
        try:
            results = done.result()
        except Exception as e:  # the runtime failed: every request of this batch gets a 500
            results = [e] * len(items)
        for item, r in zip(items, results):
            if not item.future.done():  # timed out meanwhile
                item.future.set_exception(r) if isinstance(r, Exception) else item.future.set_result(r)


class Gone(Exception):
    """The client closed its connection before its request was read."""


class Body:
    """A request's body as it streams in: refused past ``max_bytes`` (413), or where it is not all in
    ``read_timeout`` seconds after the headers (408); ``pool``: the worker's ``Predict``, which bounds
    the bytes held in memory by all its requests together (503). ``finish()`` reads and discards
    what is left of it before a refusal."""

    def __init__(self, scope, receive, max_bytes: int, read_timeout: float, pool=None):
        length = expects = None
        for name, value in scope["headers"]:  # ASGI gives the names lower-cased
            if name == b"content-length":
                length = int(value) if value.isdigit() else None
            elif name == b"expect":
                expects = value.lower() == b"100-continue"
        self.receive, self.max_bytes, self.pool = receive, max_bytes, pool
        self.length, self.expects = length, expects
        self.done = False  # the server says where the body ends, even of a request without one
        self.read = self.held = 0
        self.started = False  # receive() called: uvicorn has sent "100 Continue" where one was expected
        self.timeout = read_timeout
        self.deadline = asyncio.get_running_loop().time() + read_timeout

    async def _receive(self) -> bytes:
        self.started = True
        try:
            async with asyncio.timeout(self.deadline - asyncio.get_running_loop().time()):
                message = await self.receive()
        except TimeoutError:
            raise BadUpload(408, f"the request's body did not arrive within {self.timeout:g} s "
                                 f"(--read-timeout-s)") from None
        if message["type"] == "http.disconnect":
            raise Gone
        chunk = message.get("body", b"")
        self.done = not message.get("more_body", False)
        self.read += len(chunk)
        return chunk

    async def read_into(self, sink) -> None:
        """Passes each chunk to ``sink`` as it arrives."""
        while not self.done:
            chunk = await self._receive()
            if self.read > self.max_bytes:
                raise BadUpload(413, f"the upload is over the limit of {self.max_bytes:,} bytes")
            if self.pool is not None and chunk:
                self.held += len(chunk)
                self.pool.held += len(chunk)
                if self.pool.held > self.pool.max_held:
                    raise BadUpload(503, f"busy: this worker holds {self.pool.max_held / 2**20:,.0f} MiB of uploads "
                                         f"at once: try again shortly", ((b"retry-after", b"1"),))
            if chunk:
                sink(chunk)

    def release(self) -> None:
        if self.pool is not None:
            self.pool.held -= self.held
        self.held = 0

    async def finish(self) -> bool:
        """Reads and discards the rest of the body, at most ``DRAIN_BYTES`` in all and for
        ``DRAIN_BODY_S``, so that a client still sending it reads the answer (closed with bytes
        unread, a connection is reset, the answer lost); whether all of it was read. A client that
        expects "100 Continue" and has not had it sends no body: nothing to read."""
        if self.done:
            return True
        if (self.expects and not self.started) or (self.length or 0) > DRAIN_BYTES:
            return False
        self.deadline = min(self.deadline, asyncio.get_running_loop().time() + DRAIN_BODY_S)
        try:
            while not self.done:
                await self._receive()
                if self.read > DRAIN_BYTES:
                    return False
        except (BadUpload, Gone):
            return False
        return True


class Form:
    """The files of a multipart/form-data body, parsed as it streams in (python-multipart), with
    bounds on the number of parts and on each part's headers: a form of 10,000 parts or a part
    name of a megabyte is refused at the first part past them."""

    def __init__(self, content_type: bytes, max_images: int):
        from python_multipart.multipart import MultipartParser, parse_options_header

        self.options = parse_options_header
        boundary = parse_options_header(content_type)[1].get(b"boundary")
        if not boundary:
            raise BadUpload(400, "bad multipart form: no boundary in its Content-Type")
        self.max_parts, self.max_images = max_images + EXTRA_PARTS, max_images
        self.files: list[tuple[str, bytearray]] = []
        self.parts, self.head, self.field, self.disposition, self.current = 0, 0, b"", b"", None
        try:
            self.parser = MultipartParser(boundary, {
                "on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._data})
        except ValueError as e:
            raise BadUpload(400, f"bad multipart form: {e}") from None

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.max_parts:
            raise BadUpload(413, f"over {self.max_parts} parts in one form: at most {self.max_images} images")
        self.head, self.field, self.disposition, self.current = 0, b"", b"", None

    def _count(self, n: int) -> None:
        self.head += n
        if self.head > MAX_PART_HEAD:
            raise BadUpload(400, f"bad multipart form: a part's headers are over {MAX_PART_HEAD:,} bytes")

    def _header_field(self, data, start, end) -> None:
        self._count(end - start)
        self.field += data[start:end]

    def _header_value(self, data, start, end) -> None:
        self._count(end - start)
        if self.field.lower() == b"content-disposition":
            self.disposition += data[start:end]

    def _header_end(self) -> None:
        self.field = b""

    def _headers_finished(self) -> None:
        options = self.options(self.disposition)[1]
        if b"filename" in options:  # a file; other fields are read past
            name = (options[b"filename"] or options.get(b"name", b"")).decode("utf-8", "replace")
            self.current = bytearray()
            self.files.append((name, self.current))

    def _data(self, data, start, end) -> None:
        if self.current is not None:
            self.current += data[start:end]

    def write(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except BadUpload:
            raise
        except Exception as e:  # python-multipart's errors on a malformed form
            raise BadUpload(400, f"bad multipart form: {str(e)[:200]}") from None

    def finish(self) -> list[tuple[str, bytes]]:
        try:
            self.parser.finalize()
        except Exception as e:
            raise BadUpload(400, f"bad multipart form: {str(e)[:200]}") from None
        return [(name, bytes(data)) for name, data in self.files]


async def uploads(scope, body: Body, max_bytes: int, max_images: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image in the request: the raw body, or every file of a multipart form."""
    if body.length is not None and body.length > max_bytes:
        raise BadUpload(413, f"the upload ({body.length:,} bytes) is over the limit of {max_bytes:,} bytes")
    header = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
    ctype = header.decode("latin-1").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = Form(header, max_images)
        await body.read_into(form.write)
        files = form.finish()
    elif ctype in ("", "application/octet-stream") or ctype.startswith("image/"):
        chunks = []
        await body.read_into(chunks.append)
        files = [("image", b"".join(chunks))]
    else:
        raise BadUpload(415, f"unsupported Content-Type {ctype[:100]!r}: send the image's bytes (image/*) or a "
                             f"multipart/form-data form with image files")
    files = [(name, data) for name, data in files if data]
    if not files:
        raise BadUpload(400, "no image in the request: send image bytes, or files in a multipart form")
    if len(files) > max_images:
        raise BadUpload(413, f"{len(files)} images in one request: at most {max_images}")
    return files


def top_k(scope) -> int:
    """``?top_k=K`` (5 where absent); ``BadUpload`` where it is not a whole number of at least 1."""
    query = scope.get("query_string", b"")
    values = parse_qs(query.decode("latin-1")).get("top_k", ["5"]) if query else ["5"]
    try:
        k = int(values[-1])
    except ValueError:
        k = 0
    if k < 1:
        raise BadUpload(400, f"top_k must be a whole number of at least 1, got {values[-1][:50]!r}")
    return k


async def send_json(send, status: int, content, headers=()) -> None:
    body = dumps(content)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def error_body(status: int, message: str) -> dict:
    return {"error": message, "status": status}


async def refuse(send, body: Body, e: BadUpload) -> int:
    """``e``'s JSON error, once the rest of the body is drained (else the connection closes after it)."""
    headers = list(e.headers)
    if not await body.finish():
        headers.append((b"connection", b"close"))
    await send_json(send, e.status, error_body(e.status, str(e)), headers)
    return e.status


class Predict:
    """``POST /predict`` as a plain ASGI callable. A small model answers a request in a fraction of
    a millisecond, so what a framework adds to each counts: POST /predict reaches this before
    Starlette's middleware, router, Request and JSONResponse, and it writes its JSON itself
    (what that saves: benchmarks/RESULTS.md#serving)."""

    def __init__(self, batcher: Batcher, runtime_name: str, max_bytes: int, max_images: int,
                 read_timeout: float = READ_TIMEOUT_S, metrics: Metrics | None = None):
        self.batcher, self.runtime_name, self.max_bytes, self.max_images = batcher, runtime_name, max_bytes, max_images
        self.read_timeout, self.metrics = read_timeout, metrics
        self.held, self.max_held = 0, max(MAX_HELD_BYTES, 2 * max_bytes)  # bytes of bodies held (Body)

    async def __call__(self, scope, receive, send) -> None:
        t0 = time.perf_counter()
        status = 499  # nginx's code for a client gone before its answer
        try:
            status = await self.answer(scope, receive, send, t0)
        finally:
            if self.metrics is not None:
                self.metrics.request(status, time.perf_counter() - t0)

    async def answer(self, scope, receive, send, t0: float) -> int:
        batcher = self.batcher
        body = Body(scope, receive, self.max_bytes, self.read_timeout, self)
        try:
            if scope["method"] != "POST":
                raise BadUpload(405, "POST images to /predict")
            k = top_k(scope)
            batcher.arriving += 1
            try:
                files = await uploads(scope, body, self.max_bytes, self.max_images)
            finally:
                batcher.arriving -= 1
            tops = await batcher.infer(files, k)
        except Gone:
            return 499
        except BadUpload as e:
            return await refuse(send, body, e)
        except Exception as e:  # the runtime failed on this batch: said in the log and to each of its requests
            log.error(f"inference failed: {type(e).__name__}: {e}")
            await send_json(send, 500, error_body(500, f"inference failed: {type(e).__name__}: {str(e)[:200]}"))
            return 500
        finally:
            body.release()
        await send_json(send, 200, {"predictions": [{"image": name, "top": top} for (name, _), top in zip(files, tops)],
                                    "runtime": self.runtime_name, "ms": (time.perf_counter() - t0) * 1000})
        return 200


def decode_upload(data: bytes, name: str, meta: RunMeta) -> np.ndarray:
    """One upload as the model's (C, H, W) uint8 pixels, decoded as ``predict`` decodes files."""
    pre = meta.preprocess
    try:
        return decode(data, pre.image_size, pre.in_channels, pre.resize_size)
    except UnidentifiedImageError:
        raise BadUpload(400, f"cannot decode image {name!r}: not an image format PIL reads, or damaged") from None
    except Exception as e:  # PIL's decoders raise many types on hostile bytes
        raise BadUpload(400, f"cannot decode image {name!r}: {type(e).__name__}: {str(e)[:200]}") from None


def create_app(checkpoint, runtime: str = "auto", precision: str = "auto", max_batch: int = MAX_BATCH,
               max_wait_ms: float = MAX_WAIT_MS, max_bytes: int = MAX_BYTES, max_images: int = MAX_IMAGES,
               site: Path | None = None, streams: int | None = None, workers: int = 1, counters=None,
               totals=None, ready=None, max_queue: int | None = None, timeout_s: float = TIMEOUT_S,
               read_timeout_s: float = READ_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS,
               api_key: str | None = None, cors_origin: str | None = None):
    """The Starlette app (the engine is built now, so the first request pays nothing). One of
    ``workers`` processes: ``counters`` its slots of the shared counters, ``totals`` a function
    summing them over every worker, ``ready`` an event set once it takes requests."""
    require_serve()
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    model, meta = load_checkpoint(checkpoint)
    streams = streams or 1
    threads = max(1, len(os.sched_getaffinity(0)) // streams)
    torch.set_num_threads(threads)  # the torch runtime's threads (the others take theirs per session)
    engine = make_engine(model, meta, runtime, precision, checkpoint, threads=threads, streams=streams, pixels=True)
    engine.compile_in_background()
    log.info(f"runtime: {engine.name}, {streams} stream(s) of {threads} thread(s) ({engine.reason})")
    metrics = Metrics()
    batcher = Batcher(engine, meta, max_batch, max_wait_ms, streams, counters, max_queue, timeout_s, metrics)
    totals = totals or (lambda: batcher.counters.tolist())
    classes, runtime_name = meta.class_names, engine.name

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse(error_body(status, message), status_code=status)

    async def health(request):
        return JSONResponse({"status": "ok"})

    async def describe(request):
        pre = meta.preprocess
        return JSONResponse({"arch": meta.arch, "class_names": classes, "image_size": pre.image_size,
                             "resize_size": pre.resize_size, "in_channels": pre.in_channels,
                             "mean": list(pre.mean), "std": list(pre.std), "runtime": engine.name,
                             "runners": {str(b): lbl for b, (lbl, _) in sorted(engine.runners.items())},
                             "runtime_reason": engine.reason, "workers": workers, "streams": streams,
                             "threads_per_stream": threads, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
                             "max_bytes": max_bytes, "max_images": max_images, "max_queue": batcher.max_queue,
                             "timeout_s": timeout_s, "read_timeout_s": read_timeout_s,
                             "max_connections": max_connections, "api_key": api_key is not None,
                             "page": site is not None,
                             **{k: (v if "seconds" in k else int(v)) for k, v in zip(COUNTERS, totals())}})

    async def no_page(request):
        return error(404, "the web page is off (--no-page, or it could not be built: see the service's log)")

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        if ready is not None:
            ready.set()
        yield
        await batcher.stop()

    predict = Predict(batcher, runtime_name, max_bytes, max_images, read_timeout_s, metrics)
    routes = [Route("/health", health), Route("/model", describe)]
    routes.append(Mount("/", StaticFiles(directory=site, html=True)) if site is not None else Route("/", no_page))
    async def http_error(request, e):  # Starlette's own refusals (404, 405) in JSON too
        return JSONResponse(error_body(e.status_code, f"{e.detail}: {request.method} {request.url.path[:200]}"),
                            e.status_code, getattr(e, "headers", None))

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.engine, app.state.batcher, app.state.metrics, app.state.predict = engine, batcher, metrics, predict
    app.state.read_timeout_s, app.state.max_connections = read_timeout_s, max_connections
    return _front(predict, app, site is not None, api_key, cors_origin, metrics)


def authorized(scope, key: bytes) -> bool:
    """Whether the request carries ``Authorization: Bearer KEY``, compared in constant time."""
    value = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
    scheme, _, token = value.partition(b" ")
    return hmac.compare_digest(token.strip(), key) and scheme.lower() == b"bearer"


def _front(predict: Predict, app, isolate: bool, api_key: str | None = None, cors_origin: str | None = None,
           metrics: Metrics | None = None):
    """The ASGI app: the API key's check; /predict straight to ``predict``; /metrics; the rest
    through Starlette, with the COOP/COEP headers under which the page may run onnxruntime-web's
    threads where it is served; all of it behind CORS for ``cors_origin`` where one is given."""
    key = api_key.encode() if api_key is not None else None

    async def front(scope, receive, send):
        if scope["type"] == "http":
            path = scope["path"]
            if key is not None and path in PROTECTED and not authorized(scope, key):
                body = Body(scope, receive, 0, predict.read_timeout)
                status = await refuse(send, body, BadUpload(
                    401, "this service needs its API key: send the header 'Authorization: Bearer KEY'",
                    ((b"www-authenticate", b"Bearer"),)))
                if path == "/predict" and metrics is not None:
                    metrics.request(status, 0.0)
                return
            if path == "/predict":
                return await predict(scope, receive, send)
            if scope["method"] not in ("GET", "HEAD", "OPTIONS"):  # a body the routes below would leave unread
                return await refuse(send, Body(scope, receive, 0, predict.read_timeout),
                                    BadUpload(405, f"{scope['method'][:20]} {path[:200]}: only POST /predict takes a "
                                                   f"body"))
            if path == "/metrics" and metrics is not None:
                from prometheus_client import CONTENT_TYPE_LATEST

                text = metrics.text()
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode()),
                                        (b"content-length", str(len(text)).encode())]})
                return await send({"type": "http.response.body", "body": text})

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"cross-origin-opener-policy", b"same-origin"),
                                      (b"cross-origin-embedder-policy", b"require-corp")]
            await send(message)
        await app(scope, receive, send_with_headers if isolate and scope["type"] == "http" else send)
    outer = front
    if cors_origin is not None:
        outer = _cors(front, cors_origin)
    outer.state = app.state
    return outer


def _cors(app, origin: str):
    """Starlette's CORS middleware for one origin, its refused preflights in JSON like every refusal."""
    from starlette.middleware.cors import CORSMiddleware
    from starlette.responses import JSONResponse

    class CORS(CORSMiddleware):
        def preflight_response(self, request_headers):
            response = super().preflight_response(request_headers)
            if response.status_code < 400:
                return response
            message = f"{response.body.decode()[:200]}: this service lets pages of {origin} call it"
            headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
            return JSONResponse(error_body(response.status_code, message), response.status_code, headers)

    return CORS(app, allow_origins=[origin], allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"], max_age=600)


def build_site(checkpoint, ort_web=None) -> tuple[Path | None, str]:
    """The web page's folder in a temporary directory, on squeezenet's engine as WebAssembly (on
    onnxruntime-web given its folder); None, and why, where it cannot be built."""
    from .web import export_web

    tmp = Path(tempfile.mkdtemp(prefix="squeezenet-site-"))
    try:
        export_web(checkpoint, tmp / "site", ort_web=ort_web, runtime="ort-web" if ort_web else "engine")
    except SqueezeNetError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        return None, str(e)
    return tmp / "site", ""


def beyond_this_machine(host: str) -> bool:
    """Whether an address to listen on lets other machines in (anything but loopback)."""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return True


def open_files(max_connections: int) -> int:
    """Raises this process's open-file limit (its workers inherit it) to the hard limit: each
    connection is a file; the connections a worker may hold within it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    room = (soft if soft != resource.RLIM_INFINITY else 1 << 20) - 256  # the runtime's files, lingering sockets
    if max_connections > room:
        log.warning(f"--max-connections {max_connections:,} is over what the open-file limit ({soft:,}) leaves: "
                    f"{max(room, 16):,} per worker (raise it with ulimit -n)")
        return max(room, 16)
    return max_connections


def serve(checkpoint, host: str = "127.0.0.1", port: int = 8000, runtime: str = "auto", precision: str = "auto",
          max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS, max_bytes: int = MAX_BYTES,
          ort_web=None, page: bool = True, streams: int | None = None, workers: int | None = None,
          max_queue: int | None = None, timeout_s: float = TIMEOUT_S, read_timeout_s: float = READ_TIMEOUT_S,
          max_connections: int = MAX_CONNECTIONS, api_key: str | None = None, cors_origin: str | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C, then answer the requests already sent."""
    require_serve()
    if max_batch < 1 or max_wait_ms < 0 or max_bytes < 1:
        raise UsageError("--max-batch and --max-bytes must be positive, --max-wait-ms not negative")
    if (max_queue is not None and max_queue < 1) or timeout_s <= 0 or read_timeout_s <= 0 or max_connections < 1:
        raise UsageError("--max-queue, --timeout-s, --read-timeout-s and --max-connections must be positive")
    if api_key is None:
        api_key = os.environ.get("SQUEEZENET_API_KEY") or None
    elif not api_key.strip() or any(c.isspace() for c in api_key):
        raise UsageError("--api-key must be a non-empty word without spaces")
    if cors_origin is not None and (cors_origin == "*" or "://" not in cors_origin):
        raise UsageError(f"--cors-origin {cors_origin!r}: give one origin, e.g. https://example.com")
    if api_key is None and beyond_this_machine(host):
        log.warning(f"warning: listening on {host}, beyond this machine, with no API key: anyone who reaches it "
                    f"may use the service (set --api-key or SQUEEZENET_API_KEY)")
    workers = workers or default_workers()
    sock = listen(host, port, 2048 if workers == 1 else None)
    load_checkpoint(checkpoint)  # a bad checkpoint or runtime fails here, once, before any worker starts
    candidates(runtime, precision, find_int8(checkpoint) if precision != "fp32" else Int8Model(None))
    max_connections = open_files(max_connections)
    site, why = build_site(checkpoint, ort_web) if page else (None, "--no-page")
    if site is None:
        log.warning(f"serving without the web page: {why}")
    settings = dict(checkpoint=checkpoint, runtime=runtime, precision=precision, max_batch=max_batch,
                    max_wait_ms=max_wait_ms, max_bytes=max_bytes, site=site, streams=streams, workers=workers,
                    max_queue=max_queue, timeout_s=timeout_s, read_timeout_s=read_timeout_s,
                    max_connections=max_connections, api_key=api_key, cors_origin=cors_origin)
    where = (f"serving {checkpoint} on http://{host}:{sock.getsockname()[1]} (POST /predict, GET /health, "
             f"GET /model, GET /metrics{', the page at /' if site else ''}"
             f"{'; the API key is needed' if api_key else ''}); SIGTERM or Ctrl-C stops it")
    try:
        if workers == 1:
            tame_malloc()
            app = create_app(**settings)
            log.info(where)
            server = _server(app, sock)
            _run(server)
            if not server.started:
                raise SqueezeNetError(f"the server could not start on {host}:{port} (see the message above)")
        else:
            _supervise(sock.getsockname()[:2], settings, where)
    finally:
        sock.close()
        if site is not None:
            shutil.rmtree(site.parent, ignore_errors=True)


def _server(app, sock):
    import uvicorn

    from .httpd import Guard, Protocol, Server

    config = uvicorn.Config(app, http=Protocol, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=DRAIN_SECONDS)
    guard = Guard(app.state.max_connections, app.state.read_timeout_s, app.state.metrics.connection_closed)
    server = Server(config, guard)
    server.sock = sock
    return server


def exit_reason(code: int) -> str:
    """What a process's exit code says, in words."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}" + (" (an abort in native code: see its message above)"
                                          if -code == signal.SIGABRT else "")
    return f"exited with code {code}"


def _supervise(address, settings: dict, where: str) -> None:
    """``workers`` processes, each listening on ``address`` (SO_REUSEPORT) on its share of the
    cores: one Python process per core, so that reading requests, decoding and the runtime's calls in one worker
    never wait for another's interpreter lock (benchmarks/RESULTS.md#serving).
    SIGTERM or Ctrl-C reach every worker, and each answers the requests already sent. A worker
    that fails, or exits unbidden, stops the others, and the service exits non-zero saying which
    and how. The workers' metrics meet in a private folder, removed at the end."""
    import multiprocessing
    from multiprocessing.connection import wait

    ctx, n = multiprocessing.get_context("spawn"), settings["workers"]
    shared = ctx.Array("d", n * len(COUNTERS), lock=False)
    ready = [ctx.Event() for _ in range(n)]
    cpus = sorted(os.sched_getaffinity(0))
    share = len(cpus) // n
    procs = [ctx.Process(target=_worker, name=f"squeezenet-serve-{i}", daemon=False,
                         args=(address, i, cpus[i * share:(i + 1) * share] if share else cpus, settings, shared,
                               ready[i], log.getEffectiveLevel())) for i in range(n)]
    stopping = []

    def terminate():
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    def stop(signum, frame):
        stopping.append(signum)
        terminate()
    metrics_dir = tempfile.mkdtemp(prefix="squeezenet-metrics-")
    env_before = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # the workers inherit it; prometheus-client reads it
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for p in procs:
            p.start()
        while not all(e.is_set() for e in ready):
            failed = [p for p in procs if p.exitcode is not None]
            if failed or stopping:
                terminate()  # a signal, or a worker that died starting: the others stop too
                for p in procs:
                    p.join(DRAIN_SECONDS)
                if stopping:
                    return
                i = procs.index(failed[0])
                raise SqueezeNetError(f"a server worker exited while starting: worker {i} (pid {failed[0].pid}) "
                                      f"{exit_reason(failed[0].exitcode)} (see the message above)")
            time.sleep(0.05)
        log.info(f"{where}; {n} worker processes")
        unbidden = None
        running = list(procs)
        while running:
            wait([p.sentinel for p in running])
            for p in [p for p in running if p.exitcode is not None]:
                running.remove(p)
                if not stopping and unbidden is None:
                    unbidden = p
                    terminate()  # one worker gone: the service stops, said below, for its supervisor to restart
        failed = [(i, p) for i, p in enumerate(procs) if p.exitcode != 0 or p is unbidden]
        if failed:
            raise SqueezeNetError("; ".join(f"worker {i} (pid {p.pid}) {exit_reason(p.exitcode)}" for i, p in failed)
                                  + ("" if unbidden is None else ", unbidden: the other workers were stopped"))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for p in procs:
            if p.is_alive():
                p.kill()
        if env_before is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = env_before
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _stop_with_parent() -> None:
    """SIGTERM for this worker when the supervisor dies (SIGKILLed, say), rather than serving on,
    orphaned (Linux's PR_SET_PDEATHSIG; elsewhere nothing)."""
    import ctypes
    import ctypes.util

    parent = os.getppid()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the call
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(address, index: int, cpus: list[int], settings: dict, shared, ready, level: int) -> None:
    """One server process: its cores, its app, the shared counters."""
    import sys

    logger = logging.getLogger("squeezenet")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level if index == 0 else max(level, logging.WARNING))  # one worker says the runtime
    _stop_with_parent()
    tame_malloc()
    os.sched_setaffinity(0, cpus)
    table = np.frombuffer(shared, dtype=np.float64).reshape(settings["workers"], len(COUNTERS))  # no copy
    try:
        app = create_app(**settings, counters=table[index], totals=lambda: table.sum(axis=0).tolist(), ready=ready)
        # listening only now: the kernel hands connections to listening sockets only, so none waits
        # for a worker still loading its runtime, or is reset if the service stops meanwhile
        sock = listen(*address)
        _run(_server(app, sock))
    except SqueezeNetError as e:
        logger.error(f"error: {e}")
        raise SystemExit(1) from None
    finally:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # its live gauges (the queue) leave the sums


def listen(host: str, port: int, backlog: int | None = 2048) -> socket.socket:
    """The listening socket, before anything is loaded; one clear message where it cannot be had.
    SO_REUSEPORT: each worker listens on a socket of its own on the same port, and the kernel
    spreads the connections evenly (one shared socket lets the first worker awake take most);
    ``backlog`` None: bound only, holding the port for the workers."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port} is not 0..65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        if backlog is not None:
            sock.listen(backlog)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise SqueezeNetError(f"port {port} on {host} is in use (another server?): stop it, or choose "
                                  f"another with --port") from None
        raise SqueezeNetError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


class _Stopped(Exception):
    pass


def _run(server) -> None:
    """``server.run()``; uvicorn drains on SIGTERM/SIGINT and then re-raises the signal to the
    handler it found, which here ends the run normally instead of killing the process mid-cleanup."""
    def stop(signum, frame):
        raise _Stopped(signum)
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[server.sock])
    except _Stopped:
        pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
