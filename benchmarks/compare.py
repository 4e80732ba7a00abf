"""Ours against the plain-PyTorch reference: throughput.py and reference_torch.py, one after
the other in subprocesses (never at the same time), and the ratio ours / reference per feed.

    python benchmarks/compare.py --image-size 96 --batch-size 16 --steps 10          # CPU
    KERAS_BACKEND=jax python benchmarks/compare.py --backbone resnet50                # GPU

Without torch (or, for resnet50, torchvision) the reference is recorded as skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import common


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_model_arguments(parser, weights=None)
    common.add_timing_arguments(parser)
    args = parser.parse_args(argv)
    if args.weights is not None:
        parser.error("--weights: the comparison trains from random weights (speed only)")
    return args


def missing_reference(backbone: str) -> str | None:
    """Why the reference cannot run here, or None."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install -r benchmarks/requirements.txt)"
    if backbone == "resnet50" and importlib.util.find_spec("torchvision") is None:
        return "torchvision is not installed: no resnet50 reference"
    if backbone not in ("efficientnet_lite0", "resnet50"):
        return f"no PyTorch reference for {backbone!r}"
    return None


def main(argv=None) -> None:
    args = parse_arguments(argv)
    with tempfile.TemporaryDirectory() as folder:
        ours = common.run_script("throughput.py", args, Path(folder) / "ours.json")
        skipped = missing_reference(args.backbone)
        reference = None
        if not skipped:
            reference = common.run_script(
                "reference_torch.py", args, Path(folder) / "reference.json"
            )
    ratios = {}
    if reference:
        ratios = {
            feed: ours["images_per_second"] / numbers["images_per_second"]
            for feed, numbers in reference["feeds"].items()
        }
    result = {
        "benchmark": "compare",
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "precision": ours["precision"],
        "ours_images_per_second": ours["images_per_second"],
        "reference_images_per_second": (
            {feed: numbers["images_per_second"] for feed, numbers in reference["feeds"].items()}
            if reference
            else None
        ),
        "ratio_ours_over_reference": ratios,
        "reference_skipped": skipped,
        "backend": ours["backend"],
        "versions": {**ours["versions"], **(reference["versions"] if reference else {})},
        "device": ours["device"],
        "load_average": [ours["load_average"][0], (reference or ours)["load_average"][1]],
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": common.command_line(),
        "ours": ours,
        "reference": reference,
    }
    common.write_result(result, args.out)
    for feed, ratio in ratios.items():
        print(f"ours / reference ({feed}): {ratio:.2f}", flush=True)
    if skipped:
        print(f"reference skipped: {skipped}", flush=True)


if __name__ == "__main__":
    common.run(main)
