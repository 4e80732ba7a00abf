"""The GPU suite: every GPU figure from one command, most wanted first.

A GPU machine may be available for minutes only, so the suite runs in priority order and
writes each result the moment it exists; a run cut off by a time limit keeps everything
before it.

1. ``throughput``: training images/s of ours against the plain-PyTorch reference, Lite0
   and ResNet-50 (random weights: speed only) at the profile's image size (compare.py).
2. ``fast``: time to 94% test accuracy (time_to_accuracy.py, the ``fast`` profile).
3. ``paper``: the MapiAI setting (10k subset, 224 px) with Lite0, head then fine-tuning.
4. ``baseline``: the baseline CNN on all training images, with augmentation (``full``'s settings).
5. ``full``: all training images with Lite0, head then fine-tuning.
6. ``seeds``: seeds 43 and 44 of ``full``, each only if the time left holds it.

Epochs are sized from the throughput that step 1 measured, so that each step fits its
budget (``BUDGET_S``); a step whose own run fails is recorded and the next one starts.
Results land where ``make reproduce`` puts them: ``results/<profile>/`` (runs published,
summary and README table regenerated) and ``benchmarks/results/``; the suite's own log,
step by step, is ``benchmarks/results/gpu_suite-<device>.json``.

    python benchmarks/gpu_suite.py --data .data/cifar10-jpeg.tar.gz      # GPU, <= 9 min
    python benchmarks/gpu_suite.py --scale tiny                          # CPU rehearsal

``--scale tiny`` runs every step end to end on tiny data and images (a few minutes on a
CPU) and writes under ``--root`` (default runs/gpu-suite-tiny/), never into results/. On the
GPU machine, ``--root`` pointed at the folder that comes back keeps what a cut-off run had
written (``benchmarks/gpu_suite.sh`` does this).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import common

from cifar10_transfer import config, data, fileio, hardware, runs, training
from cifar10_transfer.publish import reports

SCRIPTS = Path(__file__).resolve().parent
STEPS = ("throughput", "fast", "paper", "baseline", "full", "seeds")
# Wall-time budget of each step on the GPU (s), compilation included; 9 minutes in all.
BUDGET_S = {"throughput": 60, "fast": 120, "paper": 120, "baseline": 60, "full": 180}
TOTAL_BUDGET_S = 540
SUITE_BACKBONE = "efficientnet_lite0"  # ResNet-50's ImageNet weights cannot be downloaded here
COMPILE_ALLOWANCE_S = 20  # per compiled model: its first step's compilation (GPU, measured
# by throughput.py's first_step_s; replaced by the measurement once step 1 has run)
INFERENCE_SPEEDUP = 3.0  # a forward pass costs about a third of a training step
EXTRA_SEEDS = (43, 44)

# --scale tiny: the same steps on tiny data, 32 px and one epoch, on any CPU.
TINY = dict(
    train_size=200,
    val_size=100,
    test_size=200,
    image_size=32,
    batch_size=20,
    head_units=32,
    head_epochs=1,
    finetune_epochs=1,
    baseline_epochs=1,
    baseline_batch_size=50,
    needs_accelerator=False,
)
TINY_THROUGHPUT = ["--image-size", "32", "--batch-size", "8", "--steps", "2", "--warmup", "1"]


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--data", default=str(config.SHARED_DATA), help="CIFAR-10 source")
    parser.add_argument(
        "--root",
        default=None,
        help="where results/ and benchmarks results go (default: the project for --scale "
        "full, runs/gpu-suite-tiny for --scale tiny)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=TOTAL_BUDGET_S,
        help="wall-time budget of the whole suite, s (the seeds step uses what is left)",
    )
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be > 0, got {args.budget_s}")
    if not Path(args.data).exists():
        parser.error(f"--data {args.data}: no such file or folder (the CIFAR-10 tarball)")
    return args


class Suite:
    """Runs the steps, sizes their epochs and keeps the log written after every step."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.tiny = args, args.scale == "tiny"
        # Outputs: the project's results/ and benchmarks/results/, or the same layout under
        # --root (the folder that comes back from a GPU machine, even from a cut-off run);
        # run folders (models, feature caches) stay in runs/, never in what is returned.
        default_root = config.RUNS_DIR / "gpu-suite-tiny" if self.tiny else None
        root = Path(args.root).resolve() if args.root else default_root
        self.root = root or config.ROOT
        self.results = root / "results" if root else config.RESULTS_DIR
        self.bench_results = root / "benchmarks" / "results" if root else common.RESULTS_DIR
        self.update_readme = root is None
        self.runs = config.RUNS_DIR / ("gpu-suite-tiny" if self.tiny else "gpu-suite")
        self.started = time.perf_counter()
        device = hardware.device_name()
        self.log_path = self.bench_results / f"gpu_suite-{common.device_slug(device)}.json"
        self.log = {
            "benchmark": "gpu_suite",
            "scale": args.scale,
            "budget_s": args.budget_s,
            "command": common.command_line(),
            **runs.environment(),
            "steps": [],
        }
        self.throughput = None  # images/s of Lite0 training at the suite's image size
        self.compile_s = COMPILE_ALLOWANCE_S
        self.splits = {}

    # ------------------------------------------------------------ bookkeeping

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def record(self, step: str, status: str, seconds: float, **details) -> None:
        entry = {"step": step, "status": status, "seconds": round(seconds, 1), **details}
        self.log["steps"].append(entry)
        self.log["elapsed_s"] = round(self.elapsed(), 1)
        fileio.write_json(self.log_path, self.log)
        print(
            f"[gpu-suite] {step}: {status} in {seconds:.0f} s "
            f"(total {self.elapsed():.0f} s of {self.args.budget_s:.0f})",
            flush=True,
        )

    def profile(self, name: str, **overrides) -> config.Profile:
        settings = {"backbone": SUITE_BACKBONE, **(TINY if self.tiny else {}), **overrides}
        return config.profile(name, **settings)

    # ------------------------------------------------------------ sizing epochs

    def epoch_s(self, images: int, evaluated: int = 0) -> float | None:
        """Seconds of one training epoch over ``images`` plus evaluating ``evaluated``."""
        if not self.throughput:
            return None
        return images / self.throughput + evaluated / (self.throughput * INFERENCE_SPEEDUP)

    def sized(self, profile: config.Profile, budget_s: float, stages=("head", "finetune")):
        """``profile`` with its fine-tuning epochs cut to what ``budget_s`` holds at the measured
        throughput (never more than the profile's own); the profile as is when unmeasured."""
        splits = self.load(profile)
        train, val, test = len(splits.x_train), len(splits.x_val), len(splits.x_test)
        epoch = self.epoch_s(train, val)
        if epoch is None:
            print("[gpu-suite] no throughput measured: profile epochs kept", flush=True)
            return profile, None
        spent = self.compile_s * len(stages)
        if "head" in stages:  # one pass over every image to cache the features
            spent += (train + val + test) / (self.throughput * INFERENCE_SPEEDUP)
        spent += test / (self.throughput * INFERENCE_SPEEDUP) * 2  # test predictions, flip TTA
        epochs = max(1, min(profile.finetune_epochs, math.floor((budget_s - spent) / epoch)))
        sized = config.profile(profile, finetune_epochs=epochs)
        return sized, {"finetune_epochs": epochs, "estimated_epoch_s": round(epoch, 2)}

    def load(self, profile: config.Profile):
        key = (profile.train_size, profile.val_size, profile.test_size, profile.seed)
        if key not in self.splits:
            self.splits[key] = data.load_splits(profile, self.args.data)
        return self.splits[key]

    # ------------------------------------------------------------ the steps

    def throughput_step(self) -> dict:
        """compare.py for Lite0, then ResNet-50 (random weights), each in its own process."""
        outcome = {}
        for backbone in (SUITE_BACKBONE, "resnet50"):
            out = self.bench_results / f"compare-{backbone}-suite.json"
            sizes = TINY_THROUGHPUT if self.tiny else ["--steps", "30", "--warmup", "5"]
            command = [sys.executable, str(SCRIPTS / "compare.py"), "--backbone", backbone]
            command += [*sizes, "--out", str(out)]
            print("$", *command[1:], flush=True)
            if subprocess.run(command).returncode != 0:
                raise RuntimeError(f"compare.py --backbone {backbone} failed; its error is above")
            result = fileio.read_json(out)
            outcome[backbone] = {
                "ours_images_per_second": result["ours_images_per_second"],
                "ratio_ours_over_reference": result["ratio_ours_over_reference"],
                "reference_skipped": result["reference_skipped"],
            }
            if backbone == SUITE_BACKBONE:
                self.throughput = result["ours_images_per_second"]
                self.compile_s = result["ours"]["first_step_s"]
        return outcome

    def fast_step(self) -> dict:
        profile = self.profile("fast")
        splits = self.load(profile)
        epoch = self.epoch_s(len(splits.x_train), len(splits.x_val) + len(splits.x_test))
        max_epochs = profile.finetune_epochs
        if epoch:
            max_epochs = max(
                1, min(max_epochs, math.floor((BUDGET_S["fast"] - self.compile_s) / epoch))
            )
        out = self.bench_results / f"time_to_accuracy-{SUITE_BACKBONE}-suite.json"
        command = [sys.executable, str(SCRIPTS / "time_to_accuracy.py"), "--data", self.args.data]
        command += [
            "--backbone",
            SUITE_BACKBONE,
            "--max-epochs",
            str(max_epochs),
            "--out",
            str(out),
        ]
        if self.tiny:
            command += ["--image-size", "32", "--batch-size", "20", "--train-size", "200"]
            command += ["--val-size", "100", "--test-size", "200", "--target", "0.2"]
        print("$", *command[1:], flush=True)
        if subprocess.run(command).returncode != 0:
            raise RuntimeError("time_to_accuracy.py failed; its error is above")
        result = fileio.read_json(out)
        keys = ("target", "target_reached", "time_to_target_s", "epochs_to_target")
        return {"max_epochs": max_epochs, **{key: result[key] for key in keys}}

    def transfer_step(self, name: str, seed: int | None = None) -> dict:
        """Head then fine-tuning with profile ``name``; both runs published to results/."""
        profile = self.profile(name, **({"seed": seed} if seed else {}))
        budget = BUDGET_S["paper" if name == "paper" else "full"]
        profile, sizing = self.sized(profile, budget)
        outcome = {"sizing": sizing}
        folder = self.run_folder(name, seed)
        for experiment in ("head", "finetune"):
            metrics = training.run_experiment(
                experiment,
                profile,
                out_dir=folder / experiment,
                splits=self.load(profile),
            )
            self.publish(folder / experiment, name, seed)
            outcome[experiment] = {
                "test_accuracy": metrics["test_accuracy"],
                "wall_time_s": metrics["wall_time_s"],
            }
        return outcome

    def baseline_step(self) -> dict:
        # Seed 0: the baseline CNN's splits are full's (all training images), shared with step 5.
        profile = self.profile("full")
        folder = self.run_folder("full", None) / "baseline_cnn"
        metrics = training.run_experiment(
            "baseline_cnn", profile, out_dir=folder, splits=self.load(profile)
        )
        self.publish(folder, "full", None)
        return {"test_accuracy": metrics["test_accuracy"], "wall_time_s": metrics["wall_time_s"]}

    def run_folder(self, profile_name: str, seed: int | None) -> Path:
        return self.runs / profile_name / (f"seed-{seed}" if seed else "")

    def publish(self, run_folder: Path, profile_name: str, seed: int | None) -> None:
        results = self.results / profile_name
        target = results / "seeds" / str(seed) if seed else results
        runs.publish_run(run_folder, target)
        reports.write_summary(results, profile_name)
        if self.update_readme:  # the project's documents (README, docs/) show the table
            markdown = reports.results_markdown(reports.summary_table(results), profile_name)
            reports.update_document(markdown, f"results-{profile_name}")

    # ------------------------------------------------------------ running

    def run_step(self, step: str, function, *arguments) -> bool:
        begin = time.perf_counter()
        try:
            details = function(*arguments)
        except Exception as error:  # one failed step must not cost the steps after it
            traceback.print_exc()
            self.record(step, "failed", time.perf_counter() - begin, error=str(error))
            return False
        self.record(step, "done", time.perf_counter() - begin, **(details or {}))
        return True

    def run(self, steps) -> None:
        durations = {}
        for step in steps:
            if step == "seeds":
                for seed in EXTRA_SEEDS:
                    needed = durations.get("full")
                    left = self.args.budget_s - self.elapsed()
                    if needed is None or needed > left:
                        self.record(
                            f"full seed {seed}",
                            "skipped",
                            0.0,
                            reason=f"needs about {needed or 0:.0f} s, {left:.0f} s left"
                            if needed
                            else "no measured full run to size it",
                        )
                        break
                    self.run_step(f"full seed {seed}", self.transfer_step, "full", seed)
                continue
            begin = time.perf_counter()
            function = {
                "throughput": self.throughput_step,
                "fast": self.fast_step,
                "paper": lambda: self.transfer_step("paper"),
                "baseline": self.baseline_step,
                "full": lambda: self.transfer_step("full"),
            }[step]
            if self.run_step(step, function):
                durations[step] = time.perf_counter() - begin


def main(argv=None) -> None:
    args = parse_arguments(argv)
    os.environ.setdefault("CIFAR10_VERBOSE", "0")
    suite = Suite(args)
    print(
        f"[gpu-suite] scale {args.scale}, device {hardware.device_name()}, "
        f"results under {suite.root}",
        flush=True,
    )
    suite.run(args.steps)
    failed = [entry["step"] for entry in suite.log["steps"] if entry["status"] == "failed"]
    print(f"[gpu-suite] finished in {suite.elapsed():.0f} s; log {suite.log_path}", flush=True)
    if failed:
        raise ValueError(f"steps failed: {', '.join(failed)} (see {suite.log_path})")


if __name__ == "__main__":
    common.run(main)
