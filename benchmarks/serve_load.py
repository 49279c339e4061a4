"""Load on `wbcnet serve`: single-cell POST /v1/classify requests at concurrency 1, 4 and 16.

    python -m benchmarks.serve_load [--requests 200] [--max-seconds 60] [--out benchmarks/results/serve.md]

The server is `wbcnet serve` from this checkout's src/ with the shipped model, started as a
process of its own on a free port of 127.0.0.1 (never another address). The client is this
process: N threads, each sending one real sample cell (a JPEG of 10-30 KB, the bundled cells in
turn) per request with urllib and waiting for the answer before the next. Each level stops after
`--requests` requests or `--max-seconds`, whichever comes first, after a few unmeasured warm-up
requests. Requests/s is answered requests over the level's wall time; latency is from sending a
request to having read its whole answer. Client and server share the machine's cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "src" / "wbcnet" / "assets" / "sample"
LEVELS = (1, 4, 16)


def request(url: str, name: str, data: bytes) -> urllib.request.Request:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return urllib.request.Request(url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "wbcnet", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read().decode(errors='replace').strip()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the server did not answer /healthz within 120 s")


def classified(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
        return json.loads(r.read())["classified"]


def run_level(url: str, cells: list[tuple[str, bytes]], threads: int, n: int, max_seconds: float) -> dict:
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    issued = 0
    deadline = time.monotonic() + max_seconds

    def client():
        nonlocal issued, failures
        while True:
            with lock:
                if issued >= n or time.monotonic() > deadline:
                    return
                name, data = cells[issued % len(cells)]
                issued += 1
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(request(url, name, data), timeout=60) as r:
                    r.read()
                    ok = r.status == 200
            except OSError:
                ok = False
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    failures += 1

    workers = [threading.Thread(target=client) for _ in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"threads": threads, "answered": len(latencies), "failed": failures, "wall": wall,
            "rps": len(latencies) / wall, "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p95": float(np.percentile(lat, 95)) if len(lat) else float("nan")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200, help="requests per concurrency level (default 200)")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="time cap per level (default 60)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.md"))
    args = ap.parse_args(argv)

    cells = [(p.name, p.read_bytes()) for p in sorted(SAMPLE.glob("*/*.jpg"))]
    port = free_port()
    load_before = os.getloadavg()
    server = start_server(port)
    url = f"http://127.0.0.1:{port}/v1/classify"
    try:
        run_level(url, cells, 2, 10, 30)  # warm-up: first-call allocations, oneDNN kernel choice
        rows = []
        for threads in LEVELS:
            before = classified(port)
            r = run_level(url, cells, threads, args.requests, args.max_seconds)
            after = classified(port)
            # How many requests shared each forward pass of the model (the worker's batching).
            r["per_pass"] = (after["requests"] - before["requests"]) / max(after["batches"] - before["batches"], 1)
            rows.append(r)
            print(f"concurrency {threads:>2}: {r['answered']} answered, {r['failed']} failed in {r['wall']:.1f} s: "
                  f"{r['rps']:.1f} requests/s, p50 {r['p50']:.1f} ms, p95 {r['p95']:.1f} ms, "
                  f"{r['per_pass']:.1f} requests per forward pass", flush=True)
    finally:
        server.terminate()
        server.wait(30)
    from benchmarks.common import cpu_name, git_state

    commit = git_state()
    lines = ["# wbcnet serve under load", "",
             f"Made by `python -m benchmarks.serve_load` at commit {commit}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, on {os.cpu_count()} CPU cores "
             f"({cpu_name()}; load average {load_before[0]:.2f} before the run), "
             f"Python {platform.python_version()}. Server: `wbcnet serve` with the shipped model on 127.0.0.1; "
             f"client: threads in another process on the same cores, each request one bundled sample cell "
             f"(JPEG, {np.mean([len(d) for _, d in cells]) / 1000:.0f} KB on average) to `POST /v1/classify`; "
             f"{args.requests} requests per level, at most {args.max_seconds:.0f} s.", "",
             "| concurrent clients | answered | failed | requests/s | p50 latency, ms | p95 latency, ms | "
             "requests per forward pass |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['threads']} | {r['answered']} | {r['failed']} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p95']:.1f} "
              f"| {r['per_pass']:.1f} |" for r in rows]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
