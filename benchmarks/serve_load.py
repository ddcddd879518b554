"""Load test of ``squeezenet serve`` over loopback, with bench's throughput for the same runtime.

    PYTHONPATH=src python benchmarks/serve_load.py CHECKPOINT [--requests 2000] [--concurrency 16]
        [--images-per-request 1] [--image PHOTO] [--max-seconds 120] [--runtime auto]
        [--precision auto] [--warmup 500] [--client python|wrk] [--json FILE]

Starts the server on 127.0.0.1 (a free port), waits for /health, sends --warmup requests (and
more while the workers compile batch sizes they met), then --requests POST /predict over the same
--concurrency keep-alive connections (--images-per-request JPEGs each, as the body or a multipart
form; stopping at --max-seconds whatever is left), reads /model for the runtime and how many
inference calls it made, stops the server with SIGTERM, then times the runtime its workers ran
(on uint8 pixels, normalised in its graph, as they run it) in this process on every core
(``timing.measure``, as ``bench`` does) at the server's mean batch size and at the images in
flight (at most 32). ``--client wrk`` sends the timed requests from wrk for --wrk-seconds.
Other processes' CPU seconds meanwhile are reported too: a run beside other work is not one of
the service.
The image is --image, or one from the checkpoint's evaluation data at the model's size (random
pixels where that data is absent), sent as a JPEG of quality 90. The server's and the load
client's CPU seconds are reported: on a small machine they share the cores. Loopback only;
bounded in count and time.
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
from squeezenet.device import cpu_name
from squeezenet.export import sample_images
from squeezenet.runtime import make_engine, nearest, repeat
from squeezenet.timing import measure


def image_bytes(meta, path=None) -> tuple[bytes, str]:
    """A JPEG (quality 90) of ``path`` or of an evaluation image at the model's size, as a camera
    or a browser sends one; and what it is."""
    if path is not None:
        im, what = Image.open(path), f"{Path(path).name} re-encoded"
    else:
        arr = sample_images(meta, 1)[0].permute(1, 2, 0).numpy()
        im, what = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr), "an evaluation image"
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue(), f"{what}, {im.width}x{im.height} JPEG, {buf.tell():,} bytes"


def request_bytes(image: bytes, n: int) -> tuple[bytes, str]:
    """The body and Content-Type of a request carrying ``n`` copies of ``image``."""
    if n == 1:
        return image, "image/jpeg"
    boundary = "squeezenetloadtest"
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"f{i}\"; filename=\"{i}.jpg\"\r\n"
             f"Content-Type: image/jpeg\r\n\r\n".encode() + image + b"\r\n" for i in range(n)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and of its children, the workers (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") + sum(cpu_seconds(int(c)) for c in children)


def machine_busy() -> float:
    """CPU seconds every process on this machine has used so far (/proc/stat: all but idle and iowait)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


class Connection:
    """One keep-alive connection, kept from the warm-up to the timed requests (the server's workers
    each take theirs: new connections would be spread anew). Lean (one read for the head, one for
    the body): on a small machine the client's CPU is the server's."""

    def __init__(self, reader, writer, request: bytes):
        self.reader, self.writer, self.request = reader, writer, request

    @classmethod
    async def open(cls, port: int, body: tuple[bytes, str]):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data, ctype = body
        return cls(reader, writer, (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
                                    f"Content-Length: {len(data)}\r\n\r\n").encode() + data)

    async def send(self, todo: list, latencies: list, failures: list, deadline: float) -> None:
        """Requests one after another until ``todo`` is empty or time is up."""
        while todo and time.perf_counter() < deadline:
            todo.pop()
            t = time.perf_counter()
            try:
                self.writer.write(self.request)
                head = await self.reader.readuntil(b"\r\n\r\n")
                at = head.lower().find(b"content-length:")
                await self.reader.readexactly(int(head[at + 15:head.index(b"\r\n", at)]) if at >= 0 else 0)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
                failures.append(type(e).__name__)
                return
            latencies.append(time.perf_counter() - t)
            if (status := int(head[9:12])) != 200:
                failures.append(status)


async def load(connections: list, n: int, max_seconds: float):
    """``n`` requests over the connections; (latencies, failures, seconds)."""
    todo, latencies, failures = list(range(n)), [], []
    deadline = time.perf_counter() + max_seconds
    t0 = time.perf_counter()
    await asyncio.gather(*[c.send(todo, latencies, failures, deadline) for c in connections])
    return latencies, failures, time.perf_counter() - t0


async def run_load(port: int, body, args, server_pid: int):
    """Warm-up (until OpenVINO has compiled the batch sizes it met), then the timed requests, over
    the same connections; (latencies, failures, seconds, /model before, server and client CPU seconds)."""
    connections = [await Connection.open(port, body) for _ in range(args.concurrency)]
    try:
        await load(connections, args.warmup, 60)
        for _ in range(600):  # OpenVINO compiles new batch sizes on a thread: until then, more warm-up
            if not (await asyncio.to_thread(get_json, port, "/model"))["compiling"]:
                break
            await load(connections, 100, 10)
        before = await asyncio.to_thread(get_json, port, "/model")
        server_cpu, client_cpu, busy = cpu_seconds(server_pid), time.process_time(), machine_busy()
        latencies, failures, seconds = await load(connections, args.requests, args.max_seconds)
        return (latencies, failures, seconds, before, cpu_seconds(server_pid) - server_cpu,
                time.process_time() - client_cpu, machine_busy() - busy)
    finally:
        for c in connections:
            c.writer.close()


WRK_SCRIPT = """
local f = assert(io.open(os.getenv("SQUEEZENET_BODY"), "rb"))
wrk.method, wrk.body = "POST", f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("SQUEEZENET_CTYPE")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "seconds": %f, "errors": %d, "status_errors": %d, "p50_ms": %f, '
    .. '"p95_ms": %f}\\n', summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50) / 1e3, latency:percentile(95) / 1e3))
end
"""


def wrk(port: int, body, concurrency: int, seconds: float, folder: Path) -> dict:
    """One run of wrk (a load generator in C, one thread: on a small machine its CPU is the
    server's, and it takes a fraction of the Python client's) for ``seconds``; its figures."""
    data, ctype = body
    (folder / "body").write_bytes(data)
    (folder / "post.lua").write_text(WRK_SCRIPT)
    env = {**os.environ, "SQUEEZENET_BODY": str(folder / "body"), "SQUEEZENET_CTYPE": ctype}
    proc = subprocess.Popen(["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                             "-s", str(folder / "post.lua"), f"http://127.0.0.1:{port}/predict"],
                            stdout=subprocess.PIPE, text=True, env=env)
    out = proc.communicate(timeout=seconds + 60)[0]
    return json.loads(next(ln for ln in out.splitlines() if ln.startswith("{")))


def run_wrk(port: int, body, args, server_pid: int):
    """run_load's figures with wrk sending the timed requests: warm-ups of 2 s until nothing
    compiles (each run's connections are spread over the workers anew), then --wrk-seconds."""
    import resource
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        for _ in range(30):
            wrk(port, body, args.concurrency, 2, Path(folder))
            if not get_json(port, "/model")["compiling"]:
                break
            time.sleep(2)
        before = get_json(port, "/model")
        server_cpu, busy = cpu_seconds(server_pid), machine_busy()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        figures = wrk(port, body, args.concurrency, args.wrk_seconds, Path(folder))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        client_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        return figures, before, cpu_seconds(server_pid) - server_cpu, client_cpu, machine_busy() - busy


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--images-per-request", type=int, default=1, help="above 1: a multipart form of that many")
    p.add_argument("--image", help="the photo to send (default: an evaluation image at the model's size)")
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--runtime", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--max-wait-ms", default="5")
    p.add_argument("--streams", help="serve's --streams (default: its own)")
    p.add_argument("--workers", help="serve's --workers (default: its own)")
    p.add_argument("--warmup", type=int, default=500, help="requests sent first, not timed (OpenVINO compiles "
                   "each batch size it meets)")
    p.add_argument("--bench-seconds", type=float, default=3.0)
    p.add_argument("--client", choices=("python", "wrk"), default="python",
                   help="what sends the timed requests: this script's asyncio client, or wrk (apt install wrk)")
    p.add_argument("--wrk-seconds", type=float, default=10.0, help="--client wrk: how long it sends")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    model, meta = load_checkpoint(args.checkpoint)
    image, what = image_bytes(meta, args.image)
    body, per = request_bytes(image, args.images_per_request), args.images_per_request
    port = free_port()
    streams = ["--streams", args.streams] if args.streams else []
    streams += ["--workers", args.workers] if args.workers else []
    server = subprocess.Popen([sys.executable, "-m", "squeezenet", "serve", args.checkpoint, "--port", str(port),
                               "--runtime", args.runtime, "--precision", args.precision, "--no-page",
                               "--max-wait-ms", args.max_wait_ms, *streams], env=os.environ.copy())
    try:
        for _ in range(600):
            try:
                get_json(port, "/health")
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit("the server exited before it was up") from None
                time.sleep(0.2)
        if args.client == "wrk":
            figures, before, server_cpu, client_cpu, busy = run_wrk(port, body, args, server.pid)
        else:
            latencies, failures, seconds, before, server_cpu, client_cpu, busy = asyncio.run(
                run_load(port, body, args, server.pid))
        info = get_json(port, "/model")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    calls = info["inference_calls"] - before["inference_calls"]
    mean_batch = (info["images"] - before["images"]) / max(calls, 1)
    if args.client == "wrk":
        n, seconds, p50, p95 = figures["requests"], figures["seconds"], figures["p50_ms"], figures["p95_ms"]
        failures = ["connection"] * figures["errors"] + ["status"] * figures["status_errors"]
    else:
        ms = np.array(latencies) * 1000
        n, p50, p95 = len(latencies), float(np.percentile(ms, 50)), float(np.percentile(ms, 95))
    served = {"client": args.client, "requests": n, "images_per_request": per, "image": what,
              "failures": len(failures), "failure_kinds": sorted(set(map(str, failures))), "seconds": seconds,
              "images_per_s": n * per / seconds, "p50_ms": p50, "p95_ms": p95, "inference_calls": calls,
              "mean_batch": mean_batch,
              "decode_seconds": info["decode_seconds"] - before["decode_seconds"],
              "inference_seconds": info["inference_seconds"] - before["inference_seconds"],
              "server_cpu_seconds": server_cpu, "client_cpu_seconds": client_cpu,
              "other_cpu_seconds": busy - server_cpu - client_cpu,  # other processes: a busy machine's run
              "runtime": info["runtime"], "runtime_reason": info["runtime_reason"]}
    # bench: the runtime the server's workers ran at each size (their runner nearest it), in this
    # process on every core, as `bench` times it, the server stopped
    sizes = sorted({max(1, round(mean_batch)), min(args.concurrency * per, 32)})
    x = sample_images(meta, 1).permute(0, 2, 3, 1).numpy()  # uint8 pixels, as the workers' engines take them
    runners = {int(b): lbl for b, lbl in info["runners"].items()}
    benched = {}
    for b in sizes:
        label = runners[nearest(runners, b)]
        engine = make_engine(model, meta, *label.split(), args.checkpoint, pixels=True)
        benched[b] = {**measure({"engine": engine}, repeat(x, b), args.bench_seconds)["engine"],
                      "runtime": label}
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "checkpoint": args.checkpoint,
              "machine": cpu_name(), "concurrency": args.concurrency, "threads": torch.get_num_threads(),
              "serve": served, "bench": {str(b): r for b, r in benched.items()},
              "serve_vs_bench": {str(b): served["images_per_s"] / r["images_per_s"] for b, r in benched.items()}}
    print(f"serve ({served['runtime']}; {what}, {per} per request): {served['requests']} requests, "
          f"{served['failures']} failures, {served['images_per_s']:.0f} img/s, p50 {served['p50_ms']:.1f} ms, "
          f"p95 {served['p95_ms']:.1f} ms, mean batch {mean_batch:.1f}; CPU seconds: server {server_cpu:.1f}, "
          f"load client {client_cpu:.1f}, other processes {served['other_cpu_seconds']:.1f}, in {seconds:.1f} s; "
          f"the streams spent {served['decode_seconds']:.1f} s decoding, {served['inference_seconds']:.1f} s in "
          f"inference")
    for b, r in benched.items():
        print(f"bench, {r['runtime']}, batch {b}: {r['images_per_s']:.0f} img/s -> serve/bench "
              f"{served['images_per_s'] / r['images_per_s']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
