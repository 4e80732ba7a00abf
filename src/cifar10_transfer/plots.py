"""Report figures from plain arrays: EDA, training curves, errors, calibration, comparison.

Every function draws one figure, saves it as a PNG (default under ``config.IMAGES_DIR``,
``path`` overrides) and returns the Figure. The figure is already closed in pyplot, so
loops don't pile up open figures and a notebook shows it once: make it the cell's value
or call ``display(fig)``. Every function also takes ``style`` (default ``STYLE``). The slide
deck places these PNGs and takes its colours from here; its two charts are drawn by
``training_curves`` and ``comparison_bars`` at their size on the slide (``size``) in slide
type sizes (``style=SLIDE_STYLE``).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import matplotlib

# Scripts, tests and the CLI are headless; a notebook (ipykernel sets MPLBACKEND) or a
# user who already imported pyplot keeps the backend they chose.
if not os.environ.get("MPLBACKEND") and "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402
from PIL import Image  # noqa: E402

from cifar10_transfer import config, fileio  # noqa: E402
from cifar10_transfer.evaluation import check_labels, normalize_rows, percent  # noqa: E402

DPI = 150
# Sizes chosen for a ~9 in wide figure shown at notebook width or on a slide.
STYLE = {
    "font.size": 12,
    "axes.titlesize": 14,
    "axes.titleweight": "bold",
    "axes.labelsize": 12,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "legend.fontsize": 11,
    "figure.titlesize": 15,
    "figure.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
}
# A chart drawn at the size of its place on a 13.3 x 7.5 in slide: no text below 18 pt.
SLIDE_STYLE = {
    **STYLE,
    **dict.fromkeys(("font.size", "axes.labelsize", "xtick.labelsize", "ytick.labelsize"), 18),
    **dict.fromkeys(("legend.fontsize", "legend.title_fontsize"), 18),
    **dict.fromkeys(("axes.titlesize", "figure.titlesize"), 20),
}
# The palette of the figures and of the slide deck (its titles, rules, footers and boxes).
TRAIN_COLOR, VALIDATION_COLOR = "#1f77b4", "#ff7f0e"
CHANNEL_COLORS = {"red": "#d62728", "green": "#2ca02c", "blue": "#1f77b4"}
TITLE_COLOR, ACCENT_COLOR, MUTED_COLOR, PANEL_COLOR = "#1f3b57", "#c0504d", "#666666", "#eef3f8"
OURS_COLOR, PRIOR_COLOR = "#2e6f9e", "#b5b5b5"  # our runs against literature figures


def _styled(function):
    """Draw under ``style`` (default STYLE) without touching the caller's global rcParams."""

    @functools.wraps(function)
    def wrapper(*args, style=STYLE, **kwargs):
        with plt.rc_context(style):
            return function(*args, **kwargs)

    return wrapper


def _save(figure, path, default_name: str):
    """Write ``figure`` as PNG through ``fileio.atomic_path``, close it in pyplot, return it."""
    path = Path(path) if path is not None else config.IMAGES_DIR / default_name
    with fileio.atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return figure


def _fitted_legend(figure, columns, **kwargs):
    """``figure.legend`` with the first of ``columns`` (numbers of columns) that fits the
    figure's width, else the last: in slide type sizes a row of labels can outgrow it."""
    for ncols in columns:
        legend = figure.legend(ncols=ncols, **kwargs)
        if ncols == columns[-1] or legend.get_window_extent().width <= 0.95 * figure.bbox.width:
            return legend
        legend.remove()


def _check_images(images, name: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(
            f"{name} must have shape (N, height, width, 3) with N >= 1, got {images.shape}"
        )
    return images


def _check_image_labels(labels, name: str, images, class_names) -> np.ndarray:
    labels = check_labels(labels, name, len(class_names))
    if len(labels) != len(images):
        raise ValueError(f"{name} must have one label per image ({len(images)}), got {len(labels)}")
    return labels


def _image_grid(
    rows: int, columns: int, cell: float, title: float = 0.0, left: float = 0.05, top: float = 0.45
):
    """A figure of ``rows`` x ``columns`` square, frameless image axes with even gaps.

    Sizes in inches: ``cell`` per image, ``title`` above each image for its title, ``left``
    for row labels, ``top`` for the figure title. Exact sizes rather than a layout engine,
    which leaves uneven gaps around fixed-aspect images.
    """
    gap, margin = 0.06, 0.05
    width = left + columns * cell + (columns - 1) * gap + margin
    height = top + rows * (cell + title) + (rows - 1) * gap + margin
    figure, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False)
    figure.subplots_adjust(
        left=left / width,
        right=1 - margin / width,
        top=1 - (top + title) / height,
        bottom=margin / height,
        wspace=gap / cell,
        hspace=(gap + title) / cell,
    )
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_frame_on(False)
    return figure, axes


def _grid_title(figure, text: str):
    """The figure title, inside the top margin that ``_image_grid`` left for it."""
    figure.suptitle(text, y=1 - 0.08 / figure.get_figheight(), va="top")


def _as_image(image) -> np.ndarray:
    """uint8 for imshow: float batches (e.g. from augmentation layers) are clipped to 0..255."""
    image = np.asarray(image)
    return image if image.dtype == np.uint8 else np.clip(image, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- exploratory analysis


@_styled
def class_distribution(y_train, y_test, class_names=config.CLASS_NAMES, path=None):
    """Images per class in the training and test sets (two panels, counts on the bars)."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.8), sharey=True, layout="constrained")
    splits = (("y_train", y_train, "Training set"), ("y_test", y_test, "Test set"))
    for axis, (name, labels, split), color in zip(
        axes, splits, (TRAIN_COLOR, VALIDATION_COLOR), strict=True
    ):
        labels = check_labels(labels, name, len(class_names))
        counts = np.bincount(labels, minlength=len(class_names))
        bars = axis.barh(class_names, counts, color=color)
        axis.bar_label(bars, labels=[f"{count:,}" for count in counts], padding=3, fontsize=10)
        axis.set_title(f"{split}: {counts.sum():,} images")
        axis.set_xlabel("Images")
        axis.set_xlim(0, counts.max() * 1.18)  # room for the count labels
    axes[0].invert_yaxis()  # class 0 on top, as in the class list
    figure.suptitle("Images per class")
    return _save(figure, path, "class_distribution.png")


@_styled
def sample_grid(
    images, labels, n_per_class: int = 8, class_names=config.CLASS_NAMES, seed: int = 0, path=None
):
    """``n_per_class`` random images of every class, one row per class."""
    images = _check_images(images)
    labels = _check_image_labels(labels, "labels", images, class_names)
    rng = np.random.default_rng(seed)
    figure, axes = _image_grid(len(class_names), n_per_class, cell=1.0, left=1.3)
    for row, name in enumerate(class_names):
        members = np.flatnonzero(labels == row)
        chosen = rng.choice(members, size=min(n_per_class, len(members)), replace=False)
        for column, index in enumerate(chosen):
            axes[row, column].imshow(images[index], interpolation="nearest")
        axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=12)
    _grid_title(figure, f"{n_per_class} random images per class")
    return _save(figure, path, "sample_grid.png")


@_styled
def channel_histograms(images, path=None):
    """Pixel-intensity distribution of the R, G and B channels (share of pixels per value)."""
    images = _check_images(images)
    figure, axis = plt.subplots(figsize=(9, 4.8), layout="constrained")
    values = np.arange(256)
    for channel, (name, color) in enumerate(CHANNEL_COLORS.items()):
        pixels = images[..., channel].ravel()
        share = np.bincount(pixels, minlength=256)[:256] / pixels.size
        label = f"{name} (mean {pixels.mean():.1f}, std {pixels.std():.1f})"
        axis.plot(values, share, color=color, linewidth=2, label=label)
    axis.set_xlim(-2, 257)  # keep the 0 and 255 spikes off the spines
    axis.set_ylim(bottom=0)
    axis.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=1))
    axis.set_xlabel("Pixel intensity (0-255)")
    axis.set_ylabel("Share of pixels")
    axis.set_title(f"Pixel intensities per channel ({len(images):,} images)")
    axis.legend(loc="upper center", frameon=False)
    return _save(figure, path, "channel_histograms.png")


@_styled
def mean_images(images, labels, class_names=config.CLASS_NAMES, path=None):
    """The per-pixel mean image of every class (two rows of five for CIFAR-10)."""
    images = _check_images(images)
    labels = _check_image_labels(labels, "labels", images, class_names)
    columns = min(5, len(class_names))
    rows = -(-len(class_names) // columns)
    figure, axes = _image_grid(rows, columns, cell=1.7, title=0.3)
    for index, (axis, name) in enumerate(zip(axes.ravel(), class_names, strict=False)):
        members = images[labels == index]
        if len(members):
            # float64 accumulation in numpy's buffered reduce: no float copy of the whole class
            axis.imshow(members.mean(axis=0, dtype=np.float64) / 255, interpolation="bilinear")
        axis.set_title(f"{name} ({len(members):,})", fontsize=12, fontweight="normal")
    _grid_title(figure, "Mean image per class")
    return _save(figure, path, "mean_images.png")


@_styled
def augmentation_examples(images, augment, n_variants: int = 5, path=None):
    """Each image (a row) in its original form, then passed ``n_variants`` times through
    ``augment``: a callable or Keras layer mapping a uint8 batch to a batch in 0..255
    (a Keras layer is called with ``training=True`` so its random transforms are active)."""
    images = _check_images(images)
    # A Keras layer exists only once keras is imported; a plain function needs no Keras at all.
    keras = sys.modules.get("keras")
    if keras is not None and isinstance(augment, keras.layers.Layer):
        augment = functools.partial(augment, training=True)
    variants = [np.asarray(augment(images)) for _ in range(n_variants)]
    figure, axes = _image_grid(len(images), n_variants + 1, cell=1.4, top=0.8)
    for row in range(len(images)):
        axes[row, 0].imshow(images[row], interpolation="nearest")
        for column, batch in enumerate(variants, start=1):
            axes[row, column].imshow(_as_image(batch[row]), interpolation="nearest")
    axes[0, 0].set_title("original", fontsize=12, fontweight="bold")
    for column in range(1, n_variants + 1):
        axes[0, column].set_title(f"augmented {column}", fontsize=11, fontweight="normal")
    _grid_title(figure, "Training augmentation: the same images, random transforms")
    return _save(figure, path, "augmentation_examples.png")


@_styled
def resolution_examples(images, image_size: int, path=None):
    """What 32x32 holds: each image (a row) as stored, resized to ``image_size`` px as the
    transfer models do inside (bilinear: smoother, with no new detail), and shrunk to 16 and
    8 px, where even the coarse shapes go."""
    images = _check_images(images)
    # (title, side in px, resampling): bilinear as the model's Resizing layer, box to shrink
    columns = [
        ("stored, 32x32", 32, Image.Resampling.NEAREST),
        (f"resized to {image_size} px", image_size, Image.Resampling.BILINEAR),
        ("16x16", 16, Image.Resampling.BOX),
        ("8x8", 8, Image.Resampling.BOX),
    ]
    figure, axes = _image_grid(len(images), len(columns), cell=1.8, top=0.8)
    for row, pixels in enumerate(images):
        for column, (_, side, resample) in enumerate(columns):
            shown = Image.fromarray(pixels).resize((side, side), resample)
            # Nearest neighbour on screen: every pixel stays visible as a block.
            axes[row, column].imshow(np.asarray(shown), interpolation="nearest")
    for column, (title, _, _) in enumerate(columns):
        axes[0, column].set_title(title, fontsize=12, fontweight="normal")
    _grid_title(figure, "What 32x32 pixels hold, and what resizing adds (nothing)")
    return _save(figure, path, "resolution.png")


# ---------------------------------------------------------------- training


@_styled
def training_curves(
    history,
    stage_boundary: int | None = None,
    learning_rate=None,
    title=None,
    path=None,
    size=(10.5, 4.6),
):
    """Loss and accuracy per epoch, training vs validation.

    ``history``: a Keras History, a dict of per-epoch lists or a DataFrame with ``loss``,
    ``accuracy`` and optionally ``val_loss``, ``val_accuracy``, ``learning_rate``.
    ``stage_boundary``: number of head-only epochs; a line marks where fine-tuning starts.
    ``learning_rate``: per-epoch values, overriding the history's; drawn on a log axis.
    ``title``: default "Training history"; "" for none (a slide has its own).
    ``size``: (width, height) in inches.
    """
    table = pd.DataFrame(getattr(history, "history", history))
    missing = {"loss", "accuracy"} - set(table.columns)
    if missing or table.empty:
        raise ValueError(
            f"history must have per-epoch columns loss and accuracy, missing {sorted(missing)}"
        )
    if learning_rate is not None:
        if len(learning_rate) != len(table):
            raise ValueError(
                f"learning_rate must have one value per epoch ({len(table)}), "
                f"got {len(learning_rate)}"
            )
        table["learning_rate"] = np.asarray(learning_rate, dtype=float)
    if stage_boundary is not None and not 0 < stage_boundary < len(table):
        raise ValueError(
            f"stage_boundary must be in 1..{len(table) - 1} epochs, got {stage_boundary}"
        )
    epochs = np.arange(1, len(table) + 1)

    figure, axes = plt.subplots(1, 2, figsize=size, layout="constrained")
    for axis, metric, label in zip(
        axes, ("loss", "accuracy"), ("Loss (cross-entropy)", "Accuracy"), strict=True
    ):
        axis.plot(epochs, table[metric], "o-", color=TRAIN_COLOR, markersize=4, label="training")
        if f"val_{metric}" in table:
            axis.plot(
                epochs,
                table[f"val_{metric}"],
                "o-",
                color=VALIDATION_COLOR,
                markersize=4,
                label="validation",
            )
        axis.set_xlabel("Epoch")
        axis.set_ylabel(label)
        axis.set_title(label.split(" ")[0])
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if stage_boundary is not None:
            # Shade the head stage; the line sits between its last and fine-tuning's first
            # epoch. Both are explained in the legend, so no label covers the curves.
            axis.axvspan(0.5, stage_boundary + 0.5, color="0.9", zorder=0)
            axis.axvline(stage_boundary + 0.5, color="0.3", linestyle="--", linewidth=1.4)
        axis.set_xlim(0.5, len(table) + 0.5)
    axes[1].yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))

    handles, labels = axes[0].get_legend_handles_labels()
    if stage_boundary is not None:
        handles += [Patch(color="0.9"), axes[0].lines[-1]]
        labels += [
            f"head only (epochs 1-{stage_boundary})",
            f"fine-tuning starts (epoch {stage_boundary + 1})",
        ]
    if "learning_rate" in table:
        rate_axis = axes[0].twinx()
        rate_axis.spines["right"].set_visible(True)
        (rate_line,) = rate_axis.plot(
            epochs,
            table["learning_rate"],
            color="0.45",
            linestyle=":",
            linewidth=2,
            label="learning rate",
        )
        rate_axis.set_yscale("log")
        rate_axis.set_ylabel("Learning rate (log)", color="0.35")
        handles.append(rate_line)
        labels.append("learning rate")
    _fitted_legend(
        figure,
        (len(handles), -(-len(handles) // 2)),  # one row, else two
        handles=handles,
        labels=labels,
        loc="outside lower center",
        frameon=False,
    )
    if title != "":
        figure.suptitle(title or "Training history")
    return _save(figure, path, "training_curves.png")


# ---------------------------------------------------------------- errors and calibration


# Every normalised confusion matrix shares this colour scale (a share of the true class), so
# the same shade means the same share in every model's figure; larger shares show darkest.
CONFUSION_SCALE_MAX = 0.3


@_styled
def confusion_matrix_heatmap(
    cm, class_names=config.CLASS_NAMES, model: str = "", normalize: bool = True, path=None
):
    """Heat map of a (classes, classes) count matrix, rows are true classes, titled with
    ``model``'s name; ``normalize`` shows each row as percentages of the true class, on the
    colour scale every model's matrix shares (0 to ``CONFUSION_SCALE_MAX``).

    Only the mistakes are coloured; the diagonal is grey with bold numbers: on the same scale
    as the mistakes, the ~90% diagonal would leave every confusion looking white.
    """
    counts = np.asarray(cm, dtype=float)
    size = len(class_names)
    if counts.shape != (size, size):
        raise ValueError(
            f"cm must have shape ({size}, {size}) to match class_names, got {counts.shape}"
        )
    diagonal = np.eye(size, dtype=bool)
    if normalize:
        values = normalize_rows(counts)
        annotations = np.where(values >= 0.01, np.char.mod("%.0f", values * 100), "<1")
        colorbar = {"label": "Mistakes: share of the true class", "extend": "max"}
        colorbar["format"] = PercentFormatter(xmax=1, decimals=0)
        vmax = CONFUSION_SCALE_MAX
    else:
        values = counts
        annotations = np.char.mod("%d", values)
        colorbar = {"label": "Mistakes: images"}
        vmax = max(values[~diagonal].max(), 1e-9)
    annotations = np.where(values > 0, annotations, "")  # empty cells stay blank
    figure, axis = plt.subplots(figsize=(9.5, 8), layout="constrained")
    sns.heatmap(
        values,
        mask=diagonal,
        annot=annotations,
        fmt="",
        cmap="Blues",
        vmin=0,
        vmax=vmax,
        square=True,
        linewidths=0.5,
        linecolor="white",
        xticklabels=class_names,
        yticklabels=class_names,
        annot_kws={"fontsize": 10},
        cbar_kws={**colorbar, "shrink": 0.8},
        ax=axis,
    )
    for index in range(size):
        axis.add_patch(plt.Rectangle((index, index), 1, 1, facecolor="0.82", edgecolor="white"))
        axis.text(
            index + 0.5,
            index + 0.5,
            annotations[index, index],
            ha="center",
            va="center",
            fontsize=10.5,
            fontweight="bold",
        )
    axis.set_xlabel("Predicted class")
    axis.set_ylabel("True class")
    axis.tick_params(axis="x", labelrotation=45)
    plt.setp(axis.get_xticklabels(), ha="right", rotation_mode="anchor")
    axis.tick_params(axis="y", labelrotation=0)
    kind = "% of each true class" if normalize else "image counts"
    axis.set_title(f"{model + ': ' if model else ''}confusion matrix ({kind})")
    return _save(figure, path, "confusion_matrix.png")


@_styled
def per_class_accuracy_bars(per_class: dict, title=None, path=None):
    """Horizontal bars of accuracy (fraction) per class, best on top, with the mean marked."""
    if not per_class or not all(np.isscalar(value) for value in per_class.values()):
        raise ValueError(
            "per_class must be a non-empty dict mapping class name -> accuracy fraction"
        )
    ranked = sorted(per_class.items(), key=lambda item: item[1], reverse=True)
    names = [name for name, _ in ranked]
    values = np.array([value for _, value in ranked], dtype=float)
    mean = float(np.nanmean(values))
    figure, axis = plt.subplots(figsize=(9, 0.45 * len(names) + 1.6), layout="constrained")
    bars = axis.barh(names, values, color=TRAIN_COLOR, height=0.7)
    axis.axvline(mean, color="0.2", linestyle="--", linewidth=1.4, label=f"mean {percent(mean)}")
    # White boxes keep the values readable where the mean line runs behind them.
    axis.bar_label(
        bars,
        labels=[percent(value) for value in values],
        padding=4,
        fontsize=11,
        bbox={"facecolor": "white", "edgecolor": "none", "pad": 2},
    )
    axis.invert_yaxis()
    axis.set_xlim(0, 1.1)
    axis.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    axis.set_xlabel("Accuracy (recall of the class)")
    axis.set_title(title or "Test accuracy per class")
    axis.legend(loc="lower right", frameon=True)
    return _save(figure, path, "per_class_accuracy.png")


@_styled
def misclassified_grid(
    images, y_true, y_pred, confidences, n: int = 20, class_names=config.CLASS_NAMES, path=None
):
    """The ``n`` most confident mistakes, titled "true: cat / pred: dog (87%)".

    ``confidences``: the predicted class's probability per image.
    """
    images = _check_images(images)
    y_true = _check_image_labels(y_true, "y_true", images, class_names)
    y_pred = _check_image_labels(y_pred, "y_pred", images, class_names)
    confidences = np.asarray(confidences, dtype=float)
    if confidences.shape != (len(images),):
        raise ValueError(f"confidences must have shape ({len(images)},), got {confidences.shape}")
    if n < 1:
        raise ValueError(f"n must be a positive number of images, got {n}")
    wrong = np.flatnonzero(y_true != y_pred)
    # Stable sort: equally confident mistakes keep their dataset order, so reruns match.
    shown = wrong[np.argsort(-confidences[wrong], kind="stable")][:n]
    columns = 5
    rows = max(1, -(-len(shown) // columns))
    figure, axes = _image_grid(rows, columns, cell=1.8, title=0.5)
    for axis, index in zip(axes.ravel(), shown, strict=False):
        axis.imshow(images[index], interpolation="nearest")
        axis.set_title(
            f"true: {class_names[y_true[index]]}\npred: {class_names[y_pred[index]]} "
            f"({confidences[index]:.0%})",
            fontsize=10.5,
            fontweight="normal",
        )
    if len(shown) == 0:
        axes[0, 0].text(0, 0.5, "no misclassified images", transform=axes[0, 0].transAxes)
    _grid_title(figure, f"Most confident mistakes ({len(shown)} of {len(wrong):,} errors)")
    return _save(figure, path, "misclassified.png")


OVERCONFIDENT_COLOR = "#f4a6a6"  # light red
UNDERCONFIDENT_COLOR = "#a6d8a6"  # light green


@_styled
def reliability_diagram(reliability_df: pd.DataFrame, ece: float, title=None, path=None):
    """Accuracy vs confidence per bin (``evaluation.reliability_diagram_data``) against the
    diagonal of perfect calibration, with the images per bin underneath."""
    required = {"bin_lower", "bin_upper", "confidence", "accuracy", "count"}
    if not required <= set(reliability_df.columns):
        raise ValueError(f"reliability_df must have columns {sorted(required)}")
    bins = reliability_df
    widths = bins["bin_upper"] - bins["bin_lower"]
    figure, (axis, count_axis) = plt.subplots(
        2, 1, figsize=(7.5, 8), sharex=True, height_ratios=(3, 1), layout="constrained"
    )
    filled = bins[bins["count"] > 0]
    lower = np.minimum(filled["accuracy"], filled["confidence"])
    gap = filled["confidence"] - filled["accuracy"]
    axis.bar(
        filled["bin_lower"],
        lower,
        width=widths[filled.index],
        align="edge",
        color=TRAIN_COLOR,
        edgecolor="white",
        label="accuracy in bin (up to its mean confidence)",
    )
    # The gap between accuracy and the bin's mean confidence, drawn beside the bar, never over
    # it (a translucent overlay would show in a colour the legend does not have).
    for sign, color, label in (
        (1, OVERCONFIDENT_COLOR, "overconfident: mean confidence above accuracy"),
        (-1, UNDERCONFIDENT_COLOR, "underconfident: accuracy above mean confidence"),
    ):
        side = sign * gap > 0
        if side.any():
            axis.bar(
                filled["bin_lower"][side],
                (sign * gap)[side],
                bottom=lower[side],
                width=widths[filled.index][side],
                align="edge",
                color=color,
                edgecolor="white",
                hatch="//",
                label=label,
            )
    axis.plot([0, 1], [0, 1], color="0.3", linestyle="--", label="perfect calibration")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_ylabel("Accuracy")
    axis.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    axis.set_title(title or f"Reliability diagram (ECE = {percent(ece)})")
    axis.legend(loc="upper left", frameon=False)

    count_axis.bar(
        bins["bin_lower"],
        bins["count"],
        width=widths,
        align="edge",
        color="0.55",
        edgecolor="white",
    )
    count_axis.set_yscale("log")
    count_axis.set_ylabel("Images\n(log scale)")
    count_axis.set_xlabel("Confidence (top-class probability)")
    count_axis.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    return _save(figure, path, "reliability_diagram.png")


# ---------------------------------------------------------------- comparison


@_styled
def comparison_bars(
    results: dict,
    prior_work=config.PRIOR_WORK,
    title=None,
    path=None,
    size=None,
    prior_as: str = "lines",
    spread: dict | None = None,
):
    """Our test accuracies (name -> fraction) as bars against prior published figures.

    ``spread``: name -> standard deviation over seeds (fraction), drawn as an error bar of
    one std each side; names missing from it, or with NaN (a single seed), get none.

    ``prior_as``: "lines", reference lines across our bars (notebook 05); "bars", grey bars
    below ours with every value beside its bar (the slide deck: one row per figure reads
    at a distance, where five lines and their legend would not).
    ``title``: default "Test accuracy: our experiments vs prior results"; "" for none.
    ``size``: (width, height) in inches; default 10 wide, 0.6 in per bar.
    """
    if not results or not all(np.isscalar(value) for value in results.values()):
        raise ValueError(
            "results must be a non-empty dict mapping experiment name -> accuracy fraction"
        )
    if prior_as not in ("lines", "bars"):
        raise ValueError(f"prior_as must be 'lines' or 'bars', got {prior_as!r}")
    names = list(results)
    values = np.array([results[name] for name in names], dtype=float)
    # NaN (one seed, or no spread given): matplotlib draws no error bar for that row.
    errors = np.array([(spread or {}).get(name, np.nan) for name in names], dtype=float)
    errors[errors <= 0] = np.nan
    error_style = {"ecolor": "0.1", "capsize": 4, "error_kw": {"elinewidth": 1.5}}
    size = size or (10, 0.6 * len(names) + 3.2)
    figure, axis = plt.subplots(figsize=size, layout="constrained")
    if prior_as == "bars":
        names += list(prior_work)
        values = np.append(values, list(prior_work.values()))
        colors = [OURS_COLOR] * len(results) + [PRIOR_COLOR] * len(prior_work)
        errors = np.append(errors, np.full(len(prior_work), np.nan))
        bars = axis.barh(names, values, color=colors, height=0.7, xerr=errors, **error_style)
        labels = [
            percent(value) + ("" if np.isnan(error) else f" ± {100 * error:.1f}")
            for value, error in zip(values, errors, strict=True)
        ]
        axis.bar_label(bars, labels=labels, padding=4)
        axis.set_xlim(0, 1.12)  # room for the labels right of the bars
        axis.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
        handles = [Patch(color=OURS_COLOR, label="our runs")]
        if prior_work:
            handles.append(Patch(color=PRIOR_COLOR, label="prior results (published figures)"))
        figure.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    else:
        bars = axis.barh(
            names,
            values,
            color=sns.color_palette("crest", len(names)),
            height=0.6,
            xerr=errors,
            **error_style,
        )
        # Values sit in the middle of the bar, clear of the reference lines near the bar ends;
        # a bar too short to hold its label gets it just outside.
        for bar, value in zip(bars, values, strict=True):
            inside = value >= 0.2
            axis.text(
                value / 2 if inside else value + 0.01,
                bar.get_y() + bar.get_height() / 2,
                percent(value),
                ha="center" if inside else "left",
                va="center",
                color="white" if inside else "0.15",
                fontweight="bold",
            )
        line_styles = ["--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
        palette = sns.color_palette("dark", len(prior_work))
        ranked = sorted(prior_work.items(), key=lambda item: item[1])
        for index, (name, value) in enumerate(ranked):
            axis.axvline(
                value,
                color=palette[index],
                linestyle=line_styles[index % len(line_styles)],
                linewidth=1.8,
                label=f"{percent(value)}  {name}",
            )
        axis.set_xlim(0, 1)
        if prior_work:
            _fitted_legend(
                figure,
                (2, 1),
                title="Prior results (published, not our runs)",
                loc="outside lower center",
                frameon=False,
            )
    axis.invert_yaxis()  # first experiment on top
    axis.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    spread_shown = not np.isnan(errors).all()
    axis.set_xlabel(
        "CIFAR-10 test accuracy"
        + (" (mean over seeds; error bars: ±1 standard deviation)" if spread_shown else "")
    )
    if title != "":
        axis.set_title(title or "Test accuracy: our experiments vs prior results")
    return _save(figure, path, "comparison.png")


@_styled
def like_with_like_bars(table: pd.DataFrame, title=None, path=None):
    """Each prior result (grey) beside ours on its own setting (blue), from
    ``reports.like_with_like``: our mean over its seeds, with ±1 standard deviation where
    there are several; a prior result with no run of ours on its setting says so."""
    needed = {
        "prior", "prior_accuracy", "accuracy", "accuracy_std", "seeds", "profile",
        "train_images", "image_size",
    }  # fmt: skip
    if not needed <= set(table.columns) or table.empty:
        raise ValueError(f"table must be reports.like_with_like's, with columns {sorted(needed)}")
    rows = len(table)
    figure, axis = plt.subplots(figsize=(10, 1.0 * rows + 1.8), layout="constrained")
    positions = np.arange(rows)
    height = 0.38
    prior = axis.barh(positions - height / 2, table["prior_accuracy"], height, color=PRIOR_COLOR)
    axis.bar_label(prior, labels=[percent(value) for value in table["prior_accuracy"]], padding=4)
    right = 1.18  # the x axis's end: room for the labels right of the bars
    axis.set_xlim(0, right)
    # Our labels start right of the error bar: its length in points, from the axis's width.
    points = axis.get_window_extent().width * 72 / figure.dpi / right
    for position, row in zip(positions, table.itertuples(), strict=True):
        if pd.isna(row.accuracy):
            axis.text(0.01, position + height / 2, "no run of ours on this setting",
                      va="center", color="0.35", fontstyle="italic")  # fmt: skip
            continue
        spread = row.accuracy_std if row.seeds > 1 else None
        bar = axis.barh(
            position + height / 2, row.accuracy, height, xerr=spread, color=OURS_COLOR,
            error_kw={"capsize": 3, "elinewidth": 1},
        )  # fmt: skip
        ours = f"{row.profile}, {int(row.our_image_size)} px, {row.our_device}"
        seeds = f" ± {100 * spread:.1f}, {row.seeds} seeds" if spread is not None else ""
        label = f"{percent(row.accuracy)}{seeds}  ({ours})"
        axis.bar_label(bar, labels=[label], padding=4 + (spread or 0) * points)
    labels = []
    for row in table.itertuples():
        setting = (
            "setting not recorded"
            if pd.isna(row.train_images)
            else f"{int(row.train_images) // 1000}k images, {int(row.image_size)} px"
        )
        labels.append(f"{row.prior}\n({setting})")
    axis.set_yticks(positions, labels)
    axis.invert_yaxis()  # first prior result on top
    axis.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    axis.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    axis.set_xlabel("CIFAR-10 test accuracy")
    handles = [
        Patch(color=PRIOR_COLOR, label="prior result (published figure)"),
        Patch(color=OURS_COLOR, label="ours on the same setting (best profile)"),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    if title != "":
        axis.set_title(title or "Prior results beside ours on the same setting")
    return _save(figure, path, "like_with_like.png")


@_styled
def image_prediction(
    original, pixels, probabilities, class_names=config.CLASS_NAMES, top_k: int = 5, path=None
):
    """One photo classified: the photo (``original``: an RGB array, e.g. ``imaging.thumbnail``),
    the 32x32 input the model saw (``pixels``: ``imaging.load_image``, as in the demo), and the
    ``top_k`` class probabilities."""
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.shape != (len(class_names),):
        raise ValueError(
            f"probabilities must have one value per class ({len(class_names)}), "
            f"got shape {probabilities.shape}"
        )
    order = np.argsort(probabilities)[::-1][:top_k]
    figure, axes = plt.subplots(
        1, 3, figsize=(13, 4), width_ratios=[1, 1, 1.4], layout="constrained"
    )
    axes[0].imshow(_as_image(original))
    axes[0].set_title("Your image")
    # Nearest neighbour: every one of the 32x32 pixels stays visible as a block.
    axes[1].imshow(_check_images(np.asarray(pixels)[None])[0], interpolation="nearest")
    axes[1].set_title("What the model sees (32x32)")
    for axis in axes[:2]:
        axis.axis("off")
    names = [class_names[index] for index in order]
    bars = axes[2].barh(names, probabilities[order], color=OURS_COLOR, height=0.7)
    axes[2].bar_label(bars, labels=[percent(p) for p in probabilities[order]], padding=4)
    axes[2].invert_yaxis()
    axes[2].set_xlim(0, 1.15)
    axes[2].xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    axes[2].set_title(f"Top {top_k} classes")
    return _save(figure, path, "image_prediction.png")


# ---------------------------------------------------------------- corruptions


@_styled
def corruption_bars(tables: dict, title=None, path=None):
    """Test accuracy per corruption, one panel per severity (``tables``: severity -> a table
    with rows "clean" first, then each corruption, and one column of fractions per model),
    one bar per model, grouped by corruption."""
    if not tables or any(table.empty or "clean" not in table.index for table in tables.values()):
        raise ValueError("tables must map severity -> a table with a 'clean' row per model")
    figure, axes = plt.subplots(
        len(tables), 1, figsize=(11, 3.6 * len(tables) + 1), sharey=True, layout="constrained"
    )
    axes = np.atleast_1d(axes)
    for axis, (severity, table) in zip(axes, tables.items(), strict=True):
        models_count, rows = len(table.columns), list(table.index)
        width = 0.8 / models_count
        colors = sns.color_palette("crest", models_count)
        for offset, (model, color) in enumerate(zip(table.columns, colors, strict=True)):
            positions = np.arange(len(rows)) + (offset - (models_count - 1) / 2) * width
            axis.bar(positions, table[model], width=width, color=color, label=model)
        axis.axvspan(-0.5, 0.5, color=PANEL_COLOR, zorder=0)  # the clean test set, for reference
        axis.set_xticks(np.arange(len(rows)), [row.replace("_", " ") for row in rows])
        axis.set_xlim(-0.5, len(rows) - 0.5)
        axis.set_ylim(0, 1)
        axis.set_ylabel("Test accuracy")
        axis.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
        axis.set_title(f"CIFAR-10-C severity {severity} of 5", fontsize="medium")
    figure.suptitle(title or "Test accuracy on clean and corrupted images")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=len(labels), frameon=False)
    return _save(figure, path, "corruptions.png")
