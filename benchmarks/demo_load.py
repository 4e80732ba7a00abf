"""The upload demo under load: latency, errors and the server's memory.

Exports a run folder as a Space (``cifar10-transfer export``), serves its ``app.py`` on
127.0.0.1 in a subprocess, and sends ``--requests`` uploads from ``--clients`` concurrent
``gradio_client`` clients, each downloading the preview image as a browser would. Records
the latency of each request (upload, predict, download), the errors, and the server's
resident memory: after one warm-up request, at its peak, after the load and after an idle
pause. ``--same-file``: every client uploads one identical file at the same moment, in
rounds, the case that raced in Gradio's output cache.

    python benchmarks/demo_load.py runs/quick/finetune --requests 200 --clients 12
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common
import numpy as np
import psutil
from PIL import Image

from cifar10_transfer import config

MAX_REQUESTS = 10_000  # a load test, not a denial of service
MAX_CLIENTS = 64
MAX_UPLOAD_SIDE = 4096  # px; the app refuses files above 10 MB anyway
SERVER_START_S = 180  # importing TensorFlow and Gradio on a busy 2-core machine is slow
REQUEST_TIMEOUT_S = 120  # one request; a slower one counts as an error
IDLE_S = 10  # pause after the load before the last memory reading, s
SAMPLE_S = 0.1  # memory sampling period, s
UPLOAD_FORMATS = ("JPEG", "PNG")
API_NAME = "/classify_upload"


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "run", nargs="?", default=str(config.RUNS_DIR / "quick" / "finetune"), help="run folder"
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument(
        "--same-file", action="store_true", help="all clients upload one file at the same moment"
    )
    parser.add_argument(
        "--cache-max-age",
        type=int,
        default=None,
        help="seconds the app keeps uploads and previews in Gradio's cache (the app's "
        "CIFAR10_CACHE_MAX_AGE_S; default: the app's own)",
    )
    parser.add_argument(
        "--upload-side", type=int, default=1024, help="px: CIFAR-10 test images enlarged to this"
    )
    parser.add_argument("--upload-format", default="JPEG", type=str.upper, choices=UPLOAD_FORMATS)
    parser.add_argument("--data", default=str(config.SHARED_DATA), help="CIFAR-10 source")
    parser.add_argument("--out", default=None, help="result file")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= MAX_REQUESTS:
        raise ValueError(f"--requests: expected 1 to {MAX_REQUESTS}, got {args.requests}")
    if not 1 <= args.clients <= MAX_CLIENTS:
        raise ValueError(f"--clients: expected 1 to {MAX_CLIENTS}, got {args.clients}")
    if not 32 <= args.upload_side <= MAX_UPLOAD_SIDE:
        raise ValueError(
            f"--upload-side: expected 32 to {MAX_UPLOAD_SIDE} px, got {args.upload_side}"
        )
    return args


def write_uploads(folder: Path, source, count: int, side: int, file_format: str) -> list[Path]:
    """``count`` photos: CIFAR-10 test images enlarged to ``side`` px, as JPEG or PNG."""
    from cifar10_transfer import data

    test = data.load_cifar10(source).x_test[:count]
    paths = []
    for index, pixels in enumerate(test):
        path = folder / f"upload-{index}.{file_format.lower()}"
        image = Image.fromarray(pixels).resize((side, side), Image.Resampling.BICUBIC)
        image.save(path, format=file_format, **({"quality": 90} if file_format == "JPEG" else {}))
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(
    space: Path, log_path: Path, cache: Path, cache_max_age: int | None
) -> tuple[subprocess.Popen, str]:
    """``python app.py`` in ``space`` on a free localhost port, with Gradio's cache in
    ``cache``; returns it and its URL."""
    port = free_port()
    environment = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(cache),
        **({"CIFAR10_CACHE_MAX_AGE_S": str(cache_max_age)} if cache_max_age else {}),
    }
    url = f"http://127.0.0.1:{port}/"
    log = open(log_path, "w")  # noqa: SIM115 - the server writes to it until it is stopped
    process = subprocess.Popen(
        [sys.executable, "app.py"], cwd=space, env=environment, stdout=log, stderr=log
    )
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + SERVER_START_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited early:\n{log_path.read_text()[-3000:]}")
        try:
            no_proxy.open(url, timeout=2).close()
            return process, url
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"app.py did not answer on {url} in time") from None
            time.sleep(0.5)


class MemorySampler(threading.Thread):
    """The peak resident memory of a process, sampled every SAMPLE_S seconds."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process, self.peak, self.done = psutil.Process(pid), 0, threading.Event()

    def rss(self) -> int:
        return self.process.memory_info().rss

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(SAMPLE_S)


def cached_files(cache: Path) -> int:
    return sum(1 for path in cache.rglob("*") if path.is_file())


def send(client, path: Path) -> tuple[float, str | None]:
    """One upload; (seconds, None) or (seconds, the error)."""
    from gradio_client import handle_file

    started = time.perf_counter()
    try:
        _, preview, message = client.predict(handle_file(str(path)), api_name=API_NAME)
        if "Best guess" not in message or not Path(preview).is_file():
            error = f"unexpected answer: {message!r}"
        else:
            Image.open(preview).load()  # the downloaded preview is a whole PNG
            error = None
    except Exception as exception:  # noqa: BLE001 - every failure is a result here
        error = f"{type(exception).__name__}: {exception}"
    return time.perf_counter() - started, error


def load(
    url: str, uploads: list[Path], requests: int, clients: int, same_file: bool, downloads: Path
) -> list[tuple[float, str | None]]:
    """``requests`` uploads from ``clients`` threads, each with its own client."""
    from gradio_client import Client

    connections = [
        Client(url, verbose=False, download_files=str(downloads / str(i))) for i in range(clients)
    ]
    rounds = -(-requests // clients)
    barrier = threading.Barrier(clients)

    def worker(index: int) -> list:
        results = []
        for round_ in range(rounds):
            request = round_ * clients + index
            if same_file:
                barrier.wait()  # every client sends in the same moment
            if request < requests:
                path = uploads[0] if same_file else uploads[request % len(uploads)]
                results.append(send(connections[index], path))
        return results

    with ThreadPoolExecutor(clients) as pool:
        return [result for results in pool.map(worker, range(clients)) for result in results]


def main(argv=None) -> None:
    args = parse_arguments(argv)  # before importing Keras: a bad setting fails at once
    import gradio

    from cifar10_transfer import runs
    from cifar10_transfer.publish import export

    load_before = os.getloadavg()[0]
    metrics = export.read_run(args.run)  # checks the run folder before anything starts
    with tempfile.TemporaryDirectory() as temporary:
        temporary = Path(temporary)
        space = export.export_run(args.run, temporary / "space")
        uploads = write_uploads(
            temporary, args.data, min(args.requests, 100), args.upload_side, args.upload_format
        )
        cache = temporary / "gradio-cache"
        process, url = start_server(space, temporary / "server.log", cache, args.cache_max_age)
        try:
            sampler = MemorySampler(process.pid)
            warm_up = load(url, uploads, 1, 1, False, temporary / "warm-up")
            if warm_up[0][1] is not None:
                raise RuntimeError(f"the warm-up request failed: {warm_up[0][1]}")
            rss_start, files_start = sampler.rss(), cached_files(cache)
            sampler.start()
            started = time.perf_counter()
            results = load(
                url, uploads, args.requests, args.clients, args.same_file, temporary / "downloads"
            )
            wall = time.perf_counter() - started
            rss_end, files_end = sampler.rss(), cached_files(cache)
            time.sleep(IDLE_S)
            rss_idle, files_idle = sampler.rss(), cached_files(cache)
            sampler.done.set()
        finally:
            process.terminate()
            process.wait(timeout=30)
    seconds = np.array([elapsed for elapsed, _ in results])
    errors = [error for _, error in results if error is not None]
    result = {
        "benchmark": "demo_load",
        "run": str(args.run),
        "backbone": metrics.get("backbone") or metrics.get("experiment"),
        "requests": args.requests,
        "clients": args.clients,
        "same_file": args.same_file,
        "upload": f"{args.upload_format}, {args.upload_side}x{args.upload_side} px (CIFAR-10 test "
        "images enlarged)",
        "wall_time_s": wall,
        "requests_per_second": args.requests / wall,
        "latency_p50_s": float(np.percentile(seconds, 50)),
        "latency_p95_s": float(np.percentile(seconds, 95)),
        "latency_max_s": float(seconds.max()),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "server_rss_mb": {
            "after_warm_up": rss_start / 2**20,
            "peak": max(sampler.peak, rss_end) / 2**20,
            "after_load": rss_end / 2**20,
            f"after_{IDLE_S}_s_idle": rss_idle / 2**20,
        },
        # Files in Gradio's cache folder: uploads, previews (and examples)
        "cache_files": {
            "after_warm_up": files_start,
            "after_load": files_end,
            f"after_{IDLE_S}_s_idle": files_idle,
        },
        "cache_max_age_s": args.cache_max_age,
        "gradio": gradio.__version__,
        "load_average": [load_before, os.getloadavg()[0]],
        **runs.environment(),
        "command": common.command_line(),
    }
    name = (
        f"demo_load-{'same-file' if args.same_file else 'varied'}-{args.clients}clients-"
        f"{args.upload_format.lower()}{args.upload_side}.json"
    )
    common.write_result(result, args.out or common.RESULTS_DIR / name)
    memory = result["server_rss_mb"]
    print(
        f"{args.requests} requests, {args.clients} clients: p50 {result['latency_p50_s']:.2f} s, "
        f"p95 {result['latency_p95_s']:.2f} s, {len(errors)} errors; server memory "
        f"{memory['after_warm_up']:.0f} -> {memory['peak']:.0f} (peak) -> "
        f"{memory['after_load']:.0f} MB",
        flush=True,
    )


if __name__ == "__main__":
    common.run(main)
