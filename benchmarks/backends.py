"""JAX against TensorFlow: throughput.py under each backend, one after the other in
subprocesses (never at the same time) with the same settings, and the ratio jax / tensorflow.

    python benchmarks/backends.py --image-size 96 --batch-size 16 --steps 20 --warmup 3   # CPU

Goal: JAX trains at least 0.8x as many images/s as TensorFlow, so the same code is
usable on either. With ``--repeats N`` each backend runs N times, in alternating order (a
change in the machine's load then hits both alike), and each backend's median counts.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import common

BACKENDS = ("tensorflow", "jax")
GOAL_RATIO = 0.8  # jax / tensorflow images per second


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_model_arguments(parser, weights=None)
    common.add_timing_arguments(parser)
    parser.add_argument(
        "--repeats", type=common.count_argument, default=1, help="runs per backend; at least 1"
    )
    args = parser.parse_args(argv)
    if args.weights is not None:
        parser.error("--weights: the comparison trains from random weights (speed only)")
    return args


def main(argv=None) -> None:
    args = parse_arguments(argv)
    runs = {backend: [] for backend in BACKENDS}
    order = []
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for backend in BACKENDS if repeat % 2 == 0 else BACKENDS[::-1]:
                out = Path(folder) / f"{backend}-{repeat}.json"
                runs[backend].append(common.run_script("throughput.py", args, out, backend))
                order.append(backend)
    speed = {
        backend: statistics.median(run["images_per_second"] for run in backend_runs)
        for backend, backend_runs in runs.items()
    }
    ratio = speed["jax"] / speed["tensorflow"]
    first, last = runs[order[0]][0], runs[order[-1]][-1]
    result = {
        "benchmark": "backends",
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "precision": runs["tensorflow"][0]["precision"],
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "images_per_second": speed,
        "ratio_jax_over_tensorflow": ratio,
        "goal_ratio": GOAL_RATIO,
        "goal_met": ratio >= GOAL_RATIO,
        "jit_compile": {backend: runs[backend][0]["jit_compile"] for backend in BACKENDS},
        "backend": "jax-vs-tensorflow",
        "versions": {**runs["tensorflow"][0]["versions"], **runs["jax"][0]["versions"]},
        "device": first["device"],
        "load_average": [first["load_average"][0], last["load_average"][1]],
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": common.command_line(),
        "order": order,
        "runs": runs,
    }
    common.write_result(result, args.out)
    print(
        f"jax / tensorflow: {ratio:.2f} (goal >= {GOAL_RATIO}: "
        f"{'met' if result['goal_met'] else 'not met'})",
        flush=True,
    )


if __name__ == "__main__":
    common.run(main)
