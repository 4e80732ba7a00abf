"""Head stage with cached features against running the frozen backbone every epoch.

Three runs of the head stage (``training.setup``, ``head_features``, ``fit``) on the same data,
seed and epochs, without augmentation (so all see the same features): "cold" caches the
features into an empty cache (its time includes the extraction; it runs first, so it also pays
the process's warm-up), "uncached" runs the frozen backbone every epoch, "warm" reads the
features "cold" stored (what every later head run with the same backbone, image size and data
does). Goal: cached at least 10x faster, test accuracy within 0.5 points.
Dropout draws and shuffles differ between cached and uncached runs, so their accuracies differ
a little.

Cold-cache speed-up is bounded by about epochs x (train + val) / (train + val + test): the
cached run passes every image through the backbone once, test images included, while the
uncached run passes train and val images once per epoch. The per-epoch speed-up is the limit
for many epochs.

    python benchmarks/feature_cache.py --image-size 64 --train-size 4000 --val-size 500 \
        --test-size 1000 --epochs 15                                               # CPU
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import common
import timers

from cifar10_transfer import config, data, evaluation, hardware, models, runs, training

GOAL_SPEEDUP = 10.0
GOAL_ACCURACY_GAP_POINTS = 0.5


def parse_arguments(argv=None) -> argparse.Namespace:
    quick = config.PROFILES["quick"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_model_arguments(
        parser, backbone=quick.backbone, image_size=quick.image_size, batch_size=quick.batch_size
    )
    common.add_data_arguments(parser, quick)
    parser.add_argument(
        "--epochs",
        type=int,
        default=quick.head_epochs,
        help="head epochs (default: the quick profile's)",
    )
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch includes compilation)")
    return args


def run_stage(splits, profile: config.Profile, cache_features: bool, runs_dir: Path) -> dict:
    # The feature cache lives under config.RUNS_DIR: point it at this benchmark's.
    config.RUNS_DIR = runs_dir
    timer = timers.StepTimer()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        setup = training.set_up("head", profile, splits=splits, out_dir=folder, callbacks=(timer,))
        stage = setup.stage
        model = models.build_transfer_model(profile)
        model.get_layer("backbone").trainable = False
        if cache_features:  # what the head stage does: the head trains on stored features
            features = training.head_features(model, setup)
            trainee = model.get_layer("head")
            x, x_val, x_test = features["train"], features["val"], features["test"]
        else:  # the frozen backbone runs on every image in every epoch
            trainee, x, x_val, x_test = model, splits.x_train, splits.x_val, splits.x_test
        trainee.compile(
            **training.compile_arguments(stage, training.steps_per_epoch(len(x), stage))
        )
        training.fit(trainee, x, splits.y_train, x_val, splits.y_val, stage, setup.job)
        probabilities = trainee.predict(x_test, batch_size=stage.batch_size, verbose=0)
        wall_s = time.perf_counter() - started
    return {
        "wall_s": wall_s,
        "before_training_s": timer.train_begin - started,  # cold: feature extraction
        "epoch_median_s": timer.median_epoch_s(),
        "epochs": len(timer.epoch_ends),
        "test_accuracy": evaluation.accuracy(splits.y_test, probabilities),
    }


def main(argv=None) -> None:
    args = parse_arguments(argv)
    load_before = os.getloadavg()[0]
    os.environ.setdefault("CIFAR10_VERBOSE", "0")
    profile = common.profile_from(
        args,
        "quick",
        train_size=args.train_size,
        val_size=args.val_size,
        test_size=args.test_size,
        head_epochs=args.epochs,
        augment=False,
        early_stopping_patience=args.epochs,
    )
    precision = hardware.configure_precision(profile.precision)
    splits = data.make_splits(
        data.load_cifar10(args.data), args.train_size, args.val_size, args.test_size, args.seed
    )
    with tempfile.TemporaryDirectory() as runs_dir:
        cold = run_stage(splits, profile, cache_features=True, runs_dir=Path(runs_dir))
        uncached = run_stage(splits, profile, cache_features=False, runs_dir=Path(runs_dir))
        warm = run_stage(splits, profile, cache_features=True, runs_dir=Path(runs_dir))
    speedup = {
        name: uncached["wall_s"] / run["wall_s"]
        for name, run in (("cold_cache", cold), ("warm_cache", warm))
    }
    gap_points = 100 * abs(cold["test_accuracy"] - uncached["test_accuracy"])
    result = {
        "benchmark": "feature_cache",
        "backbone": args.backbone,
        "weights": args.weights,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "precision": precision,
        "epochs": args.epochs,
        "data": {
            "source": splits.source,
            "train_size": len(splits.x_train),
            "val_size": len(splits.x_val),
            "test_size": len(splits.x_test),
        },
        "cold_cache": cold,
        "uncached": uncached,
        "warm_cache": warm,
        "speedup": speedup,
        "epoch_speedup": uncached["epoch_median_s"] / cold["epoch_median_s"],
        "accuracy_gap_points": gap_points,
        "goal": f"speedup >= {GOAL_SPEEDUP:g} and accuracy gap <= "
        f"{GOAL_ACCURACY_GAP_POINTS:g} points",
        "goal_met": {
            name: value >= GOAL_SPEEDUP and gap_points <= GOAL_ACCURACY_GAP_POINTS
            for name, value in speedup.items()
        },
        "load_average": [load_before, os.getloadavg()[0]],
        "profile": profile.to_dict(),
        **runs.environment(),
        "command": common.command_line(),
    }
    common.write_result(result, args.out)
    for name, run in (("cold cache", cold), ("uncached", uncached), ("warm cache", warm)):
        print(f"{name}: {run['wall_s']:.1f} s, test accuracy {run['test_accuracy']:.2%}")
    print(
        f"speed-up: cold cache {speedup['cold_cache']:.1f}x, warm cache "
        f"{speedup['warm_cache']:.1f}x, per epoch {result['epoch_speedup']:.1f}x",
        flush=True,
    )


if __name__ == "__main__":
    common.run(main)
