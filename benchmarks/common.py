"""Shared by the benchmark scripts: arguments, result paths, the command line, JSON output.

No Keras here: the PyTorch reference imports this module too.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from cifar10_transfer import config, fileio

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The recipe of the plain-PyTorch reference (reference_torch.py), which the throughput
# comparison holds ours to: Adam, BatchNorm frozen, augmentation inside the model only. The
# rate does not change the speed, but a diverging one does: at the GPU profiles' 0.01 (an SGD
# rate) Adam turns ResNet-50's loss non-finite within a few steps, and training stops.
REFERENCE_RECIPE = dict(
    augment=True,
    train_bn=False,
    optimizer="adam",
    finetune_learning_rate=1e-4,
    weight_decay=0.0,
    warmup_epochs=0.0,
    use_ema=False,
    stochastic_depth=0.0,
    mixing="none",
    randaugment=False,
)


def weights_argument(text: str):
    """--weights: "imagenet", "none" (random init) or a weights file path."""
    return None if text.lower() == "none" else text


def size_argument(text: str):
    """--train-size / --test-size: a number of images, or "all"."""
    if text.lower() in ("all", "none"):
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of images or 'all', got {text!r}")
    return int(text)


def count_argument(text: str) -> int:
    """A count such as --steps, --warmup or --repeats: a whole number, at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def add_timing_arguments(parser: argparse.ArgumentParser, steps: int = 50, warmup: int = 5):
    """--steps (timed, after the warm-up) and --warmup (untimed first steps: compilation,
    caches), each at least 1."""
    parser.add_argument(
        "--steps", type=count_argument, default=steps, help="timed steps, after the warm-up"
    )
    parser.add_argument(
        "--warmup",
        type=count_argument,
        default=warmup,
        help="untimed first steps (compilation, caches); at least 1",
    )


def add_model_arguments(parser: argparse.ArgumentParser, **defaults) -> None:
    """--backbone, --weights, --image-size, --batch-size, --precision, --seed, --set, --out."""
    parser.add_argument(
        "--backbone",
        default=defaults.get("backbone", "efficientnet_lite0"),
        help="efficientnet_lite0 or a keras.applications name, e.g. resnet50",
    )
    parser.add_argument(
        "--weights",
        type=weights_argument,
        default=defaults.get("weights", "imagenet"),
        help="imagenet, none (random init) or a weights file",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=defaults.get("image_size", 224),
        help="px side the 32x32 input is resized to inside the model",
    )
    parser.add_argument("--batch-size", type=int, default=defaults.get("batch_size", 256))
    parser.add_argument(
        "--precision",
        choices=config.PRECISIONS,
        default="auto",
        help="auto: float32 on a CPU, mixed_float16 below compute capability 8.0, "
        "mixed_bfloat16 from 8.0",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other Profile setting, as in the CLI (config.parse_setting); repeatable",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="result file (default: benchmarks/results/"
        "<benchmark>-<backbone>-<device>-<backend>.json)",
    )


def add_data_arguments(parser: argparse.ArgumentParser, profile) -> None:
    """--data, --train-size, --val-size, --test-size, defaulting to ``profile``'s sizes."""
    parser.add_argument("--data", default=str(config.SHARED_DATA), help="CIFAR-10 source")
    parser.add_argument(
        "--train-size",
        type=size_argument,
        default=profile.train_size,
        help=f"training images, or 'all' (default: the {profile.name} profile's)",
    )
    parser.add_argument("--val-size", type=int, default=profile.val_size)
    parser.add_argument(
        "--test-size",
        type=size_argument,
        default=profile.test_size,
        help=f"test images, or 'all' (default: the {profile.name} profile's)",
    )


def profile_from(args: argparse.Namespace, base: str, **fixed):
    """Profile ``base`` with the model arguments, then ``--set``, then ``fixed`` (what the
    benchmark itself requires) applied: the one override mechanism of CLI and notebooks."""
    settings = dict(
        backbone=args.backbone,
        weights=args.weights,
        image_size=args.image_size,
        batch_size=args.batch_size,
        precision=args.precision,
        seed=args.seed,
    )
    settings.update(config.parse_setting(text) for text in args.set)
    return config.profile(base, **{**settings, **fixed})


def device_slug(device: str) -> str:
    """'cpu (x86_64, 2 cores)' -> 'cpu'; 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    if device.startswith("cpu"):
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")


def command_line() -> str:
    """The command as typed, with the Keras backend when it was chosen by environment."""
    prefix = (
        [f"KERAS_BACKEND={os.environ['KERAS_BACKEND']}"] if "KERAS_BACKEND" in os.environ else []
    )
    return " ".join(prefix + [shlex.join(["python", *sys.argv])])


def write_result(result: dict, out: str | None) -> Path:
    """Write ``result`` (atomic) to ``out`` or its default path; print and return the path."""
    if out is None:
        name = "-".join(
            [
                result["benchmark"],
                result["backbone"],
                device_slug(result["device"]),
                result["backend"],
            ]
        )
        out = RESULTS_DIR / f"{name}.json"
    fileio.write_json(out, result)
    print(f"wrote {out}", flush=True)
    return Path(out)


def run_script(script: str, args: argparse.Namespace, out: Path, backend: str | None = None):
    """Run benchmark ``script`` (throughput.py or reference_torch.py) in a subprocess with the
    speed settings of ``args`` and random weights, on ``backend`` when given; return its JSON."""
    options = {
        "--backbone": args.backbone,
        "--weights": "none",
        "--image-size": args.image_size,
        "--batch-size": args.batch_size,
        "--precision": args.precision,
        "--seed": args.seed,
        "--steps": args.steps,
        "--warmup": args.warmup,
        "--out": out,
    }
    command = [sys.executable, str(Path(__file__).resolve().parent / script)]
    command += [str(part) for option in options.items() for part in option]
    environment = dict(os.environ, **({"KERAS_BACKEND": backend} if backend else {}))
    print("$", *([f"KERAS_BACKEND={backend}"] if backend else []), *command[1:], flush=True)
    if subprocess.run(command, env=environment).returncode != 0:
        raise ValueError(
            f"{script}{f' on {backend}' if backend else ''} failed; its error is above"
        )
    return fileio.read_json(out)


def run(main) -> None:
    """Call ``main()``; expected failures print ``error: <message>`` and exit 2, as the CLI does."""
    try:
        main()
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
