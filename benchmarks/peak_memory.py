"""Peak memory of a command: private (anonymous) memory apart from mapped file pages.

The decode cache is memory-mapped, so the pages of it that training touches count in a process's
resident set although the OS can drop them at any time (they are page cache); what bounds a run
is its private memory. This samples /proc/PID/status every 0.1 s and reports the peaks of
VmRSS, RssAnon and RssFile, and the kernel's own max RSS (what /usr/bin/time -v prints).

    python benchmarks/peak_memory.py --json out.json -- squeezenet train --dataset folder ...
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def sample(pid: int) -> dict[str, int]:
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return fields


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    t0 = time.time()
    proc = subprocess.Popen(command)
    peaks: dict[str, int] = {}
    while proc.poll() is None:
        for k, v in sample(proc.pid).items():
            peaks[k] = max(peaks.get(k, 0), v)
        time.sleep(0.1)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {"command": command, "exit_code": proc.returncode, "seconds": round(time.time() - t0, 1),
              "peak_bytes": peaks, "max_rss_bytes": usage.ru_maxrss * 1024}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
