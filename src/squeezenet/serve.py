"""``serve``: an HTTP API for a checkpoint (Starlette on uvicorn), with the web page at ``/``.

    POST /predict   image bytes (Content-Type image/* or application/octet-stream), or
                    multipart/form-data with one or more files; ?top_k=K
    GET  /health    {"status": "ok"}
    GET  /model     architecture, classes, preprocessing, the runtime and why, batching counters
    GET  /          the page of ``export --format web`` (inference in the browser)

One process per core (``--workers``), each on its own port socket (SO_REUSEPORT) and cores.
Requests that arrive together are batched: while a worker's inference streams are busy, requests
queue, and the next free stream takes them all (up to ``max_batch`` images), waiting for requests still
being read at most ``max_wait_ms``; with nothing else arriving it runs at once. A request with an
undecodable upload gets its 400 alone: it is left out of the batch, and the others run. Bodies
over ``max_bytes`` get 413. SIGTERM or Ctrl-C stop accepting connections and let the requests in
flight finish (uvicorn's graceful shutdown).
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import json
import logging
import os
import shutil
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
from .predict import top_labels
from .runs import RunMeta
from .runtime import Int8Model, candidates, find_int8, make_engine

log = logging.getLogger("squeezenet")

MAX_BYTES = 10 * 1024 * 1024  # per request: photos from phones are 2-8 MB
MAX_IMAGES = 64  # per request
MAX_BATCH = 32
MAX_WAIT_MS = 5.0
DRAIN_SECONDS = 30  # on SIGTERM, how long requests in flight may take to finish
# per worker, summed over workers by /model; the last is a gauge: batch sizes OpenVINO is compiling
COUNTERS = ("inference_calls", "images", "decode_seconds", "inference_seconds", "compiling")


try:  # the serve extra's JSON writer: on a service of a small model the json module's time shows
    from orjson import dumps
except ImportError:
    def dumps(content) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def require_serve() -> None:
    missing = [m for m in ("starlette", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        raise SqueezeNetError(f"serve needs the {', '.join(missing)} package(s): pip install 'squeezenet[serve]'")


class BadUpload(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def default_workers() -> int:
    """Server processes: one per core up to 4, the cores shared out among them."""
    return max(1, min(len(os.sched_getaffinity(0)), 4))


class Batcher:
    """Batches the requests queued while a batch runs, and runs each batch on a free stream: it
    decodes the batch's uploads, runs the model on them and takes each image's top-k.

    One stream (the default: one worker process per core) runs on the event loop's own thread: a
    second thread on the same core only adds interpreter-lock hand-offs to every request
    (benchmarks/RESULTS.md#serving). Several streams are threads of one or a few cores each,
    rather than one stream on every core, because a server's cores also read requests and decode
    images: a runtime spread over every core stalls whenever one of them is taken."""

    def __init__(self, engine, meta: RunMeta, max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS,
                 streams: int = 1, counters=None):
        self.engine, self.meta, self.max_batch, self.max_wait = engine, meta, max_batch, max_wait_ms / 1000
        self.streams = streams
        self.executor = ThreadPoolExecutor(streams, thread_name_prefix="squeezenet-infer") if streams > 1 else None
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.lock = threading.Lock()
        # inference calls, images, seconds the streams spent decoding and in inference: this
        # worker's row of an array the workers share, or its own
        self.counters = counters if counters is not None else np.zeros(len(COUNTERS))
        self.arriving = 0  # requests being read: worth waiting for

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        self.engine.close()

    async def infer(self, files: list[tuple[str, bytes]], k: int) -> list[list[dict]]:
        """Per upload of one request, its ``k`` most probable labels; ``BadUpload`` if one of them
        cannot be decoded."""
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((files, k, future))
        return await future

    async def _collect(self) -> list:
        """The first request queued and those behind it, up to ``max_batch`` images: requests
        already received get a turn of the event loop to join, and one still being read is waited
        for, at most ``max_wait_ms`` in all."""
        items = [await self.queue.get()]
        n, loop, quiet = len(items[0][0]), asyncio.get_running_loop(), 0
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
            items.append(item)
            n, quiet = n + len(item[0]), 0
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
        with self.lock:
            for i, v in enumerate((bool(good), len(good), t1 - t0, time.perf_counter() - t1)):
                self.counters[i] += v
            self.counters[4] = getattr(self.engine, "compiling", 0)
        return results

    @property
    def images(self) -> int:
        return int(self.counters[1])

    async def _loop(self) -> None:
        loop, free = asyncio.get_running_loop(), asyncio.Semaphore(self.streams)
        while True:
            await free.acquire()  # collect only once a stream is free: meanwhile the queue grows
            items = await self._collect()
            requests = [(files, k) for files, k, _ in items]
            if self.executor is None:  # on this thread: requests wait in the socket buffers meanwhile
                done = loop.create_future()
                try:
                    done.set_result(self.run(requests))
                except Exception as e:
                    done.set_exception(e)
                free.release()
                self._deliver(items, done)
                continue
            done = loop.run_in_executor(self.executor, self.run, requests)
            done.add_done_callback(lambda d, items=items: (free.release(), self._deliver(items, d)))

    @staticmethod
    def _deliver(items, done) -> None:
        try:
            results = done.result()
        except Exception as e:  # the runtime failed: every request of this batch gets a 500
            results = [e] * len(items)
        for (_, _, f), r in zip(items, results):
            if not f.done():  # the client may have gone
                f.set_exception(r) if isinstance(r, Exception) else f.set_result(r)


class Gone(Exception):
    """The client closed its connection before its request was read."""


async def read_body(receive, max_bytes: int):
    """The request body as it streams in, refused once it passes ``max_bytes``."""
    total, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Gone
        chunk, more = message.get("body", b""), message.get("more_body", False)
        total += len(chunk)
        if total > max_bytes:
            raise BadUpload(413, f"the upload is over the limit of {max_bytes:,} bytes")
        if chunk:
            yield chunk


async def uploads(scope, receive, max_bytes: int, max_images: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image in the request: the raw body, or every file of a multipart form."""
    headers = dict(scope["headers"])  # ASGI gives the names lower-cased
    length = headers.get(b"content-length", b"")
    if length.isdigit() and int(length) > max_bytes:
        raise BadUpload(413, f"the upload ({int(length):,} bytes) is over the limit of {max_bytes:,} bytes")
    ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        from starlette.datastructures import Headers
        from starlette.formparsers import MultiPartException, MultiPartParser

        parser = MultiPartParser(Headers(scope=scope), read_body(receive, max_bytes), max_files=max_images,
                                 max_fields=max_images)
        try:
            form = await parser.parse()
        except MultiPartException as e:
            raise BadUpload(400, f"bad multipart form: {e}") from None
        files = [(v.filename or k, await v.read()) for k, v in form.multi_items() if not isinstance(v, str)]
        await form.close()
    elif ctype in ("", "application/octet-stream") or ctype.startswith("image/"):
        files = [("image", b"".join([c async for c in read_body(receive, max_bytes)]))]
    else:
        raise BadUpload(415, f"unsupported Content-Type {ctype!r}: send the image's bytes (image/*) or a "
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
        raise BadUpload(400, f"top_k must be a whole number of at least 1, got {values[-1]!r}")
    return k


async def send_json(send, status: int, content) -> None:
    body = dumps(content)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def error_body(status: int, message: str) -> dict:
    return {"error": message, "status": status}


class Predict:
    """``POST /predict`` as a plain ASGI callable. A small model answers a request in a fraction of
    a millisecond, so what a framework adds to each counts: POST /predict reaches this before
    Starlette's middleware, router, Request and JSONResponse, and it writes its JSON itself
    (what that saves: benchmarks/RESULTS.md#serving)."""

    def __init__(self, batcher: Batcher, runtime_name: str, max_bytes: int, max_images: int):
        self.batcher, self.runtime_name, self.max_bytes, self.max_images = batcher, runtime_name, max_bytes, max_images

    async def __call__(self, scope, receive, send) -> None:
        t0 = time.perf_counter()
        batcher = self.batcher
        if scope["method"] != "POST":
            return await send_json(send, 405, error_body(405, "POST images to /predict"))
        try:
            k = top_k(scope)
            batcher.arriving += 1
            try:
                files = await uploads(scope, receive, self.max_bytes, self.max_images)
            finally:
                batcher.arriving -= 1
            tops = await batcher.infer(files, k)
        except Gone:
            return
        except BadUpload as e:
            return await send_json(send, e.status, error_body(e.status, str(e)))
        except Exception as e:  # the runtime failed on this batch: said in the log and to each of its requests
            log.error(f"inference failed: {type(e).__name__}: {e}")
            return await send_json(send, 500, error_body(500, f"inference failed: {type(e).__name__}: {str(e)[:200]}"))
        await send_json(send, 200, {"predictions": [{"image": name, "top": top} for (name, _), top in zip(files, tops)],
                                    "runtime": self.runtime_name, "ms": (time.perf_counter() - t0) * 1000})


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
               totals=None, ready=None):
    """The Starlette app (the engine is built now, so the first request pays nothing). One of
    ``workers`` processes: ``counters`` its slots of the shared counters, ``totals`` a function
    summing them over every worker, ``ready`` an event set once it takes requests."""
    require_serve()
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
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
    batcher = Batcher(engine, meta, max_batch, max_wait_ms, streams, counters)
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
                             "max_bytes": max_bytes, "max_images": max_images, "page": site is not None,
                             **{k: (v if "seconds" in k else int(v)) for k, v in zip(COUNTERS, totals())}})

    async def no_page(request):
        return error(404, "the web page is off: onnxruntime-web was not found (pass --ort-web DIR)")

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        if ready is not None:
            ready.set()
        yield
        await batcher.stop()

    predict = Predict(batcher, runtime_name, max_bytes, max_images)
    routes = [Route("/health", health), Route("/model", describe)]
    routes.append(Mount("/", StaticFiles(directory=site, html=True)) if site is not None else Route("/", no_page))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.engine, app.state.batcher = engine, batcher
    return _front(predict, app, isolate=site is not None)


def _front(predict: Predict, app, isolate: bool):
    """The ASGI app: /predict straight to ``predict``; the rest through Starlette, with the
    COOP/COEP headers under which the page may run onnxruntime-web's threads where it is served."""
    async def front(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/predict":
            return await predict(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"cross-origin-opener-policy", b"same-origin"),
                                      (b"cross-origin-embedder-policy", b"require-corp")]
            await send(message)
        await app(scope, receive, send_with_headers if isolate and scope["type"] == "http" else send)
    front.state = app.state
    return front


def build_site(checkpoint, ort_web=None) -> tuple[Path | None, str]:
    """The web page's folder in a temporary directory (None, and why, where onnxruntime-web is absent)."""
    from .web import export_web, ort_web_dir

    try:
        ort_web_dir(ort_web, download=ort_web is None)
    except SqueezeNetError as e:
        return None, str(e)
    tmp = Path(tempfile.mkdtemp(prefix="squeezenet-site-"))
    export_web(checkpoint, tmp / "site", ort_web=ort_web)
    return tmp / "site", ""


def serve(checkpoint, host: str = "127.0.0.1", port: int = 8000, runtime: str = "auto", precision: str = "auto",
          max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS, max_bytes: int = MAX_BYTES,
          ort_web=None, page: bool = True, streams: int | None = None, workers: int | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C, then drain the requests in flight."""
    require_serve()
    if max_batch < 1 or max_wait_ms < 0 or max_bytes < 1:
        raise UsageError("--max-batch and --max-bytes must be positive, --max-wait-ms not negative")
    workers = workers or default_workers()
    sock = listen(host, port, 2048 if workers == 1 else None)
    load_checkpoint(checkpoint)  # a bad checkpoint or runtime fails here, once, before any worker starts
    candidates(runtime, precision, find_int8(checkpoint) if precision != "fp32" else Int8Model(None))
    site, why = build_site(checkpoint, ort_web) if page else (None, "--no-page")
    if site is None:
        log.warning(f"serving without the web page: {why}")
    settings = dict(checkpoint=checkpoint, runtime=runtime, precision=precision, max_batch=max_batch,
                    max_wait_ms=max_wait_ms, max_bytes=max_bytes, site=site, streams=streams, workers=workers)
    where = (f"serving {checkpoint} on http://{host}:{sock.getsockname()[1]} (POST /predict, GET /health, "
             f"GET /model{', the page at /' if site else ''}); SIGTERM or Ctrl-C stops it")
    try:
        if workers == 1:
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

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=DRAIN_SECONDS,
                            lifespan="on")
    server = uvicorn.Server(config)
    server.sock = sock
    return server


def _supervise(address, settings: dict, where: str) -> None:
    """``workers`` processes, each listening on ``address`` (SO_REUSEPORT) on its share of the
    cores: one Python process per core, so that reading requests, decoding and the runtime's calls in one worker
    never wait for another's interpreter lock (benchmarks/RESULTS.md#serving).
    SIGTERM or Ctrl-C reach every worker, and each drains its requests in flight."""
    import multiprocessing
    import signal

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
                raise SqueezeNetError(f"a server worker exited while starting (exit code {failed[0].exitcode}; "
                                      f"see the message above)")
            time.sleep(0.05)
        log.info(f"{where}; {n} worker processes")
        for p in procs:
            p.join()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for p in procs:
            if p.is_alive():
                p.kill()


def _worker(address, index: int, cpus: list[int], settings: dict, shared, ready, level: int) -> None:
    """One server process: its cores, its app, the shared counters."""
    import sys

    logger = logging.getLogger("squeezenet")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level if index == 0 else max(level, logging.WARNING))  # one worker says the runtime
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
    import signal

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
