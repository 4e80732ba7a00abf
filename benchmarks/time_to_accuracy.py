"""Wall time of full fine-tuning until the test accuracy reaches a target.

The model (ImageNet backbone, new head) is fully unfrozen from the start and trained with
``training.fit`` and the ``fast`` profile's fine-tuning recipe (the project's callbacks; the
cosine schedule spans --max-epochs). After every
epoch a callback measures the TEST accuracy and stops at the target: time-to-target on the
test set is this benchmark's definition (as in DAWNBench and airbench), not model selection.
The time counts training (with its validation and checkpoints) but not these test evaluations;
compilation (the first step's overhead over a typical step) is reported separately.

    python benchmarks/time_to_accuracy.py --backbone efficientnet_lite0 --image-size 32 \\
        --batch-size 50 --train-size 1000 --target 0.3 --max-epochs 2                # CPU
    KERAS_BACKEND=jax python benchmarks/time_to_accuracy.py                          # GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import common
import keras
import timers
from throughput import build_unfrozen_model

from cifar10_transfer import config, data, evaluation, hardware, runs, training


class TestAccuracyTarget(keras.callbacks.Callback):
    """Measures test accuracy after each epoch; stops training once it reaches ``target``."""

    def __init__(self, x_test, y_test, target: float, batch_size: int):
        super().__init__()
        self.x_test, self.y_test = x_test, y_test
        self.target, self.batch_size = target, batch_size

    def on_train_begin(self, logs=None):
        self.train_begin = time.perf_counter()
        self.evaluation_s = 0.0
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        begin = time.perf_counter()
        probabilities = self.model.predict(self.x_test, batch_size=self.batch_size, verbose=0)
        accuracy = evaluation.accuracy(self.y_test, probabilities)
        self.epochs.append(
            {
                "epoch": epoch + 1,
                "training_s": begin - self.train_begin - self.evaluation_s,
                "test_accuracy": accuracy,
                "val_accuracy": logs.get("val_accuracy") if logs else None,
            }
        )
        self.evaluation_s += time.perf_counter() - begin
        if accuracy >= self.target:
            self.model.stop_training = True


def parse_arguments(argv=None) -> argparse.Namespace:
    fast = config.PROFILES["fast"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_model_arguments(
        parser, backbone=fast.backbone, image_size=fast.image_size, batch_size=fast.batch_size
    )
    common.add_data_arguments(parser, fast)
    parser.add_argument("--target", type=float, default=0.94, help="test accuracy to reach")
    parser.add_argument("--max-epochs", type=int, default=fast.finetune_epochs)
    parser.add_argument("--learning-rate", type=float, default=fast.finetune_learning_rate)
    args = parser.parse_args(argv)
    if not 0.0 <= args.target <= 1.0:
        parser.error(f"--target must be a test accuracy in [0, 1], got {args.target}")
    if args.max_epochs < 1:
        parser.error("--max-epochs must be at least 1")
    return args


def main(argv=None) -> None:
    args = parse_arguments(argv)
    load_before = os.getloadavg()[0]
    os.environ.setdefault("CIFAR10_VERBOSE", "0")
    started = time.perf_counter()
    profile = common.profile_from(
        args,
        "fast",
        finetune_learning_rate=args.learning_rate,
        finetune_epochs=args.max_epochs,
        unfreeze="all",
        lr_schedule="cosine",
    )
    training.set_seed(profile.seed)
    precision = hardware.configure_precision(profile.precision)
    splits = data.make_splits(
        data.load_cifar10(args.data), args.train_size, args.val_size, args.test_size, args.seed
    )
    model = build_unfrozen_model(profile, train_bn=profile.train_bn)
    setup_s = time.perf_counter() - started
    steps, target = (
        timers.StepTimer(),
        TestAccuracyTarget(splits.x_test, splits.y_test, args.target, args.batch_size),
    )
    with tempfile.TemporaryDirectory() as out_dir:
        stage = dataclasses.replace(
            training.Stage.of(profile, "finetune"),
            patience=args.max_epochs,  # only the target stops training
        )
        job = training.Job(Path(out_dir), callbacks=(steps, target))
        per_epoch = training.steps_per_epoch(len(splits.x_train), stage)
        model.compile(**training.compile_arguments(stage, per_epoch))
        training.fit(model, splits.x_train, splits.y_train, splits.x_val, splits.y_val, stage, job)
    reached = [epoch for epoch in target.epochs if epoch["test_accuracy"] >= args.target]
    result = {
        "benchmark": "time_to_accuracy",
        "backbone": args.backbone,
        "weights": args.weights,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "precision": precision,
        "target": args.target,
        "max_epochs": args.max_epochs,
        "learning_rate": args.learning_rate,
        "schedule": profile.lr_schedule,
        "trainable": f"all (BatchNormalization {'training' if profile.train_bn else 'frozen'})",
        "profile": profile.to_dict(),
        "data": {
            "source": splits.source,
            "train_size": len(splits.x_train),
            "val_size": len(splits.x_val),
            "test_size": len(splits.x_test),
        },
        "target_reached": bool(reached),
        "epochs_to_target": reached[0]["epoch"] if reached else None,
        "time_to_target_s": reached[0]["training_s"] if reached else None,
        "compile_s": steps.compile_s(),
        "step_time_median_ms": 1000 * steps.median_step_s(),
        "setup_s": setup_s,
        "test_evaluation_s": target.evaluation_s,
        "best_test_accuracy": max(epoch["test_accuracy"] for epoch in target.epochs),
        "epochs": target.epochs,
        "load_average": [load_before, os.getloadavg()[0]],
        **runs.environment(),
        "command": common.command_line(),
    }
    common.write_result(result, args.out)
    outcome = (
        f"reached {args.target:.2%} after {result['epochs_to_target']} epoch(s), "
        f"{result['time_to_target_s']:.1f} s"
        if reached
        else f"did not reach {args.target:.2%} in {args.max_epochs} epoch(s)"
    )
    print(
        f"{outcome}; best {result['best_test_accuracy']:.2%}; compile {result['compile_s']:.1f} s",
        flush=True,
    )


if __name__ == "__main__":
    common.run(main)
