"""The slide deck: ``results/<profile>/`` and ``images/<profile>/`` -> one 16:9 PDF.

``cifar10-transfer presentation --profile quick`` (``make presentation``) writes it. Each
slide is a matplotlib Figure written with PdfPages. Every number on a slide is read from the
results files (``eda.json`` as ``reports.eda_summary`` and ``error_analysis.json`` as
``reports.error_analysis`` define them; prior work from ``config.PRIOR_WORK``, labelled as
literature) and every footer names the run it came from. The figures are plots.py's: the
notebooks' PNGs from ``images/<profile>/`` as they are, and the two charts drawn by plots.py
at the size of their place in slide type sizes, so their text reads like the slide's. The
colours are plots.py's too. No Keras import.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib.image
import pandas as pd
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.textpath import TextToPath

from cifar10_transfer import config, fileio, plots
from cifar10_transfer.evaluation import percent
from cifar10_transfer.publish import reports

WIDTH, HEIGHT = 13.333, 7.5  # in, 16:9
MARGIN = 0.6  # in, left and right
CONTENT_TOP = HEIGHT - 1.35  # in, below the title and its rule
FOOTER_TOP = 0.65  # in, above the provenance line
TITLE_SIZE, BODY_SIZE, MIN_SIZE = 32, 21, 18  # pt; MIN_SIZE is the floor for any text
MEASURE = TextToPath()  # text widths for wrapping, without a renderer
SCHEDULES = {
    "plateau": "ReduceLROnPlateau",
    "cosine": "cosine decay",
    "constant": "a constant learning rate",
}


@dataclass(frozen=True)
class Deck:
    """Everything the slides show, read from one profile's results and figures."""

    profile: str
    runs: pd.DataFrame  # summary.json rows, one per experiment
    eda: dict
    errors: dict  # error_analysis.json
    metrics: dict  # experiment -> its metrics.json
    curves_experiment: str  # whose history.csv the curves slide draws
    history: pd.DataFrame
    figures_dir: Path
    has_full_results: bool  # results/full/summary.json exists: a GPU run was made

    @property
    def best(self) -> pd.Series:
        return self.runs.loc[self.runs["test_accuracy"].idxmax()]

    def run(self, experiment: str) -> pd.Series | None:
        rows = self.runs[self.runs["experiment"] == experiment]
        return rows.iloc[0] if len(rows) else None

    @property
    def settings(self) -> dict:
        """The profile the transfer model was trained with, as its metrics.json records it."""
        return self.metrics[self.curves_experiment]["profile"]

    @property
    def image_size(self) -> str:
        height, width, _ = self.eda["image_shape"]
        return f"{height}×{width}"

    @property
    def provenance(self) -> str:
        def values(column: str, several: bool = False) -> str:
            # several: a row holds a comma-separated list (its seeds, its commits)
            found = sorted(
                {
                    part
                    for value in self.runs[column]
                    if not pd.isna(value)
                    for part in (str(value).split(",") if several else [str(value)])
                }
            )
            return ", ".join(found) or "not recorded"

        seeds = values("seed", several=True)
        return (
            f"profile {self.profile} · {values('device')} · {values('backend')} · "
            f"{'seeds' if ',' in seeds else 'seed'} {seeds} · "
            f"code {values('git_commit', several=True)}"
        )


def _require(path: Path, profile: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: not found; create it with `make reproduce PROFILE={profile}`"
        )
    return path


def load_deck(profile: str = "quick", results_dir=None, figures_dir=None) -> Deck:
    """Read what the slides need; a missing input is a FileNotFoundError naming the file."""
    if profile not in config.PROFILES:
        raise ValueError(f"profile must be one of {sorted(config.PROFILES)}, got {profile!r}")
    results_dir = Path(results_dir) if results_dir else config.RESULTS_DIR / profile
    figures_dir = Path(figures_dir) if figures_dir else config.IMAGES_DIR / profile
    summary = fileio.read_json(_require(results_dir / "summary.json", profile))
    if summary.get("profile") != profile or not summary.get("runs"):
        raise ValueError(
            f"{results_dir / 'summary.json'}: expected runs of profile {profile!r}, "
            f"got profile {summary.get('profile')!r} with {len(summary.get('runs') or [])} runs"
        )
    eda = fileio.read_json(_require(results_dir / "eda.json", profile))
    errors = fileio.read_json(_require(results_dir / "error_analysis.json", profile))
    metrics = {}
    for path in sorted(results_dir.glob("*/metrics.json")):
        run_metrics = fileio.read_json(path)
        metrics[run_metrics["experiment"]] = run_metrics
    # The head -> fine-tune story lives in the fine-tuning history (it holds both stages).
    curves_experiment = "finetune" if "finetune" in metrics else errors["best_experiment"]
    _require(results_dir / curves_experiment / "metrics.json", profile)
    history = pd.read_csv(_require(results_dir / curves_experiment / "history.csv", profile))
    return Deck(
        profile=profile,
        runs=pd.DataFrame(summary["runs"]),
        eda=eda,
        errors=errors,
        metrics=metrics,
        curves_experiment=curves_experiment,
        history=history,
        figures_dir=figures_dir,
        has_full_results=(results_dir.parent / "full" / "summary.json").exists(),
    )


# ---------------------------------------------------------------- drawing helpers
# Positions are in inches from the bottom-left corner (figure.dpi_scale_trans).


def _text(figure: Figure, x: float, y: float, text: str, size: float = BODY_SIZE, **kwargs):
    return figure.text(x, y, text, fontsize=size, transform=figure.dpi_scale_trans, **kwargs)


def _wrap(text: str, width: float, size: float, weight: str = "normal") -> list[str]:
    """Greedy word wrap to ``width`` inches, measuring the rendered text (never at hyphens)."""
    font = FontProperties(size=size, weight=weight)
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        points = MEASURE.get_text_width_height_descent(candidate, font, ismath=False)[0]
        if lines and points <= width * 72:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _lines(
    figure: Figure, text: str, left: float, top: float, width: float, size: float, **kwargs
) -> float:
    """``text`` wrapped to ``width``, one Text per line; returns the y below the last line."""
    line_height = 1.3 * size / 72
    lines = _wrap(text, width, size, kwargs.get("weight", "normal"))
    for number, line in enumerate(lines):
        _text(figure, left, top - number * line_height, line, size, va="top", **kwargs)
    return top - len(lines) * line_height


def _bullets(
    figure: Figure, items, left: float, top: float, width: float, size: float = BODY_SIZE
) -> float:
    """Wrapped bullet paragraphs from ``top`` down; returns the y below the last one."""
    indent = 0.45 * size / 20
    y = top
    for item in items:
        _text(figure, left, y, "•", size, va="top", color=plots.ACCENT_COLOR, weight="bold")
        y = _lines(figure, item, left + indent, y, width - indent, size) - 0.5 * size / 72
    return y


def _image(figure: Figure, path: Path, left: float, bottom: float, width: float, height: float):
    """Embed a PNG, as large as fits the box; False (and nothing drawn) when it is missing."""
    if not path.exists():
        return False
    axis = figure.add_axes([left / WIDTH, bottom / HEIGHT, width / WIDTH, height / HEIGHT])
    axis.imshow(matplotlib.image.imread(path), interpolation="none")
    axis.set_axis_off()
    return True


def _chart(figure: Figure, draw, left: float, bottom: float, width: float, height: float, **kw):
    """A plots.py chart drawn at the box's size in slide type sizes, placed in the box.

    The notebooks' PNGs are drawn for a page width; placed on a slide their text would
    shrink to ~10 pt.
    """
    # The PNG is cropped to what is drawn plus this padding all round (bbox_inches="tight").
    pad = matplotlib.rcParams["savefig.pad_inches"]
    size = (width - 2 * pad, height - 2 * pad)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "chart.png"
        draw(**kw, title="", size=size, style=plots.SLIDE_STYLE, path=path)
        _image(figure, path, left, bottom, width, height)


# ---------------------------------------------------------------- slides


def title_slide(figure: Figure, deck: Deck) -> None:
    best, baseline = deck.best, deck.run("baseline_cnn")
    _text(
        figure,
        MARGIN,
        4.6,
        f"{percent(best.test_accuracy)} test accuracy",
        60,
        color=plots.OURS_COLOR,
        weight="bold",
    )
    against = (
        f"against {percent(baseline.test_accuracy)} for the baseline CNN trained from scratch"
        if baseline is not None
        else "(no seed-CNN run in this profile to compare with)"
    )
    y = _lines(figure, f"{best.model}, {against}.", MARGIN, 4.2, WIDTH - 2 * MARGIN, 26)
    _lines(
        figure,
        f"Both on {best.train_size:,} training and {best.test_size:,} test images of CIFAR-10; "
        "Keras 3; every number from a results file.",
        MARGIN,
        y - 0.3,
        WIDTH - 2 * MARGIN,
        22,
        color=plots.MUTED_COLOR,
    )


def problem_slide(figure: Figure, deck: Deck) -> None:
    classes = list(deck.eda["train"])
    ranked = sorted(config.PRIOR_WORK.items(), key=lambda item: item[1])
    (low_name, low), (high_name, high) = ranked[0], ranked[-1]
    _bullets(
        figure,
        [
            f"Label a {deck.image_size} colour photo with one of {len(classes)} classes: "
            f"{', '.join(classes)}.",
            f"Prior results (published figures, not our runs) range from {percent(low)} "
            f"for the {low_name} to {percent(high)} for {high_name}.",
            "Question: how much does an ImageNet-pretrained backbone add over a CNN trained "
            "from scratch on the same images, and at what compute cost?",
            "Deliverable: one command from raw data to every table, figure, the demo model "
            "and this deck.",
        ],
        MARGIN,
        CONTENT_TOP,
        WIDTH - 2 * MARGIN,
    )


def data_slide(figure: Figure, deck: Deck) -> None:
    train, test = deck.eda["train"], deck.eda["test"]
    height, width, channels = deck.eda["image_shape"]
    split = deck.metrics[deck.curves_experiment]["data"]

    def per_class(counts: dict) -> str:
        low, high = min(counts.values()), max(counts.values())
        return f"{low:,}" if low == high else f"{low:,}–{high:,}"

    shown = _image(figure, deck.figures_dir / "sample_grid.png", 7.9, 0.75, 4.9, 5.5)
    _bullets(
        figure,
        [
            f"{sum(train.values()):,} training and {sum(test.values()):,} test images, "
            f"{len(train)} classes, {height}×{width} px, {channels} channels, "
            f"{deck.eda['dtype']}.",
            f"Per class: {per_class(train)} training and {per_class(test)} test images.",
            f"Source: {Path(deck.eda['source']).name}, checksum "
            f"{'verified' if deck.eda['verified'] else 'not verified'}.",
            f"This profile: {split['train_size']:,} training, {split['val_size']:,} "
            f"validation (held out of training) and {split['test_size']:,} test images, "
            "stratified by class.",
            "The test images are used only for the final numbers.",
        ],
        MARGIN,
        CONTENT_TOP,
        6.9 if shown else WIDTH - 2 * MARGIN,
    )


def method_slide(figure: Figure, deck: Deck) -> None:
    settings = deck.settings
    schedule = SCHEDULES.get(settings["lr_schedule"], settings["lr_schedule"])
    stages = [
        (
            "1 · Baselines",
            [
                "baseline CNN, two-layer FC and three-layer CNN from scratch",
                f"{_plural(settings['baseline_epochs'], 'epoch')}, "
                f"Adam {settings['baseline_learning_rate']:g}",
            ],
        ),
        (
            "2 · Head",
            [
                f"ImageNet {settings['backbone']}, frozen",
                "its features computed once and cached",
                f"new head: dense {settings['head_units']}, dropout {settings['dropout_rate']:g}",
                f"{_plural(settings['head_epochs'], 'epoch')}, "
                f"Adam {settings['head_learning_rate']:g}",
            ],
        ),
        (
            "3 · Fine-tuning",
            [
                config.Unfreeze.parse(settings["unfreeze"]).description,
                "augmentation: flip, shift, zoom, rotation, colour"
                if settings["augment"]
                else "no augmentation",
                f"Adam {settings['finetune_learning_rate']:g} with {schedule}",
                f"early stopping, patience {settings['early_stopping_patience']}",
            ],
        ),
    ]
    box_width, gap, top, bottom = 3.65, 0.6, CONTENT_TOP, 1.95
    for index, (title, lines) in enumerate(stages):
        left = MARGIN + index * (box_width + gap)
        figure.add_artist(
            FancyBboxPatch(
                (left, bottom),
                box_width,
                top - bottom,
                boxstyle="round,pad=0,rounding_size=0.15",
                transform=figure.dpi_scale_trans,
                facecolor=plots.PANEL_COLOR,
                edgecolor=plots.OURS_COLOR,
                linewidth=2,
            )
        )
        _text(
            figure,
            left + 0.2,
            top - 0.2,
            title,
            24,
            va="top",
            weight="bold",
            color=plots.TITLE_COLOR,
        )
        _bullets(figure, lines, left + 0.2, top - 0.85, box_width - 0.35, MIN_SIZE)
        if index:
            figure.add_artist(
                FancyArrowPatch(
                    (left - gap + 0.08, (top + bottom) / 2),
                    (left - 0.08, (top + bottom) / 2),
                    transform=figure.dpi_scale_trans,
                    arrowstyle="-|>",
                    mutation_scale=30,
                    color=plots.ACCENT_COLOR,
                    linewidth=3,
                )
            )
    _bullets(
        figure,
        [
            f"Inside the model: uint8 {deck.image_size} → resize to {settings['image_size']} px → "
            "preprocessing → backbone → pooling → head; it takes raw images, and the data "
            "set is never upscaled in memory."
        ],
        MARGIN,
        1.6,
        WIDTH - 2 * MARGIN,
        20,
    )


def results_slide(figure: Figure, deck: Deck) -> None:
    # Right edges (in) of the number columns; the model name starts at MARGIN. (Calibration,
    # ECE, has its own slide.)
    columns = [
        ("test accuracy\nmean ± std", 7.3),
        ("flip\nTTA", 8.3),
        ("seeds", 9.2),
        ("input", 10.1),
        ("train\nimages", 11.3),
        ("wall\ntime", WIDTH - MARGIN),
    ]
    best = deck.best.experiment
    rows = [
        (
            row.model,
            [
                percent(row.test_accuracy)
                + (
                    ""
                    if pd.isna(row.test_accuracy_std)
                    else f" ± {100 * row.test_accuracy_std:.1f}"
                ),
                percent(row.tta_test_accuracy),
                str(row.seeds),
                f"{row.image_size} px",
                f"{row.train_size:,}",
                f"{row.wall_time_s / 60:.1f} min",
            ],
            row.experiment == best,
        )
        for row in deck.runs.itertuples()
    ]
    prior = [
        (name, [percent(value)] + ["–"] * 5, False) for name, value in config.PRIOR_WORK.items()
    ]
    sections = [
        (f"Our runs (profile {deck.profile})", rows, plots.OURS_COLOR),
        ("Prior results: published figures, not our runs", prior, plots.MUTED_COLOR),
    ]
    row_height = min(0.42, (CONTENT_TOP - 1.6) / (len(rows) + len(prior) + 2))
    for header, right in columns:
        _text(figure, right, CONTENT_TOP, header, MIN_SIZE, ha="right", va="top", weight="bold")
    y = CONTENT_TOP - 0.75
    for title, section_rows, color in sections:
        _text(figure, MARGIN, y, title, MIN_SIZE, va="top", weight="bold", color=color)
        y -= row_height
        for name, values, highlight in section_rows:
            style = {"weight": "bold" if highlight else "normal", "va": "top"}
            _text(figure, MARGIN + 0.25, y, name, MIN_SIZE, **style)
            for value, (_, right) in zip(values, columns, strict=True):
                _text(figure, right, y, value, MIN_SIZE, ha="right", **style)
            y -= row_height


def comparison_slide(figure: Figure, deck: Deck) -> None:
    results = dict(zip(deck.runs["model"], deck.runs["test_accuracy"], strict=True))
    spread = dict(zip(deck.runs["model"], deck.runs["test_accuracy_std"], strict=True))
    width, height = WIDTH - 2 * MARGIN, CONTENT_TOP - FOOTER_TOP
    _chart(
        figure,
        plots.comparison_bars,
        MARGIN,
        FOOTER_TOP,
        width,
        height,
        results=results,
        spread=spread,
        prior_as="bars",
    )


def curves_slide(figure: Figure, deck: Deck) -> None:
    history = deck.history
    head_epochs = reports.stage_boundary(history)
    label = deck.run(deck.curves_experiment).model
    if head_epochs:
        tuning = history[history["stage"] != "head"]
        story = (
            f"{label}: {_plural(head_epochs, 'head epoch')} on cached features, then "
            f"{_plural(len(tuning), 'fine-tuning epoch')}, learning rate "
            f"{tuning['learning_rate'].iloc[0]:.0e} → {tuning['learning_rate'].iloc[-1]:.0e}."
        )
    else:
        story = f"{label}: {_plural(len(history), 'epoch')}."
    top = _lines(figure, story, MARGIN, CONTENT_TOP, WIDTH - 2 * MARGIN, 20) - 0.15
    _chart(
        figure,
        plots.training_curves,
        MARGIN,
        FOOTER_TOP,
        WIDTH - 2 * MARGIN,
        top - FOOTER_TOP,
        # The story line gives the learning rates; a third axis would crowd the slide.
        history=history.drop(columns="learning_rate", errors="ignore"),
        stage_boundary=head_epochs,
    )


def errors_slide(figure: Figure, deck: Deck) -> None:
    best = deck.run(deck.errors["best_experiment"])
    shown = _image(figure, deck.figures_dir / "best_confusion_matrix.png", MARGIN, 0.75, 5.8, 5.4)
    left = 6.7 if shown else MARGIN
    width = WIDTH - MARGIN - left
    y = _lines(figure, "Most confused pairs", left, CONTENT_TOP, width, 20, weight="bold")
    y = _lines(
        figure,
        f"{best.model}: test images mixed up either way (share of the two classes)",
        left,
        y,
        width,
        MIN_SIZE,
        color=plots.MUTED_COLOR,
    )
    items = [
        f"{pair['class_a']} ↔ {pair['class_b']}: {pair['count']:,} "
        f"({percent(pair['share_of_true'])})"
        for pair in deck.errors["most_confused_pairs"]
    ]
    y = _bullets(figure, items or ["no mistakes"], left, y - 0.15, width, 20)
    per_class = deck.metrics.get(best.experiment, {}).get("per_class_accuracy")
    if per_class:
        ranked = sorted(per_class.items(), key=lambda item: item[1])

        def listed(pairs) -> str:
            return ", ".join(f"{name} {percent(value)}" for name, value in pairs)

        y = _lines(figure, "Per-class test accuracy", left, y - 0.15, width, 20, weight="bold")
        _bullets(
            figure,
            [f"lowest: {listed(ranked[:2])}", f"highest: {listed(ranked[::-1][:2])}"],
            left,
            y - 0.1,
            width,
            20,
        )


def calibration_slide(figure: Figure, deck: Deck) -> None:
    errors, best = deck.errors, deck.run(deck.errors["best_experiment"])
    shown = _image(figure, deck.figures_dir / "best_reliability.png", MARGIN, 0.75, 5.2, 5.4)
    left = 6.3 if shown else MARGIN
    smoothing = deck.metrics.get(best.experiment, {}).get("profile", {}).get("label_smoothing")
    items = [
        f"Expected calibration error (ECE) of {best.model}: {errors['ece']:.3f}.",
        f"Averaged over confidence bins, the confidence it states is "
        f"{100 * errors['ece']:.1f} points away from how often it is right.",
        "In the demo, a top-1 score p is right about a share p of the time, give or take "
        "that bin's gap in the diagram (bars below the diagonal: over-confident).",
    ]
    if smoothing:
        items.append(f"Trained with label smoothing {smoothing:g}, which tempers over-confidence.")
    if not pd.isna(errors.get("tta_test_accuracy")):
        items.append(
            f"Flip test-time augmentation: {percent(errors['tta_test_accuracy'])} vs "
            f"{percent(errors['test_accuracy'])} without."
        )
    _bullets(figure, items, left, CONTENT_TOP, WIDTH - MARGIN - left, 20)


def limitations_slide(figure: Figure, deck: Deck) -> None:
    best, settings = deck.best, deck.settings
    available = sum(deck.eda["train"].values()) - deck.metrics[best.experiment]["data"]["val_size"]
    full_size = config.PROFILES["full"].image_size
    error = 1.96 * math.sqrt(best.test_accuracy * (1 - best.test_accuracy) / best.test_size)
    items = [
        f"CIFAR-10 images are {deck.image_size}: upscaling to {settings['image_size']} px inside "
        "the model adds no detail the backbone could use."
        if settings["image_size"] > deck.eda["image_shape"][0]
        else f"CIFAR-10 images are {deck.image_size}, and this profile gives them to the "
        "backbone unscaled."
    ]
    if best.train_size < available:
        items.append(
            f"Trained on {best.train_size:,} of the {available:,} training images available."
        )
    if settings["image_size"] < full_size:
        items.append(
            f"The {deck.profile} profile runs the backbone at {settings['image_size']} px to fit "
            f"a CPU; the full profile uses {full_size} px."
        )
    if "jpeg" in Path(deck.eda["source"]).name.lower():
        items.append(
            "Data: a JPEG copy of CIFAR-10; compression changes pixels slightly against the "
            "official release."
        )
    if not deck.has_full_results:
        items.append(
            "No GPU run yet (results/full is absent): the ResNet-50 figures are literature only."
        )
    if best.seeds > 1:
        items.append(
            f"{best.seeds} seeds for the models with a spread, one run for the others: the "
            f"best model's standard deviation over seeds is {100 * best.test_accuracy_std:.1f} "
            f"points; with {best.test_size:,} test images, one run's 95% interval is "
            f"±{100 * error:.1f} points."
        )
    else:
        items.append(
            f"One seed, one run per model: with {best.test_size:,} test images, "
            f"{percent(best.test_accuracy)} has a 95% interval of ±{100 * error:.1f} points."
        )
    _bullets(figure, items, MARGIN, CONTENT_TOP, WIDTH - 2 * MARGIN)


def next_steps_slide(figure: Figure, deck: Deck) -> None:
    per_class = deck.metrics.get(deck.best.experiment, {}).get("per_class_accuracy", {})
    hardest = sorted(per_class, key=per_class.get)[:2]
    items = []
    if not deck.has_full_results:
        items.append("Run the full profile on a GPU: make reproduce PROFILE=full.")
    paper = config.PROFILES["paper"]
    items += [
        f"Like-for-like with the MapiAI repository ({paper.backbone}, "
        f"{paper.train_size:,} training images): make reproduce PROFILE=paper.",
    ]
    if deck.runs["seeds"].max() <= 1:
        items.append(
            "Several seeds per model (make reproduce SEEDS=3), to report a mean and a spread "
            "instead of one number."
        )
    if hardest:
        items.append(
            f"Work on the weakest classes ({' and '.join(hardest)}): higher input resolution, "
            "more fine-tuned layers, targeted augmentation."
        )
    items += [
        "Temperature scaling on the validation set, so the demo's confidences mean more.",
        "Publish the demo: make demo exports the best run as a Hugging Face Space with its "
        "model card.",
    ]
    _bullets(figure, items, MARGIN, CONTENT_TOP, WIDTH - 2 * MARGIN)


SLIDES: list[tuple[str, Callable[[Figure, Deck], None]]] = [
    ("CIFAR-10 with ImageNet transfer learning", title_slide),
    ("The problem", problem_slide),
    ("The data", data_slide),
    ("Method: baseline → head → fine-tuning", method_slide),
    ("Our results and prior results", results_slide),
    ("Test accuracy, side by side", comparison_slide),
    ("Training: head, then fine-tuning", curves_slide),
    ("Error analysis", errors_slide),
    ("Calibration: what the confidence means", calibration_slide),
    ("Limitations", limitations_slide),
    ("Next steps", next_steps_slide),
]


def render_slides(deck: Deck) -> Iterator[Figure]:
    """One Figure per slide: title, rule, content, provenance footer and page number."""
    for number, (title, draw) in enumerate(SLIDES, start=1):
        figure = Figure(figsize=(WIDTH, HEIGHT))
        _text(
            figure,
            MARGIN,
            HEIGHT - 0.45,
            title,
            TITLE_SIZE,
            va="top",
            weight="bold",
            color=plots.TITLE_COLOR,
        )
        figure.add_artist(
            Line2D(
                [MARGIN, WIDTH - MARGIN],
                [HEIGHT - 1.1] * 2,
                transform=figure.dpi_scale_trans,
                color=plots.ACCENT_COLOR,
                linewidth=2,
            )
        )
        _text(figure, MARGIN, 0.25, deck.provenance, MIN_SIZE, color=plots.MUTED_COLOR)
        _text(
            figure,
            WIDTH - MARGIN,
            0.25,
            f"{number}/{len(SLIDES)}",
            MIN_SIZE,
            color=plots.MUTED_COLOR,
            ha="right",
        )
        draw(figure, deck)
        yield figure


def build_deck(profile: str = "quick", results_dir=None, figures_dir=None, out=None) -> Path:
    """Write the deck as a PDF (default ``presentation/cifar10-transfer-<profile>.pdf``)."""
    deck = load_deck(profile, results_dir, figures_dir)
    out = Path(out) if out else config.PRESENTATION_DIR / f"cifar10-transfer-{profile}.pdf"
    # No creation date: the same results give the same file.
    metadata = {"Title": f"CIFAR-10 transfer learning ({profile})", "CreationDate": None}
    with fileio.atomic_path(out) as temporary, PdfPages(temporary, metadata=metadata) as pdf:
        for figure in render_slides(deck):
            pdf.savefig(figure)
    return out
