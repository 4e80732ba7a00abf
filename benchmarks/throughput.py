"""Training throughput of full fine-tuning: images per second after warm-up.

The input is the project's real pipeline: uint8 32x32 NumPy batches, augmented and resized
inside the model, backbone fully unfrozen, Adam, compiled and fitted by
``training.fit`` with the project's callbacks. Random images and random initial weights: the
speed does not depend on either.

    python benchmarks/throughput.py --image-size 96 --batch-size 16 --steps 10   # CPU
    KERAS_BACKEND=jax python benchmarks/throughput.py --backbone resnet50         # GPU
"""

from __future__ import annotations

import argparse
import os

import common
import numpy as np
import timers

from cifar10_transfer import config, hardware, models, runs, training


def build_unfrozen_model(profile: config.Profile, train_bn: bool = False):
    """The transfer model of ``profile``, every layer training (BatchNorm if ``train_bn``)."""
    model = models.build_transfer_model(profile)
    models.set_trainable(model, config.Unfreeze.parse("all"), train_bn=train_bn)
    return model


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_model_arguments(parser, weights=None)
    common.add_timing_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_arguments(argv)
    load_before = os.getloadavg()[0]
    os.environ.setdefault("CIFAR10_VERBOSE", "0")  # no per-step progress bar in the timing
    # Like for like with reference_torch.py: Adam, BatchNorm frozen, no batch-level mixing.
    profile = common.profile_from(args, "full", **common.REFERENCE_RECIPE)
    training.set_seed(profile.seed)
    precision = hardware.configure_precision(profile.precision)
    model = build_unfrozen_model(profile)

    count = (args.warmup + args.steps) * args.batch_size
    rng = np.random.default_rng(args.seed)
    images = rng.integers(0, 256, (count, *config.IMAGE_SHAPE), dtype=np.uint8)
    labels = rng.integers(0, config.NUM_CLASSES, count)
    timer = timers.time_fine_tuning(model, profile, images, labels, args.warmup + args.steps)
    timed = timer.step_ends[args.warmup - 1 :]
    seconds = timed[-1] - timed[0]
    result = {
        "benchmark": "throughput",
        "framework": "keras",
        "backbone": args.backbone,
        "weights": args.weights,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "precision": precision,
        "steps": args.steps,
        "warmup": args.warmup,
        "input": "uint8 32x32 NumPy batches; augmentation and resizing inside the model",
        "trainable": "all (BatchNormalization frozen, inference mode)",
        "optimizer": "adam",
        "jit_compile": model.jit_compile,  # what jit_compile="auto" resolved to
        "images_per_second": args.steps * args.batch_size / seconds,
        "step_time_median_ms": 1000 * timer.median_step_s(args.warmup),
        "first_step_s": timer.first_step_s(),
        "load_average": [load_before, os.getloadavg()[0]],
        **runs.environment(),
        "command": common.command_line(),
    }
    common.write_result(result, args.out)
    print(f"{result['images_per_second']:.1f} images/s", flush=True)


if __name__ == "__main__":
    common.run(main)
