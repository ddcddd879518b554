"""The service's shutdown under load, over loopback, try after try (CI runs it).

    PYTHONPATH=src python benchmarks/serve_hardened.py [CHECKPOINT] [--runtimes openvino,onnxruntime]
        [--tries 20] [--json FILE]

Each try starts ``squeezenet serve`` (its default workers), waits until every worker is up, then
sends at once, each on its own connection: 60 valid JPEGs of varied sizes, a garbage upload, and
12 MB and 64 MB uploads (limit 10 MiB) from urllib, which reads an answer only once it has sent the
whole body. 0.2 s later it sends SIGTERM. A try passes where the service exits 0, its log holds no
"terminate called" (a native thread alive at exit) and no traceback, and every request got its
answer: 200 for the images, 400 for the garbage, 413 in JSON for the oversized bodies. Without a
CHECKPOINT, a 32 px SqueezeNet 1.1 with random weights (the speed of a dense CNN does not depend on
its weights). Bounded in count and time: at most --tries x (90 s to start + 60 s to stop) per runtime.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image


def make_checkpoint(folder: Path) -> Path:
    import torch

    from squeezenet.checkpoint import save_checkpoint
    from squeezenet.zoo import create_model

    kwargs = dict(num_classes=10, small_input=True)
    torch.manual_seed(0)
    meta = {"arch": "squeezenet1_1", "model_kwargs": kwargs, "class_names": [f"c{i}" for i in range(10)],
            "preprocess": {"image_size": 32, "in_channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3},
            "dataset": "folder", "data_dir": str(folder), "seed": 0}
    path = folder / "best.safetensors"
    save_checkpoint(path, create_model("squeezenet1_1", **kwargs), meta)
    return path


def jpegs(n: int) -> list[bytes]:
    """``n`` JPEGs of random pixels, 24 to 640 px on a side."""
    rng, out = np.random.default_rng(0), []
    for _ in range(n):
        w, h = (int(v) for v in rng.integers(24, 640, 2))
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: bytes, ctype: str) -> tuple:
    """(status, JSON answer) of one POST /predict on a connection of its own, or the error's name."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/predict", body=body, headers={"Content-Type": ctype})
        r = conn.getresponse()
        answer = json.loads(r.read())
        conn.close()
        return r.status, answer
    except Exception as e:
        return type(e).__name__, None


def post_urllib(port: int, body: bytes) -> tuple:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body, headers={"Content-Type": "image/jpeg"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except Exception as e:
        return type(e).__name__, None


def one_try(checkpoint: str, runtime: str, images: list[bytes], env: dict) -> dict:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "squeezenet", "serve", checkpoint, "--port", str(port),
                             "--runtime", runtime, "--no-page"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    log, up = [], threading.Event()

    def read_log():
        for line in proc.stdout:
            log.append(line)
            if "worker processes" in line or "SIGTERM or Ctrl-C stops it" in line:
                up.set()
    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    if not up.wait(90):
        proc.kill()
        proc.wait()
        return {"ok": False, "why": "did not start within 90 s", "log": "".join(log)[-2000:]}
    jobs = [(post, (port, data, "image/jpeg"), 200) for data in images]
    jobs += [(post, (port, b"garbage" * 100, "image/png"), 400),
             (post_urllib, (port, os.urandom(12 * 2**20)), 413), (post_urllib, (port, bytes(64_000_000)), 413)]
    results = [None] * len(jobs)
    threads = [threading.Thread(target=lambda i=i, f=f, a=a: results.__setitem__(i, f(*a)))
               for i, (f, a, _) in enumerate(jobs)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(90)
    try:
        code = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    stopped_s = time.monotonic() - signalled
    reader.join(10)
    text = "".join(log)
    wrong = [(want, got[0]) for (_, _, want), got in zip(jobs, results)
             if got is None or got[0] != want or not isinstance(got[1], dict) or
             (want != 200 and got[1].get("status") != want)]
    ok = code == 0 and not wrong and "terminate called" not in text and "Traceback" not in text
    return {"ok": ok, "exit_code": code, "stopped_s": round(stopped_s, 2),
            "statuses": dict(Counter(str(r[0]) if r else "none" for r in results)),
            "wrong": wrong[:10], "log": "" if ok else text[-3000:]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", help="default: a 32 px SqueezeNet 1.1 with random weights")
    p.add_argument("--runtimes", default="openvino,onnxruntime")
    p.add_argument("--tries", type=int, default=20)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    from squeezenet.device import cpu_name

    with tempfile.TemporaryDirectory(prefix="serve-hardened-") as tmp:
        checkpoint = args.checkpoint or str(make_checkpoint(Path(tmp)))
        env = {**os.environ, "SQUEEZENET_CACHE": str(Path(tmp) / "cache")}  # the ONNX export, once
        images, report, failed = jpegs(60), {}, 0
        for runtime in args.runtimes.split(","):
            tries, t0 = [], time.monotonic()
            for i in range(args.tries):
                r = one_try(checkpoint, runtime, images, env)
                tries.append(r)
                print(f"{runtime} try {i + 1}: {'ok' if r['ok'] else 'FAILED'}, exit {r.get('exit_code')}, "
                      f"stopped {r.get('stopped_s')} s after SIGTERM, answers {r.get('statuses')}"
                      + ("" if r["ok"] else f"\n{r.get('why', '')}{r['wrong']}\n{r['log']}"), flush=True)
            bad = sum(not r["ok"] for r in tries)
            failed += bad
            report[runtime] = {"tries": len(tries), "failed": bad, "seconds": round(time.monotonic() - t0, 1),
                               "max_stopped_s": max(r.get("stopped_s") or 0 for r in tries), "each": tries}
            print(f"{runtime}: {len(tries) - bad} of {len(tries)} tries passed")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join([Path(sys.executable).name, *sys.argv]),
                                               "machine": cpu_name(), "checkpoint": args.checkpoint or "random",
                                               "runtimes": report}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
