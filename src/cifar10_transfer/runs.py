"""Run folders: where a run writes, what it records, and how it is read back.

A run folder (``runs/<profile>/<experiment>/``, git-ignored) holds ``model.keras``,
``metrics.json`` (the numbers and their provenance: code version, backend, library versions,
device, seed, data, wall time, the profile), ``history.csv`` (one row per epoch) and
``predictions.npz`` (the test-set probabilities, so evaluation never re-runs the model).
``publish_run`` copies the small, reviewable part to ``results/<profile>/<experiment>/``.
Every file is written atomically. Keras is imported only to save or load a model.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cifar10_transfer import __version__, config, evaluation, fileio

RUN_FILES = ("model.keras", "metrics.json", "history.csv", "predictions.npz")


def run_dir(profile_name: str, experiment: str, seed: int | None = None) -> Path:
    """runs/<profile>/<experiment>, or runs/<profile>/seed-<seed>/<experiment> for an extra
    seed (``make reproduce SEEDS=N``)."""
    base = config.RUNS_DIR / profile_name
    return (base / f"seed-{seed}" if seed is not None else base) / experiment


def features_file(backbone: str, image_size: int, key: str) -> Path:
    """Where the head stage keeps the frozen backbone's pooled features (runs/features/), for
    cache key ``key`` (``"*"``: the pattern of every key's)."""
    return config.RUNS_DIR / "features" / f"{backbone}-{image_size}px-{key}.npz"


def prepare(out_dir: Path, resume: bool) -> None:
    """Make the run folder; a fresh run must not pick up an interrupted run's backup."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        shutil.rmtree(out_dir / "backup", ignore_errors=True)
        (out_dir / "history.part.csv").unlink(missing_ok=True)


# The code a run's results depend on; results/ and the README change during a reproduce.
CODE_PATHS = ("src", "notebooks", "benchmarks/*.py")


def _git(*arguments: str) -> str | None:
    """Output of ``git arguments`` in the checkout, or None without git or a repository."""
    try:
        result = subprocess.run(
            ["git", *arguments],
            cwd=config.CHECKOUT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _git_commit() -> str | None:
    return _git("rev-parse", "--short", "HEAD")


def _git_dirty() -> bool | None:
    """Whether the code differs from the commit (uncommitted changes under CODE_PATHS)."""
    status = _git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    return None if status is None else bool(status)


def code_version() -> str:
    """The code a run starts from, in words: "commit 4ad7abb", with "and uncommitted
    changes" when the code differs from it."""
    commit = _git_commit()
    if commit is None:
        return "not in a git checkout"
    return f"commit {commit}" + (" and uncommitted changes" if _git_dirty() else "")


def environment() -> dict:
    """Provenance of a run: code version, backend, library versions and device."""
    import keras

    from cifar10_transfer import hardware

    backend = keras.backend.backend()
    versions = {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "numpy": np.__version__,
        "cifar10_transfer": __version__,
    }
    backend_module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    if backend_module:
        versions[backend_module] = __import__(backend_module).__version__
    return {
        "backend": backend,
        "versions": versions,
        "device": hardware.device_name(),
        "git_commit": _git_commit(),
        "git_dirty": _git_dirty(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def record(
    experiment: config.Experiment,
    profile: config.Profile,
    splits,
    probabilities,
    history: pd.DataFrame,
    *,
    wall_time_s: float,
    precision: str,
    device_count: int,
    extra: dict,
    tta=None,
    model=None,
    out_dir: Path | None = None,
) -> dict:
    """metrics.json of a finished run: test-set numbers, what ran, where, and on what data;
    with ``out_dir``, written there with ``model``, ``history`` and the test-set predictions
    (the run folder; None on the processes that do not write it). ``tta``: the test-set
    probabilities averaged with flipped copies (fine-tuning's)."""
    report = evaluation.evaluate_predictions(splits.y_test, probabilities, splits.class_names)
    if tta is not None:
        extra = {**extra, "tta_test_accuracy": evaluation.accuracy(splits.y_test, tta)}
    from_scratch = experiment.stage == "baseline"
    metrics = {
        "experiment": experiment.name,
        "test_accuracy": report["accuracy"],
        "test_loss": report["loss"],
        **extra,
        "ece": report["ece"],
        "per_class_accuracy": {
            name: report["per_class"][name]["recall"] for name in splits.class_names
        },
        "epochs": int((history["stage"] == history["stage"].iloc[-1]).sum()),
        "wall_time_s": round(wall_time_s, 1),
        "seed": profile.seed,
        "precision": precision,
        "device_count": device_count,
        **environment(),
        "backbone": None if from_scratch else profile.backbone,
        "image_size": config.IMAGE_SHAPE[0] if from_scratch else profile.image_size,
        "data": {
            "source": splits.source,
            "verified": splits.verified,
            "train_size": len(splits.x_train),
            "val_size": len(splits.x_val),
            "test_size": len(splits.x_test),
        },
        "class_names": list(splits.class_names),
        "profile": profile.to_dict(),
    }
    if out_dir is not None:  # the run folder's four files
        with fileio.atomic_path(out_dir / "model.keras", suffix=".keras") as temporary:
            model.save(temporary)
        with fileio.atomic_path(out_dir / "predictions.npz") as temporary:
            np.savez(temporary, y_true=splits.y_test, probabilities=probabilities)
        fileio.write_text(out_dir / "history.csv", history.to_csv(index=False))
        fileio.write_json(out_dir / "metrics.json", metrics)
    return metrics


MAX_TEST_IMAGES = 10_000  # CIFAR-10's test set: the most rows a predictions.npz may hold


@dataclass(frozen=True)
class Run:
    path: Path
    metrics: dict
    history: pd.DataFrame
    y_true: np.ndarray
    probabilities: np.ndarray

    @property
    def label(self) -> str:
        return experiment_label(self.metrics)

    @property
    def predicted(self) -> np.ndarray:
        """The predicted class of each test image."""
        return self.probabilities.argmax(axis=1)


def experiment_label(metrics: dict) -> str:
    """The table label of a run, from the list of experiments."""
    experiment = config.EXPERIMENTS.get(metrics["experiment"])
    template = experiment.label if experiment else metrics["experiment"]
    return template.format(backbone=metrics.get("backbone") or "")


def load_model(path: str | os.PathLike):
    """Load ``model.keras`` (or the one inside a run folder) with ``safe_mode=True``."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.keras"
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such model file (expected a .keras file or a run "
            "folder holding model.keras)"
        )
    if not zipfile.is_zipfile(path):
        # Keras would call an empty or truncated file "File not found".
        raise ValueError(
            f"{path}: not a .keras model (a zip archive): {path.stat().st_size:,} bytes, "
            "empty or truncated; train or export it again"
        )
    import keras

    # For its side effect: it registers RandomAffine, the augmentation layer of trained models.
    from cifar10_transfer import models  # noqa: F401

    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as error:  # Keras raises many types for a bad archive
        raise ValueError(f"{path}: {_refusal(error)}; {EXPECTED_MODEL}") from None
    inputs, outputs = tuple(model.input_shape[1:]), model.output_shape[-1]
    if inputs != config.IMAGE_SHAPE or outputs != config.NUM_CLASSES:
        raise ValueError(
            f"{path}: the model takes {inputs} inputs and has {outputs} outputs; a CIFAR-10 "
            f"model takes 32x32 RGB images {config.IMAGE_SHAPE} and has "
            f"{config.NUM_CLASSES} outputs, one per class"
        )
    return model


EXPECTED_MODEL = "expected a .keras model saved by cifar10-transfer (train or export)"
# What safe_mode=True refused, by the start of Keras's own message (its root cause).
REFUSALS = {
    "Requested the deserialization of a `Lambda`": "it holds a Lambda layer, whose Python code "
    "safe_mode=True does not run",
    "Requested the loading of a vocabulary file outside": "it reads a vocabulary file from "
    "outside its archive, which safe_mode=True refuses",
    "Cannot deserialize `": "it calls a function that is not a layer, which safe_mode=True refuses",
}


def _refusal(error: BaseException) -> str:
    """Why Keras refused a model file, in a few words: the first sentence of the innermost
    error (Keras wraps the cause in errors that print the whole model configuration)."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    message = fileio.one_line(error)
    for start, reason in REFUSALS.items():
        if message.startswith(start):
            return f"refused: {reason}"
    located = re.match(r"Could not locate class '([^']+)'", message)
    if located:
        return (
            f"refused: it uses the class {located[1]!r}, which neither Keras nor "
            "cifar10_transfer defines"
        )
    return f"not a loadable Keras model ({message.split('. ')[0]})"


def run_profile(path: str | os.PathLike):
    """The profile a transfer run trained with, from its folder's metrics.json (``path``: the
    folder or its model.keras); ValueError for a file outside a run folder or a baseline."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    try:
        metrics = fileio.read_json(folder / "metrics.json")
        settings = dict(metrics["profile"])
        base = settings.pop("name")
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(
            f"{folder}: no run folder's metrics.json with its profile; expected the folder "
            "of a transfer run (runs/<profile>/head or finetune)"
        ) from None
    if not metrics.get("backbone"):
        raise ValueError(f"{folder}: a from-scratch baseline, not a transfer run")
    return config.profile(str(base), **settings)


def load_run(run_dir: str | os.PathLike) -> Run:
    """Metrics, history and stored test predictions of one run folder."""
    run_dir = Path(run_dir)
    metrics = fileio.read_json(run_dir / "metrics.json")
    predictions = run_dir / "predictions.npz"
    if not predictions.exists():
        raise FileNotFoundError(f"{predictions}: missing; rerun the experiment to create it")
    with np.load(predictions, allow_pickle=False) as stored:
        y_true, probabilities = stored["y_true"], stored["probabilities"]
    rows = len(y_true)
    if (
        y_true.ndim != 1
        or not 0 < rows <= MAX_TEST_IMAGES
        or probabilities.shape != (rows, len(metrics.get("class_names", config.CLASS_NAMES)))
    ):
        raise ValueError(
            f"{predictions}: expected y_true of 1 to {MAX_TEST_IMAGES:,} test labels and one "
            f"probability per class for each, got {y_true.shape} and {probabilities.shape}"
        )
    return Run(run_dir, metrics, pd.read_csv(run_dir / "history.csv"), y_true, probabilities)


def best_trained(profile_name: str, experiments) -> Path | None:
    """The run folder of the first of ``experiments`` (best first) whose model was trained on
    this machine (``runs/<profile>/<experiment>/model.keras``), or None."""
    for experiment in experiments:
        folder = run_dir(profile_name, experiment)
        if (folder / "model.keras").is_file():
            return folder
    return None


def publish_run(
    run_dir: str | os.PathLike, results_dir: str | os.PathLike, predictions: bool = True
) -> Path:
    """Copy a run's metrics.json, history.csv and (with ``predictions``) its test-set
    predictions.npz to ``results_dir/<experiment>/``: with them, notebook 05 analyses the
    committed results in a fresh runtime. The model itself stays in the run folder."""
    run = Path(run_dir)
    experiment = fileio.read_json(run / "metrics.json")["experiment"]
    target = Path(results_dir) / experiment
    target.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.json", "history.csv", *(["predictions.npz"] if predictions else [])):
        with fileio.atomic_path(target / name) as temporary:
            shutil.copyfile(run / name, temporary)
    return target
