"""Package a run folder as a Gradio demo ready for Hugging Face Spaces.

``export_run(run_dir, out_dir)`` writes model.keras (the run's model without its augmentation
block, which only training uses), class_names.json, metrics.json, a model card
(README.md with the Space's front matter and the run's real test metrics), app.py,
requirements.txt and, given CIFAR-10, one example test image per class under examples/.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from cifar10_transfer import config, evaluation, fileio, imaging, models, runs
from cifar10_transfer import data as datasets

TEMPLATE_DIR = Path(__file__).parents[1] / "deploy_template"
REQUIRED_METRICS = ("test_accuracy", "test_loss", "per_class_accuracy", "class_names")


def read_run(run_dir: str | os.PathLike) -> dict:
    """Check a run folder (model.keras + metrics.json) and return its metrics."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run folder {run_dir} not found; expected a training run's folder")
    model_path = run_dir / "model.keras"
    if not model_path.is_file():
        raise ValueError(f"{model_path} not found; expected the run's trained model")
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise ValueError(f"{metrics_path} not found; expected the run's test metrics")
    metrics = fileio.read_json(metrics_path)
    missing = [key for key in REQUIRED_METRICS if key not in metrics]
    if missing:
        raise ValueError(f"{metrics_path} lacks {missing}; expected a finished run's metrics")
    accuracy = metrics["test_accuracy"]
    if not isinstance(accuracy, (int, float)) or not 0 <= accuracy <= 1:
        raise ValueError(
            f"{metrics_path}: test_accuracy must be a fraction in [0, 1], got {accuracy!r}"
        )
    return metrics


def _gradio_version() -> str:
    """The gradio pin of the Space's requirements.txt: the card's sdk_version must match it."""
    for line in (TEMPLATE_DIR / "requirements.txt").read_text().splitlines():
        if line.startswith("gradio=="):
            return line.removeprefix("gradio==").strip()
    raise ValueError(f"{TEMPLATE_DIR / 'requirements.txt'} has no gradio==VERSION pin")


def _write_inference_model(run_model: Path, model_path: Path, class_names: list[str]) -> None:
    """Save the run's model without its augmentation block (``models.inference_copy``), so the
    Space loads it with Keras alone; load the copy as the Space will (safe_mode) and check its
    input, output and predictions against the run's model."""
    original = runs.load_model(run_model)
    models.inference_copy(original).save(model_path)
    model = runs.load_model(model_path)
    input_shape = tuple(model.inputs[0].shape[1:])
    output_shape = tuple(model.outputs[0].shape[1:])
    if input_shape != config.IMAGE_SHAPE or output_shape != (len(class_names),):
        raise ValueError(
            f"{model_path}: expected input (None, 32, 32, 3) and output "
            f"(None, {len(class_names)}), got input {model.inputs[0].shape} and output "
            f"{model.outputs[0].shape}"
        )
    images = np.random.default_rng(0).integers(0, 256, (4, *config.IMAGE_SHAPE), dtype=np.uint8)
    expected = original.predict(images, verbose=0)
    # Same layers and weights: equal on a CPU; the tolerance only absorbs GPU kernel choices.
    if not np.allclose(model.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-6):
        raise ValueError(f"{model_path}: the inference copy predicts differently from {run_model}")


def _write_examples(folder: Path, data) -> str:
    """One test image per class as examples/<class>.png; return the card's note about them."""
    dataset = datasets.load_cifar10(data)
    folder.mkdir()
    for label, name in enumerate(dataset.class_names):
        first = int((dataset.y_test == label).nonzero()[0][0])  # first by index: no cherry-picking
        Image.fromarray(dataset.x_test[first]).save(folder / f"{name}.png")
    source = _file_name(dataset.source)
    return (
        f"`examples/` holds the first test image of each class from `{source}`, unedited "
        "(32x32 PNG); click one in the demo to classify it."
    )


def _file_name(source) -> str:
    """A data source without its local folders, which mean nothing on the Space."""
    return Path(str(source)).name or str(source)


def model_card(metrics: dict, run_name: str, examples_note: str) -> str:
    """README.md of the Space: front matter plus the run's metrics, data and limitations."""
    data_info = metrics.get("data") or {}
    profile = metrics.get("profile") or {}
    backbone = metrics.get("backbone")
    image_size = metrics.get("image_size") or 32
    experiment = metrics.get("experiment", "unknown")
    if backbone:
        start = "pretrained on ImageNet" if profile.get("weights", "imagenet") else "random init"
        stage = "frozen, new head trained" if experiment == "head" else "fine-tuned"
        architecture = f"{backbone} ({start}; {stage} on CIFAR-10 at {image_size} px)"
    else:
        architecture = f"`{experiment}` network trained from scratch on CIFAR-10"
    metric_rows = [
        ("test accuracy", evaluation.percent(metrics["test_accuracy"], 2)),
        ("test loss (cross-entropy)", f"{metrics['test_loss']:.4f}"),
    ]
    if metrics.get("tta_test_accuracy") is not None:
        metric_rows.append(
            ("test accuracy, with flip TTA", evaluation.percent(metrics["tta_test_accuracy"], 2))
        )
    if metrics.get("ece") is not None:
        metric_rows.append(("expected calibration error (15 bins)", f"{metrics['ece']:.4f}"))
        calibration_note = (
            f"On the test set the expected calibration error is {metrics['ece']:.3f} (the average "
            "gap between confidence and accuracy); that says nothing about images outside "
            "CIFAR-10."
        )
    else:
        calibration_note = "This run recorded no calibration measurement."
    versions = metrics.get("versions") or {}
    wall_time = metrics.get("wall_time_s")
    fields = {
        "gradio_version": _gradio_version(),
        "model_summary": architecture,
        "class_list": ", ".join(metrics["class_names"]),
        "run_name": run_name,
        "experiment": experiment,
        "profile_name": profile.get("name", "unknown"),
        "test_size": f"{data_info['test_size']:,}" if "test_size" in data_info else "the",
        "metrics_rows": "\n".join(f"| {name} | {value} |" for name, value in metric_rows),
        "per_class_rows": "\n".join(
            f"| {name} | {evaluation.percent(fraction, 2)} |"
            for name, fraction in metrics["per_class_accuracy"].items()
        ),
        "architecture": architecture,
        "resize_note": f" and resizing to {image_size}x{image_size}" if image_size != 32 else "",
        "seed": metrics.get("seed", "unknown"),
        "wall_time": f"{wall_time / 60:.1f} min" if wall_time is not None else "unknown time",
        "device": metrics.get("device", "an unrecorded device"),
        "data_source": _file_name(data_info.get("source", "unknown")),
        "data_verified": "yes" if data_info.get("verified") else "no",
        "train_size": f"{data_info.get('train_size', 0):,}",
        "val_size": f"{data_info.get('val_size', 0):,}",
        "backend": metrics.get("backend", "unknown"),
        "versions": ", ".join(f"{name} {version}" for name, version in versions.items())
        or "not recorded",
        "calibration_note": calibration_note,
        "examples_note": examples_note,
    }
    template = (TEMPLATE_DIR / "README.template.md").read_text(encoding="utf-8")
    return string.Template(template).substitute(fields)


def _looks_like_export(folder: Path) -> bool:
    return (folder / "app.py").is_file() and (folder / "model.keras").is_file()


def export_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike = "deploy",
    data=None,
    force: bool = False,
) -> Path:
    """Write the demo folder for ``run_dir`` to ``out_dir`` and return ``out_dir``.

    The folder is built beside ``out_dir`` and renamed into place, so a failure leaves nothing
    half-written. An existing ``out_dir`` is replaced only with ``force`` and only when it is
    empty or an earlier export (so ``--out .`` can never wipe a project). Without
    ``data`` the demo has no example images.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    metrics = read_run(run_dir)
    if out_dir.exists():
        if not force:
            raise ValueError(f"{out_dir} already exists; pass --force to replace it")
        if not out_dir.is_dir() or (any(out_dir.iterdir()) and not _looks_like_export(out_dir)):
            raise ValueError(
                f"{out_dir} exists and is not an earlier export (no app.py + model.keras); "
                "refusing to replace it"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.building."))
    building.chmod(0o755)  # mkdtemp makes it private; the export is meant to be shared
    try:
        _write_inference_model(
            run_dir / "model.keras", building / "model.keras", metrics["class_names"]
        )
        shutil.copyfile(run_dir / "metrics.json", building / "metrics.json")
        (building / "class_names.json").write_text(json.dumps(metrics["class_names"]) + "\n")
        for name in ("app.py", "requirements.txt"):
            shutil.copyfile(TEMPLATE_DIR / name, building / name)
        shutil.copyfile(Path(imaging.__file__), building / "imaging.py")
        if data is None:
            examples_note = (
                "No example images were exported (run `cifar10-transfer export` with "
                "`--data SRC` to add one CIFAR-10 test image per class)."
            )
        else:
            examples_note = _write_examples(building / "examples", data)
        run_name = "/".join(run_dir.resolve().parts[-2:])  # e.g. quick/finetune, no local path
        card = model_card(metrics, run_name, examples_note)
        (building / "README.md").write_text(card, encoding="utf-8")
        if out_dir.exists():
            # Two renames: POSIX cannot rename a folder onto a non-empty one.
            retired = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old."))
            os.replace(out_dir, retired / out_dir.name)
            try:
                os.replace(building, out_dir)
            except OSError:
                os.replace(retired / out_dir.name, out_dir)  # put the old export back
                raise
            finally:
                shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(building, out_dir)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return out_dir
