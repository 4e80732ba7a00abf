"""Share of a fine-tuning step spent in the frozen blocks' forward pass.

Fine-tuning from a stage on (``hires``: ``unfreeze=stage:block4``) still runs every image
through the frozen layers before that stage at every step, although they never change.
Training the unfrozen blocks on cached activations of the frozen ones (for a few fixed
augmented views) would skip that forward pass and nothing else. Both are timed here, one after
the other, on the real pipeline: the training step of ``training.fit`` (uint8 32x32 batches,
augmented and resized inside the model, the profile's ``unfreeze``, Adam) and the forward pass
of the frozen part (to float, resize, backbone preprocessing, the backbone up to the first
trained layer) on batches of the same size. Their ratio is the most such a cache could save
per step; filling it costs one more forward pass per view. Random images and weights.

    python benchmarks/frozen_share.py --steps 8 --warmup 3   # hires: Lite2, 192 px, blocks 4-7
"""

from __future__ import annotations

import argparse
import os
import time

import common
import keras
import numpy as np
import timers

from cifar10_transfer import config, hardware, models, runs, training


def frozen_part(model: keras.Model, unfreeze: config.Unfreeze) -> keras.Model:
    """uint8 images -> what the first trained backbone layer reads: the model's own to-float,
    resize and preprocessing layers, then its backbone up to that layer (no augmentation)."""
    backbone = model.get_layer("backbone")
    chosen = models.layers_to_train(backbone, unfreeze)
    first = next((layer for layer in backbone.layers if layer.name in chosen), None)
    frozen = backbone.layers[: backbone.layers.index(first)] if first else []
    if not any(layer.weights for layer in frozen):
        raise ValueError(
            f"unfreeze: {unfreeze.description} leaves no frozen layer before a trained one; "
            "expected stage:NAME or top:N"
        )
    frozen_blocks = keras.Model(backbone.inputs, first.input, name="frozen_blocks")
    images = keras.Input(shape=config.IMAGE_SHAPE, dtype="uint8", name="images")
    x = images
    for name in ("to_float", "resize", "preprocess"):
        x = model.get_layer(name)(x)
    return keras.Model(images, frozen_blocks(x), name="frozen_part")


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_model_arguments(
        parser, backbone="efficientnet_lite2", weights=None, image_size=192, batch_size=64
    )
    common.add_timing_arguments(parser, steps=20, warmup=3)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_arguments(argv)
    load_before = os.getloadavg()[0]
    os.environ.setdefault("CIFAR10_VERBOSE", "0")  # no per-step progress bar in the timing
    # hires's recipe (unfreeze, optimizer, EMA), changed by the arguments and --set.
    profile = config.check(common.profile_from(args, "hires"))
    unfreeze = config.Unfreeze.parse(profile.unfreeze)
    if unfreeze.kind in ("head", "all"):
        raise ValueError(
            f"unfreeze={profile.unfreeze!r}: expected stage:NAME or top:N, which leave the "
            "layers before them frozen"
        )
    models.check_profile(profile, unfreeze)
    training.set_seed(profile.seed)
    precision = hardware.configure_precision(profile.precision)
    model = models.build_transfer_model(profile)
    front = frozen_part(model, unfreeze)
    models.set_trainable(model, unfreeze, train_bn=profile.train_bn)

    count = (args.warmup + args.steps) * args.batch_size
    rng = np.random.default_rng(args.seed)
    images = rng.integers(0, 256, (count, *config.IMAGE_SHAPE), dtype=np.uint8)
    labels = rng.integers(0, config.NUM_CLASSES, count)

    # The training step, as fine-tuning runs it: one epoch of warm-up + timed steps.
    timer = timers.time_fine_tuning(model, profile, images, labels, args.warmup + args.steps)
    step_s = timer.median_step_s(args.warmup)

    # The frozen part's forward pass on the same batches, after its own warm-up.
    ends = []
    for start in range(0, count, args.batch_size):
        np.asarray(front.predict_on_batch(images[start : start + args.batch_size]))
        ends.append(time.perf_counter())
    frozen_s = float(np.median(np.diff(ends[args.warmup - 1 :])))

    share = frozen_s / step_s
    result = {
        "benchmark": "frozen_share",
        "framework": "keras",
        "profile": profile.name,
        "backbone": profile.backbone,
        "weights": args.weights,
        "image_size": profile.image_size,
        "batch_size": args.batch_size,
        "precision": precision,
        "unfreeze": profile.unfreeze,
        "steps": args.steps,
        "warmup": args.warmup,
        "frozen_output_shape": list(front.output.shape[1:]),
        "step_time_median_ms": 1000 * step_s,
        "frozen_forward_median_ms": 1000 * frozen_s,
        "frozen_share": share,
        "step_speedup_ceiling": 1 / (1 - share) if share < 1 else None,
        "load_average": [load_before, os.getloadavg()[0]],
        **runs.environment(),
        "command": common.command_line(),
    }
    common.write_result(result, args.out)
    print(
        f"training step {1000 * step_s:.0f} ms, frozen part's forward pass {1000 * frozen_s:.0f}"
        f" ms: {share:.0%} of the step",
        flush=True,
    )


if __name__ == "__main__":
    common.run(main)
