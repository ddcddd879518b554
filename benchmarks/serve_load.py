"""Load test of ``squeezenet serve`` over loopback, with bench's throughput for the same runtime.

    PYTHONPATH=src python benchmarks/serve_load.py CHECKPOINT [--requests 2000] [--concurrency 16]
        [--max-seconds 120] [--runtime auto] [--precision auto] [--json FILE]

Starts the server on 127.0.0.1 (a free port), waits for /health, sends --requests POST /predict
(one image each, --concurrency keep-alive connections, stopping at --max-seconds whatever is left),
reads /model for the runtime and how many inference calls it made, stops the server with SIGTERM,
then times that runtime in this process (``timing.measure``, as ``bench`` does) at the server's
mean batch size and at --concurrency. The image is a real one from the checkpoint's evaluation data
at the model's size (random pixels where that data is absent). Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from squeezenet.checkpoint import load_checkpoint
from squeezenet.data import normalize
from squeezenet.export import sample_images
from squeezenet.runtime import make_engine
from squeezenet.timing import measure


def image_bytes(meta) -> bytes:
    arr = sample_images(meta, 1)[0].permute(1, 2, 0).numpy()
    im = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


async def client(port: int, body: bytes, todo: list, latencies: list, failures: list, deadline: float) -> None:
    """One keep-alive connection sending requests until ``todo`` is empty or time is up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    try:
        while todo and time.perf_counter() < deadline:
            todo.pop()
            t = time.perf_counter()
            writer.write(head + body)
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t)
            if status != 200:
                failures.append(status)
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
        failures.append(type(e).__name__)
    finally:
        writer.close()


async def load(port: int, body: bytes, n: int, concurrency: int, max_seconds: float):
    todo, latencies, failures = list(range(n)), [], []
    deadline = time.perf_counter() + max_seconds
    t0 = time.perf_counter()
    await asyncio.gather(*[client(port, body, todo, latencies, failures, deadline) for _ in range(concurrency)])
    return latencies, failures, time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--runtime", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--max-wait-ms", default="5")
    p.add_argument("--bench-seconds", type=float, default=3.0)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    model, meta = load_checkpoint(args.checkpoint)
    body = image_bytes(meta)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "squeezenet", "serve", args.checkpoint, "--port", str(port),
                               "--runtime", args.runtime, "--precision", args.precision, "--no-page",
                               "--max-wait-ms", args.max_wait_ms], env=os.environ.copy())
    try:
        for _ in range(600):
            try:
                get_json(port, "/health")
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit("the server exited before it was up") from None
                time.sleep(0.2)
        asyncio.run(load(port, body, min(50, args.requests), args.concurrency, 30))  # warm-up
        before = get_json(port, "/model")
        latencies, failures, seconds = asyncio.run(load(port, body, args.requests, args.concurrency,
                                                        args.max_seconds))
        info = get_json(port, "/model")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    calls = info["inference_calls"] - before["inference_calls"]
    mean_batch = (info["images"] - before["images"]) / max(calls, 1)
    ms = np.array(latencies) * 1000
    served = {"requests": len(latencies), "failures": len(failures), "failure_kinds": sorted(set(map(str, failures))),
              "seconds": seconds, "images_per_s": len(latencies) / seconds, "p50_ms": float(np.percentile(ms, 50)),
              "p95_ms": float(np.percentile(ms, 95)), "inference_calls": calls, "mean_batch": mean_batch,
              "runtime": info["runtime"], "runtime_reason": info["runtime_reason"]}
    # bench: the same engine (the same cached choice), in this process, the server stopped
    engine = make_engine(model, meta, args.runtime, args.precision, args.checkpoint)
    pre = meta.preprocess
    sizes = sorted({max(1, round(mean_batch)), args.concurrency})
    x = normalize(sample_images(meta, 1), pre.mean, pre.std)
    benched = {b: measure({"engine": engine}, x.repeat(b, 1, 1, 1), args.bench_seconds)["engine"] for b in sizes}
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "checkpoint": args.checkpoint,
              "concurrency": args.concurrency, "threads": torch.get_num_threads(), "serve": served,
              "bench": {str(b): r for b, r in benched.items()},
              "serve_vs_bench": {str(b): served["images_per_s"] / r["images_per_s"] for b, r in benched.items()}}
    print(f"serve ({served['runtime']}): {served['requests']} requests, {served['failures']} failures, "
          f"{served['images_per_s']:.0f} img/s, p50 {served['p50_ms']:.1f} ms, p95 {served['p95_ms']:.1f} ms, "
          f"mean batch {mean_batch:.1f}")
    for b, r in benched.items():
        print(f"bench, same runtime, batch {b}: {r['images_per_s']:.0f} img/s -> serve/bench "
              f"{served['images_per_s'] / r['images_per_s']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
