"""Capacity, a soak at 80% of it and an overload at 3x, of ``squeezenet serve`` over loopback.

    PYTHONPATH=src python benchmarks/serve_soak.py CHECKPOINT --images DIR [--capacity-seconds 20]
        [--soak-seconds 660] [--overload-seconds 120] [--json FILE] [-- SERVE FLAGS...]

Starts the service (its defaults; flags after ``--`` go to it) and an asyncio load generator
(uvloop) in this process, both on this machine: their CPU seconds are reported apart.

- capacity: closed loop, valid images only, at 16, 32 and 64 keep-alive connections for
  --capacity-seconds each: the most images per second answered 200.
- soak: open loop (Poisson arrivals) of valid images at 80% of the capacity for --soak-seconds,
  beside them 2% bad uploads (garbage, a truncated JPEG, a wrong Content-Type, text named .jpg),
  an 11 MB body every 2 s and 20 slowloris connections trickling headers (each cut at the read
  timeout and opened anew). Passes with no 5xx, every valid
  image answered 200, the workers' resident memory at the end within 5% of its level 60 s in.
- overload: open loop of valid images at 3x the capacity for --overload-seconds: each answered
  200 within --timeout-s or refused 503 at once; the 200s per second against the capacity.

Valid images: JPEGs from DIR (any tree), as they are and re-encoded with the shorter side at 480
and 1024 px (quality 90), and PNGs at 320 px: 70/17/8/5%. Bounded in time: the phases' seconds
plus the service's start and stop. Loopback only. CPU seconds of the service, of this client and
of every other process on the machine are reported for each phase.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, deque
from pathlib import Path

import numpy as np
from PIL import Image
from serve_load import cpu_seconds, machine_busy  # the same accounting as the load test

STATUS_TIMEOUT = 60.0  # the client's own bound on one answer
KEEP_ALIVE_S = 4.0  # a connection idle longer is not reused (uvicorn closes them at 5 s)


def encoded(path: Path, short: int | None, fmt: str = "JPEG") -> bytes:
    im = Image.open(path).convert("RGB")
    if short is not None:
        s = short / min(im.size)
        im = im.resize((round(im.width * s), round(im.height * s)), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def valid_images(folder: str, n: int = 200, seed: int = 0) -> list[tuple[bytes, str]]:
    """(body, Content-Type) of ``n`` valid uploads of varied sizes and formats."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    rng = random.Random(seed)
    out = []
    for path in rng.sample(files, min(n, len(files))):
        kind = rng.random()
        if kind < 0.70:
            out.append((path.read_bytes(), "image/jpeg"))
        elif kind < 0.87:
            out.append((encoded(path, 480), "image/jpeg"))
        elif kind < 0.95:
            out.append((encoded(path, 1024), "image/jpeg"))
        else:
            out.append((encoded(path, 320, "PNG"), "image/png"))
    return out


def bad_uploads(images) -> list[tuple[bytes, str, int]]:
    jpeg = images[0][0]
    text = b"this is a text file, not a JPEG\n" * 50
    form = b"--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"cat.jpg\"\r\n\r\n" + text + b"\r\n--b--\r\n"
    return [(os.urandom(5000), "image/jpeg", 400), (jpeg[:len(jpeg) // 2], "image/jpeg", 400),
            (b"<html></html>", "text/html", 415), (form, "multipart/form-data; boundary=b", 400)]


def worker_rss(pid: int) -> dict[int, int]:
    """Resident bytes of each worker process (the service's children running serve)."""
    out = {}
    for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes():
            status = Path(f"/proc/{c}/status").read_text()
            out[int(c)] = int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS")).split()[1]) * 1024
    return out


def request_bytes(body: bytes, ctype: str) -> bytes:
    return (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class Client:
    """Keep-alive connections, each one request at a time; outcomes per kind: status -> count, and
    (status, seconds) of each answer."""

    def __init__(self, port: int):
        self.port, self.idle = port, deque()
        self.counts: dict[str, Counter] = {}
        self.latency: dict[str, list] = {}

    def record(self, kind: str, status, seconds: float) -> None:
        self.counts.setdefault(kind, Counter())[str(status)] += 1
        self.latency.setdefault(kind, []).append((status, seconds))

    async def send(self, kind: str, raw: bytes) -> None:
        t0 = time.perf_counter()
        while self.idle and (t0 - self.idle[-1][2] > KEEP_ALIVE_S or self.idle[-1][0].at_eof()):
            self.idle.pop()[1].close()  # the service closes idle connections after 5 s: a client drops them first
        try:
            reader, writer, _ = self.idle.pop() if self.idle else (
                *await asyncio.open_connection("127.0.0.1", self.port), 0)
        except OSError as e:
            return self.record(kind, type(e).__name__, time.perf_counter() - t0)
        try:
            writer.write(raw)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STATUS_TIMEOUT)
            lower = head.lower()
            at = lower.find(b"content-length:")
            await reader.readexactly(int(head[at + 15:head.index(b"\r\n", at)]) if at >= 0 else 0)
            status = int(head[9:12])
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as e:
            writer.close()
            return self.record(kind, type(e).__name__, time.perf_counter() - t0)
        self.record(kind, status, time.perf_counter() - t0)
        if b"connection: close" in lower:
            writer.close()
        else:
            self.idle.append((reader, writer, time.perf_counter()))

    def reset(self) -> None:
        self.counts, self.latency = {}, {}


async def closed_loop(client: Client, raws: list[bytes], connections: int, seconds: float) -> None:
    """``connections`` clients, each sending valid images one after another for ``seconds``."""
    end = time.perf_counter() + seconds

    async def one():
        while time.perf_counter() < end:
            await client.send("valid", random.choice(raws))
    await asyncio.gather(*[one() for _ in range(connections)])


async def open_loop(client: Client, rate: float, seconds: float, pick) -> None:
    """Requests arriving at ``rate`` per second (Poisson), each sent at its time whatever came before."""
    rng, loop, tasks = np.random.default_rng(1), asyncio.get_running_loop(), set()
    start = due = loop.time()
    while due < start + seconds:
        due += rng.exponential(1 / rate)
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        kind, raw = pick()
        task = asyncio.create_task(client.send(kind, raw))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)


async def slowloris(port: int, stop: asyncio.Event, counts: Counter) -> None:
    """One connection trickling header lines, a line a second, opened anew each time the service cuts it."""
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /predict HTTP/1.1\r\n")
            while not stop.is_set() and not reader.at_eof():
                await asyncio.sleep(1)
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
            writer.close()
        except OSError:
            pass
        if not stop.is_set():
            counts["cut"] += 1
            counts["cut_after_s_max"] = max(counts["cut_after_s_max"], round(time.perf_counter() - t0))
            await asyncio.sleep(0.1)


async def oversize(port: int, stop: asyncio.Event, client: Client) -> None:
    """An 11 MB body every 2 s, sent whole before its answer is read (as urllib sends)."""
    body = os.urandom(11_000_000)
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request_bytes(body, "image/jpeg"))
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STATUS_TIMEOUT)
            client.record("oversize", int(head[9:12]), time.perf_counter() - t0)
            writer.close()
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
            client.record("oversize", type(e).__name__, time.perf_counter() - t0)
        await asyncio.sleep(2)


def summary(client: Client, seconds: float) -> dict:
    out = {}
    for kind, counts in client.counts.items():
        ok = [s for st, s in client.latency[kind] if st == 200]
        refused = [s for st, s in client.latency[kind] if st == 503]
        out[kind] = {"statuses": dict(counts), "per_s_200": len(ok) / seconds}
        for name, values in (("ms_200", ok), ("ms_503", refused)):
            if values:
                ms = np.array(values) * 1000
                out[kind][name] = {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
                                   "max": float(ms.max())}
    return out


async def phases(args, port: int, pid: int) -> dict:
    images = valid_images(args.images)
    bad = bad_uploads(images)
    raws = [request_bytes(b, c) for b, c in images]
    client, result = Client(port), {"images": {
        "count": len(images), "bytes_mean": float(np.mean([len(b) for b, _ in images])),
        "kinds": "70% as they are, 17% at 480 px, 8% at 1024 px (JPEG q90), 5% PNG 320 px"}}

    async def measured(name, coro, seconds):
        client.reset()
        server0, client0, busy0, t0 = cpu_seconds(pid), time.process_time(), machine_busy(), time.perf_counter()
        value = await coro
        wall = time.perf_counter() - t0
        server, own = cpu_seconds(pid) - server0, time.process_time() - client0
        # other processes' share: a run beside someone else's is not a measurement of this service
        result[name] = {"seconds": wall, "server_cpu_s": server, "client_cpu_s": own,
                        "other_cpu_s": machine_busy() - busy0 - server - own, **summary(client, wall)}
        return value
    await closed_loop(client, raws, 32, args.warmup_seconds)  # OpenVINO compiles the batch sizes it meets
    rates = {}
    for c in (16, 32, 64):
        await measured(f"capacity_{c}", closed_loop(client, raws, c, args.capacity_seconds), args.capacity_seconds)
        rates[c] = result[f"capacity_{c}"]["valid"]["per_s_200"]
    capacity = max(rates.values())
    result["capacity_img_s"], result["capacity_by_connections"] = capacity, rates
    print(f"capacity: {capacity:.1f} img/s ({', '.join(f'{c} connections {r:.1f}' for c, r in rates.items())})",
          flush=True)

    # soak
    stop, slow, rss = asyncio.Event(), Counter(), []
    extras = [asyncio.create_task(slowloris(port, stop, slow)) for _ in range(20)]
    extras.append(asyncio.create_task(oversize(port, stop, client)))

    async def sample_rss():
        t0 = time.perf_counter()
        while not stop.is_set():
            rss.append((time.perf_counter() - t0, worker_rss(pid)))
            await asyncio.sleep(10)
    extras.append(asyncio.create_task(sample_rss()))
    rng = random.Random(2)

    def pick():
        if rng.random() < 0.02:
            body, ctype, _ = rng.choice(bad)
            return "bad", request_bytes(body, ctype)
        return "valid", rng.choice(raws)
    await measured("soak", open_loop(client, 0.8 * capacity / 0.98, args.soak_seconds, pick), args.soak_seconds)
    stop.set()
    await asyncio.gather(*extras)
    base = next((r for t, r in rss if t >= 60), rss[0][1])
    end = rss[-1][1]
    result["soak"].update({"offered_valid_img_s": 0.8 * capacity, "slowloris": dict(slow),
                           "rss_after_60s": base, "rss_end": end,
                           "rss_growth": {str(p): end[p] / base[p] - 1 for p in base if p in end},
                           "rss_samples": [(round(t), sum(r.values())) for t, r in rss]})
    print(f"soak: {json.dumps({k: v for k, v in result['soak'].items() if k != 'rss_samples'})}", flush=True)

    # overload
    await measured("overload", open_loop(client, 3 * capacity, args.overload_seconds,
                                         lambda: ("valid", rng.choice(raws))), args.overload_seconds)
    o = result["overload"]
    o["offered_img_s"], o["vs_capacity"] = 3 * capacity, o["valid"]["per_s_200"] / capacity
    print(f"overload: {json.dumps(o)}", flush=True)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--images", required=True, help="a folder of JPEGs (any tree)")
    p.add_argument("--warmup-seconds", type=float, default=20)
    p.add_argument("--capacity-seconds", type=float, default=20)
    p.add_argument("--soak-seconds", type=float, default=660)
    p.add_argument("--overload-seconds", type=float, default=120)
    p.add_argument("--json")
    p.add_argument("serve_flags", nargs="*", help="after --: flags for squeezenet serve")
    args = p.parse_args()
    import uvloop

    from squeezenet.device import cpu_name

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "squeezenet", "serve", args.checkpoint, "--port", str(port),
                               "--no-page", *args.serve_flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    up = threading.Event()

    def relay():  # its log, as it comes (a full pipe would stall it)
        for line in server.stdout:
            sys.stderr.write(line)
            if "worker processes" in line or "stops it" in line:
                up.set()
    threading.Thread(target=relay, daemon=True).start()
    try:
        if not up.wait(120):
            raise SystemExit("the service did not start within 120 s")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/model", timeout=10) as r:
            info = json.loads(r.read())
        result = uvloop.run(phases(args, port, server.pid))
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(60)
    soak, over = result["soak"], result["overload"]
    five = [k for k, v in soak.items() if isinstance(v, dict) and any(s.startswith("5") for s in v.get("statuses", {}))]
    checks = {
        "soak: no 5xx": not five,
        "soak: every valid image 200": set(soak["valid"]["statuses"]) == {"200"},
        "soak: each bad upload its 4xx, each oversized body 413": set(soak["bad"]["statuses"]) <= {"400", "415"}
        and set(soak["oversize"]["statuses"]) == {"413"},
        "soak: memory within 5%": all(abs(g) <= 0.05 for g in soak["rss_growth"].values()),
        "overload: only 200 within the timeout or 503": set(over["valid"]["statuses"]) <= {"200", "503"}
        and over["valid"]["ms_200"]["max"] <= info["timeout_s"] * 1000,
        "overload: throughput at least 0.8x capacity": over["vs_capacity"] >= 0.8,
        "service exits 0": code == 0,
    }
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": cpu_name(),
           "cores": len(os.sched_getaffinity(0)), "checkpoint": args.checkpoint,
           "service": {k: info[k] for k in ("runtime", "workers", "max_batch", "max_queue", "timeout_s",
                                             "read_timeout_s", "max_connections")},
           **result, "checks": checks}
    for name, ok in checks.items():
        print(f"{'ok ' if ok else 'FAILED'} {name}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
