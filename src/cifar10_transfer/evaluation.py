"""Metrics on plain numpy arrays: labels (N,) int and probabilities (N, classes) float.

Everything here is backend-free except ``predict_with_tta`` and ``corruption_accuracies``,
which only call ``model.predict``; the rest can be checked against values computed by hand.
``corrupt`` makes CIFAR-10-C-style corruptions of the test images, seeded.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from sklearn import metrics

from cifar10_transfer.config import CLASS_NAMES, NUM_CLASSES

EPSILON = 1e-7  # probability clip for the log loss: a confident mistake costs ~16 nats, not inf


def percent(fraction, digits: int = 1) -> str:
    """A fraction such as an accuracy as "79.7%"; "–" when missing (None or NaN).

    The one format of figures, slides, the results table and the model card.
    """
    return "–" if fraction is None or pd.isna(fraction) else f"{100 * fraction:.{digits}f}%"


def check_labels(labels, name: str, num_classes: int) -> np.ndarray:
    """``labels`` as a non-empty 1-D integer array of class indices, else ValueError."""
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError(f"{name} must hold at least one label, got an empty array")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{name} must be a 1-D integer array of shape (N,), got {labels.dtype} {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"{name} must hold class indices in 0..{num_classes - 1}")
    return labels


def _check_pair(y_true, y_pred, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    y_true = check_labels(y_true, "y_true", num_classes)
    y_pred = check_labels(y_pred, "y_pred", num_classes)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_pred must have the shape of y_true {y_true.shape}, got {y_pred.shape}")
    return y_true, y_pred


def _check_inputs(y_true, probabilities) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2:
        raise ValueError(
            f"probabilities must have shape (N, num_classes), got {probabilities.shape}"
        )
    y_true = check_labels(y_true, "y_true", probabilities.shape[1])
    if len(probabilities) != len(y_true):
        raise ValueError(
            f"probabilities must have shape ({len(y_true)}, num_classes), got {probabilities.shape}"
        )
    # Logits or a wrong axis are the usual mistakes; a softmax output sums to 1 per row
    # (to ~1e-3 even when computed in float16).
    in_range = probabilities.min() >= -1e-6 and probabilities.max() <= 1 + 1e-6
    if not in_range or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-2):
        raise ValueError("probabilities must be softmax outputs: values in [0, 1], rows sum to 1")
    return y_true, probabilities


def accuracy(y_true, probabilities) -> float:
    """Share of images whose most probable class is the true one."""
    y_true, probabilities = _check_inputs(y_true, probabilities)
    return float(np.mean(probabilities.argmax(axis=1) == y_true))


def log_loss(y_true, probabilities) -> float:
    """Mean cross-entropy (nats) of the true class, probabilities clipped to [1e-7, 1]."""
    y_true, probabilities = _check_inputs(y_true, probabilities)
    true_class_probability = probabilities[np.arange(len(y_true)), y_true]
    return float(np.mean(-np.log(np.clip(true_class_probability, EPSILON, 1.0))))


def classification_report(y_true, y_pred, class_names=CLASS_NAMES) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, plus "macro avg" and "weighted avg" rows.

    A class that is never predicted (or never present) gets 0 instead of a warning.
    """
    y_true, y_pred = _check_pair(y_true, y_pred, len(class_names))
    report = metrics.classification_report(
        y_true,
        y_pred,
        labels=range(len(class_names)),
        target_names=list(class_names),
        output_dict=True,
        zero_division=0,
    )
    report.pop("accuracy", None)  # a scalar, not a row; present only when labels cover y_*
    table = pd.DataFrame(report).T.rename(columns={"f1-score": "f1"})
    table["support"] = table["support"].astype(int)
    return table[["precision", "recall", "f1", "support"]]


def confusion_matrix(y_true, y_pred, normalize: bool = False, num_classes: int = NUM_CLASSES):
    """(classes, classes) counts, rows are true classes; ``normalize`` divides each row by its
    sum (rows of absent classes stay 0)."""
    y_true, y_pred = _check_pair(y_true, y_pred, num_classes)
    counts = metrics.confusion_matrix(y_true, y_pred, labels=range(num_classes))
    return normalize_rows(counts) if normalize else counts


def normalize_rows(counts) -> np.ndarray:
    """Each row of a count matrix divided by its sum; all-zero rows stay 0."""
    counts = np.asarray(counts, dtype=np.float64)
    row_sums = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, row_sums, out=np.zeros(counts.shape), where=row_sums > 0)


def per_class_accuracy(y_true, y_pred, class_names=CLASS_NAMES) -> dict[str, float]:
    """Class name -> share of that class's images predicted correctly (its recall);
    NaN for a class with no images."""
    counts = confusion_matrix(y_true, y_pred, num_classes=len(class_names))
    support = counts.sum(axis=1)
    return {
        name: float(counts[index, index] / support[index]) if support[index] else float("nan")
        for index, name in enumerate(class_names)
    }


def most_confused_pairs(
    y_true, y_pred, top_k: int = 5, class_names=CLASS_NAMES, symmetric: bool = False
) -> pd.DataFrame:
    """The ``top_k`` most frequent mistakes, most frequent first (ties: class order).

    Columns ``true, predicted, count, share_of_true`` (count / images of the true class).
    With ``symmetric=True`` a<->b mistakes are merged: columns ``class_a, class_b, count,
    share_of_true`` where count adds both directions and share_of_true is count / images
    of both classes. Pairs never confused are left out.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k}")
    counts = confusion_matrix(y_true, y_pred, num_classes=len(class_names))
    support = counts.sum(axis=1)
    rows = []
    for true_index in range(len(class_names)):
        for predicted_index in range(len(class_names)):
            if symmetric and predicted_index <= true_index:
                continue
            if not symmetric and predicted_index == true_index:
                continue
            count = counts[true_index, predicted_index]
            images = support[true_index]
            if symmetric:
                count += counts[predicted_index, true_index]
                images += support[predicted_index]
            if count:
                rows.append((class_names[true_index], class_names[predicted_index], count, images))
    columns = ["class_a", "class_b"] if symmetric else ["true", "predicted"]
    table = pd.DataFrame(rows, columns=[*columns, "count", "images"])
    # Stable sort keeps the class-order of equal counts, so ties come out the same every run.
    table = table.sort_values("count", ascending=False, kind="stable").head(top_k)
    table["count"] = table["count"].astype(int)
    table["share_of_true"] = table["count"] / table.pop("images")
    return table.reset_index(drop=True)


def reliability_diagram_data(y_true, probabilities, n_bins: int = 15) -> pd.DataFrame:
    """Per equal-width confidence bin (lower, upper]: mean confidence, accuracy and image count.

    Confidence is the top-class probability. Empty bins have count 0 and NaN means.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    y_true, probabilities = _check_inputs(y_true, probabilities)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Number of inner edges strictly below the confidence: bins are (lower, upper], and
    # confidence exactly on an edge falls into the bin below it as in Guo et al. (2017).
    bin_index = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(bin_index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bin_index, confidence, n_bins) / count
        bin_accuracy = np.bincount(bin_index, correct, n_bins) / count
    return pd.DataFrame(
        {
            "bin_lower": edges[:-1],
            "bin_upper": edges[1:],
            "confidence": mean_confidence,
            "accuracy": bin_accuracy,
            "count": count,
        }
    )


def expected_calibration_error(y_true, probabilities, n_bins: int = 15) -> float:
    """ECE: mean |accuracy - confidence| over equal-width bins, weighted by bin size."""
    bins = reliability_diagram_data(y_true, probabilities, n_bins)
    filled = bins[bins["count"] > 0]
    gap = (filled["accuracy"] - filled["confidence"]).abs()
    return float((gap * filled["count"]).sum() / filled["count"].sum())


def predict_with_tta(
    model, images, batch_size: int = 256, flip: bool = True, probabilities=None
) -> np.ndarray:
    """Softmax probabilities of ``model`` on uint8 NHWC ``images``; with ``flip`` the mean of
    the images' and their horizontal mirrors' probabilities (CIFAR classes are mirror-symmetric).

    ``probabilities``: the plain predictions, when the caller already has them (saves a pass).
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, height, width, channels), got {images.shape}")
    if probabilities is None:
        probabilities = model.predict(images, batch_size=batch_size, verbose=0)
    probabilities = np.asarray(probabilities)
    if flip:
        mirrored = np.ascontiguousarray(images[:, :, ::-1])
        probabilities = (
            probabilities + model.predict(mirrored, batch_size=batch_size, verbose=0)
        ) / 2
    return probabilities.astype(np.float32)


def evaluate_predictions(y_true, probabilities, class_names=CLASS_NAMES) -> dict:
    """The JSON-ready summary the CLI prints: accuracy, loss, per_class, confusion_matrix, ece."""
    y_true, probabilities = _check_inputs(y_true, probabilities)
    if probabilities.shape[1] != len(class_names):
        raise ValueError(
            f"probabilities must have one column per class ({len(class_names)}), "
            f"got {probabilities.shape[1]}"
        )
    y_pred = probabilities.argmax(axis=1)
    report = classification_report(y_true, y_pred, class_names)
    per_class = {
        name: {
            "precision": float(report.at[name, "precision"]),
            "recall": float(report.at[name, "recall"]),
            "f1": float(report.at[name, "f1"]),
            "support": int(report.at[name, "support"]),
        }
        for name in class_names
    }
    counts = confusion_matrix(y_true, y_pred, num_classes=len(class_names))
    return {
        "accuracy": accuracy(y_true, probabilities),
        "loss": log_loss(y_true, probabilities),
        "per_class": per_class,
        "confusion_matrix": counts.tolist(),
        "ece": expected_calibration_error(y_true, probabilities),
    }


# ---------------------------------------------------------------- common corruptions

# CIFAR-10-C's corruptions (Hendrycks & Dietterich 2019), made in code with that paper's
# parameters for each of its five severities; every model is measured at the same ones.
CORRUPTIONS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise std, on pixels scaled to 0..1
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # blur std, px
    "low_contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # contrast kept: (x - mean) x c + mean
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV value (0..1), hue and saturation kept
    "jpeg": (80, 65, 58, 50, 40),  # JPEG quality
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # side kept before upscaling back (box filter)
}
SEVERITIES = (3, 5)  # what is measured: moderate, and CIFAR-10-C's harshest


def corrupt(images, corruption: str, severity: int = 3, seed: int = 0) -> np.ndarray:
    """``images`` (uint8, N x 32 x 32 x 3) with ``corruption`` (a ``CORRUPTIONS`` key) at
    CIFAR-10-C ``severity`` 1..5 applied; the noise is drawn from ``seed``, so the corrupted
    set is the same every time."""
    from PIL import Image, ImageFilter

    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {', '.join(CORRUPTIONS)}, got {corruption!r}")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, height, width, 3), got {images.dtype} "
                         f"{images.shape}")  # fmt: skip
    if severity not in range(1, 6):
        raise ValueError(f"severity must be 1 to 5 (CIFAR-10-C's), got {severity!r}")
    level = CORRUPTIONS[corruption][severity - 1]
    x = images.astype(np.float32) / 255.0
    if corruption == "gaussian_noise":
        x = x + np.random.default_rng(seed).normal(0.0, level, x.shape)
    elif corruption == "low_contrast":
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = (x - mean) * level + mean
    elif corruption == "brightness":
        value = x.max(axis=-1, keepdims=True)  # HSV value; scaling RGB by V'/V keeps H and S
        brighter = np.clip(value + level, 0.0, 1.0)
        x = np.where(value > 0, x * brighter / np.maximum(value, 1e-8), brighter)
    else:  # per image, with Pillow
        side = images.shape[1]
        small = max(1, int(round(side * level))) if corruption == "pixelate" else side
        out = np.empty_like(images)
        for index, pixels in enumerate(images):
            image = Image.fromarray(pixels)
            if corruption == "gaussian_blur":
                image = image.filter(ImageFilter.GaussianBlur(radius=level))
            elif corruption == "jpeg":
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=level)
                image = Image.open(io.BytesIO(buffer.getvalue()))
            else:
                box = Image.Resampling.BOX
                image = image.resize((small, small), box).resize((side, side), box)
            out[index] = np.asarray(image.convert("RGB"))
        return out
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def corruption_accuracies(
    model, images, labels, severities=SEVERITIES, batch_size: int = 64, seed: int = 0
) -> dict:
    """Test accuracy of ``model`` on the clean images and under each of ``CORRUPTIONS`` at
    each of ``severities``, each also as a ratio of the clean one: {"clean": ...,
    "severities": {"3": {"corruptions": {name: {"accuracy", "ratio"}}, "mean_ratio"}, ...}}."""
    labels = check_labels(labels, "labels", NUM_CLASSES)

    def accuracy_on(batch):
        return accuracy(labels, model.predict(batch, batch_size=batch_size, verbose=0))

    clean = accuracy_on(images)
    measured = {}
    for severity in severities:
        results = {}
        for name in CORRUPTIONS:
            corrupted = accuracy_on(corrupt(images, name, severity, seed))
            results[name] = {"accuracy": corrupted, "ratio": corrupted / clean if clean else 0.0}
        ratios = [result["ratio"] for result in results.values()]
        measured[str(severity)] = {"corruptions": results, "mean_ratio": float(np.mean(ratios))}
    return {"clean": clean, "severities": measured, "seed": seed, "test_images": len(labels)}
