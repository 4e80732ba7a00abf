"""Every figure renders from small synthetic arrays to a PNG that Pillow can open."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.text import Text
from PIL import Image

from cifar10_transfer import config, evaluation, plots

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
LABELS = np.arange(40) % 10
PREDICTED = np.where(np.arange(40) % 4 == 0, (LABELS + 1) % 10, LABELS)  # 10 mistakes
PROBABILITIES = RNG.dirichlet(np.ones(10), size=40)
HISTORY = {
    "loss": [2.0, 1.5, 1.2, 1.0, 0.9, 0.8],
    "accuracy": [0.3, 0.5, 0.6, 0.7, 0.75, 0.8],
    "val_loss": [1.8, 1.4, 1.2, 1.1, 1.0, 1.0],
    "val_accuracy": [0.35, 0.5, 0.6, 0.65, 0.7, 0.72],
    "learning_rate": [1e-3, 1e-3, 1e-3, 1e-4, 5e-5, 1e-5],
}


def assert_png(path, min_width=600, min_height=250):
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width >= min_width and height >= min_height, (width, height)
    assert width <= 3000 and height <= 3000, (width, height)  # ~150 dpi, not a poster


FIGURES = {
    "class_distribution": lambda path: plots.class_distribution(LABELS, LABELS[:20], path=path),
    "sample_grid": lambda path: plots.sample_grid(IMAGES, LABELS, n_per_class=3, path=path),
    "channel_histograms": lambda path: plots.channel_histograms(IMAGES, path=path),
    "mean_images": lambda path: plots.mean_images(IMAGES, LABELS, path=path),
    "augmentation_examples": lambda path: plots.augmentation_examples(
        IMAGES[:3], lambda batch: batch[:, :, ::-1], n_variants=2, path=path
    ),
    "training_curves": lambda path: plots.training_curves(HISTORY, stage_boundary=3, path=path),
    "confusion_matrix": lambda path: plots.confusion_matrix_heatmap(
        evaluation.confusion_matrix(LABELS, PREDICTED), config.CLASS_NAMES, path=path
    ),
    "per_class_accuracy": lambda path: plots.per_class_accuracy_bars(
        evaluation.per_class_accuracy(LABELS, PREDICTED), path=path
    ),
    "misclassified": lambda path: plots.misclassified_grid(
        IMAGES, LABELS, PREDICTED, PROBABILITIES.max(axis=1), n=7, path=path
    ),
    "reliability_diagram": lambda path: plots.reliability_diagram(
        evaluation.reliability_diagram_data(LABELS, PROBABILITIES),
        evaluation.expected_calibration_error(LABELS, PROBABILITIES),
        path=path,
    ),
    "resolution_examples": lambda path: plots.resolution_examples(IMAGES[:3], 96, path=path),
    "image_prediction": lambda path: plots.image_prediction(
        np.zeros((300, 400, 3), np.uint8), IMAGES[0], PROBABILITIES[0], path=path
    ),
    "comparison": lambda path: plots.comparison_bars(
        {"baseline CNN": 0.12, "Lite0 head": 0.85, "Lite0 fine-tuned": 0.9}, path=path
    ),
    "corruptions": lambda path: plots.corruption_bars(
        {
            severity: pd.DataFrame(
                {"baseline CNN": [0.7, 0.5, 0.6], "fine-tuned": [0.9, 0.6, 0.85]},
                index=["clean", "gaussian_noise", "pixelate"],
            )
            for severity in ("3", "5")
        },
        path=path,
    ),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figure_writes_png_and_returns_closed_figure(name, tmp_path):
    path = tmp_path / "figures" / f"{name}.png"
    font_size = plt.rcParams["font.size"]
    figure = FIGURES[name](path)
    assert isinstance(figure, plt.Figure)
    assert_png(path)
    assert [entry.name for entry in path.parent.iterdir()] == [path.name]  # no temp file left
    assert plt.get_fignums() == []  # closed in pyplot: loops don't leak figures
    assert plt.rcParams["font.size"] == font_size  # the style stays local to the figure


def test_default_path_is_under_images_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "IMAGES_DIR", tmp_path / "images")
    plots.class_distribution(LABELS, LABELS)
    assert_png(tmp_path / "images" / "class_distribution.png")


def test_training_curves_with_dataframe_and_learning_rate_argument(tmp_path):
    history = pd.DataFrame(HISTORY).drop(columns=["learning_rate", "val_loss", "val_accuracy"])
    figure = plots.training_curves(
        history, learning_rate=HISTORY["learning_rate"], path=tmp_path / "curves.png"
    )
    loss_axis, _, rate_axis = figure.axes
    assert rate_axis.get_yscale() == "log"
    np.testing.assert_allclose(rate_axis.lines[0].get_ydata(), HISTORY["learning_rate"])
    assert len(loss_axis.lines) == 1  # training only: no validation columns given


def test_augmentation_examples_calls_keras_layer_in_training_mode(tmp_path):
    import keras

    class RecordTraining(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.training_flags = []

        def call(self, inputs, training=None):
            self.training_flags.append(training)
            return inputs

    layer = RecordTraining()
    plots.augmentation_examples(IMAGES[:2], layer, n_variants=3, path=tmp_path / "aug.png")
    assert layer.training_flags == [True, True, True]


def test_misclassified_grid_shows_most_confident_mistakes_first(tmp_path):
    confidences = np.linspace(0.3, 0.9, 40)
    figure = plots.misclassified_grid(
        IMAGES, LABELS, PREDICTED, confidences, n=2, path=tmp_path / "wrong.png"
    )
    titles = [axis.get_title() for axis in figure.axes if axis.get_title()]
    # Mistakes are at indices 0, 4, ..., 36; the two most confident are 36 and 32.
    assert titles == ["true: frog\npred: horse (85%)", "true: bird\npred: cat (79%)"]


def test_confusion_matrix_heatmap_annotates_row_percentages(tmp_path):
    counts = np.diag([100] * 10)
    counts[0, 0], counts[0, 1] = 90, 10
    figure = plots.confusion_matrix_heatmap(counts, path=tmp_path / "cm.png")
    texts = {text.get_text() for text in figure.axes[0].texts}
    assert {"90", "10", "100"} <= texts
    assert "0" not in texts  # empty cells stay blank


def test_confusion_matrices_are_titled_by_model_and_share_one_colour_scale(tmp_path):
    good, bad = np.diag([95] * 10), np.diag([60] * 10)
    good[0, 1], bad[0, 1], bad[2, 3] = 5, 40, 40
    scales = []
    for name, counts in (("Baseline CNN", bad), ("fine-tuned", good)):
        figure = plots.confusion_matrix_heatmap(counts, model=name, path=tmp_path / f"{name}.png")
        assert figure.axes[0].get_title().startswith(f"{name}: confusion matrix")
        scales.append(figure.axes[0].collections[0].get_clim())
    # The same shade is the same share of the true class in every model's figure.
    assert scales[0] == scales[1] == (0, plots.CONFUSION_SCALE_MAX)


def test_reliability_legend_has_every_colour_the_bars_use(tmp_path):
    bins = pd.DataFrame({"bin_lower": [0.4, 0.6, 0.8], "bin_upper": [0.6, 0.8, 1.0],
                         "confidence": [0.5, 0.7, 0.9], "accuracy": [0.6, 0.6, 0.97],
                         "count": [10, 30, 60]})  # fmt: skip
    figure = plots.reliability_diagram(bins, 0.05, path=tmp_path / "reliability.png")
    axis = figure.axes[0]
    legend = axis.get_legend()
    handles = [handle for handle in legend.legend_handles if hasattr(handle, "get_facecolor")]
    legend_colours = {tuple(handle.get_facecolor()) for handle in handles}
    drawn = {tuple(patch.get_facecolor()) for patch in axis.patches}
    assert drawn <= legend_colours
    labels = [text.get_text() for text in legend.get_texts()]
    assert any(label.startswith("overconfident") for label in labels)
    assert any(label.startswith("underconfident") for label in labels)


@pytest.mark.parametrize(
    ("draw", "message"),
    [
        (lambda: plots.training_curves({"loss": [1.0]}), "history must have per-epoch columns"),
        (lambda: plots.training_curves(HISTORY, stage_boundary=6), "stage_boundary must be in"),
        (lambda: plots.confusion_matrix_heatmap(np.ones((3, 3))), r"cm must have shape \(10, 10\)"),
        (lambda: plots.sample_grid(IMAGES[0], LABELS), r"images must have shape \(N, height"),
        (lambda: plots.mean_images(IMAGES, LABELS[:5]), "labels must have one label per image"),
        (lambda: plots.comparison_bars({}), "results must be a non-empty dict"),
        (lambda: plots.comparison_bars({"a": 0.5}, prior_as="dots"), "prior_as must be"),
    ],
)
def test_bad_arguments_raise_value_error(draw, message):
    with pytest.raises(ValueError, match=message):
        draw()


@pytest.mark.parametrize(
    "draw",
    [
        lambda **kw: plots.training_curves(HISTORY, stage_boundary=3, **kw),
        lambda **kw: plots.comparison_bars({"seed CNN": 0.12, "fine-tuned": 0.9}, **kw),
        lambda **kw: plots.comparison_bars({"fine-tuned": 0.9}, prior_as="bars", **kw),
    ],
    ids=["training_curves", "comparison_lines", "comparison_bars"],
)
def test_slide_style_draws_the_charts_at_the_given_size_in_18_pt_or_more(draw, tmp_path):
    figure = draw(size=(12, 5), style=plots.SLIDE_STYLE, path=tmp_path / "chart.png")
    assert tuple(figure.get_size_inches()) == (12, 5)
    texts = [text for text in figure.findobj(Text) if text.get_visible() and text.get_text()]
    assert min(text.get_fontsize() for text in texts) >= 18
    with Image.open(tmp_path / "chart.png") as image:  # nothing drawn beyond the figure
        assert image.width <= (12 + 2 * plt.rcParams["savefig.pad_inches"]) * plots.DPI


@pytest.mark.parametrize("prior_as", ["lines", "bars"])
def test_comparison_draws_the_spread_over_seeds_only_where_there_is_one(prior_as, tmp_path):
    results = {"seed CNN": 0.69, "two-layer FC": 0.43, "fine-tuned": 0.8625}
    spread = {"seed CNN": 0.0088, "two-layer FC": float("nan"), "fine-tuned": 0.0009}
    figure = plots.comparison_bars(
        results, spread=spread, prior_as=prior_as, path=tmp_path / "c.png"
    )
    axis = figure.axes[0]
    (errorbars,) = [c for c in axis.containers if isinstance(c, ErrorbarContainer)]
    (segments,) = errorbars.lines[2]
    drawn = [s for s in segments.get_segments() if len(s) == 2 and np.isfinite(s).all()]
    # One line per row with a spread: seed CNN and fine-tuned, not the one-seed FC net.
    widths = sorted(round(abs(s[1][0] - s[0][0]) / 2, 4) for s in drawn)
    assert widths == [0.0009, 0.0088]
    assert "error bars: ±1 standard deviation" in axis.get_xlabel()


def test_like_with_like_puts_ours_beside_each_prior_result_or_says_there_is_none(tmp_path):
    priors = config.PRIOR_RESULTS[:2]  # MapiAI's baseline CNN, Kallu et al.'s (no setting)
    table = pd.DataFrame(
        {
            "prior": [prior.label for prior in priors],
            "prior_accuracy": [prior.accuracy for prior in priors],
            "train_images": [prior.train_images for prior in priors],
            "image_size": [prior.image_size for prior in priors],
            "profile": ["hires", None],
            "accuracy": [0.6913, np.nan],
            "accuracy_std": [0.0091, np.nan],
            "seeds": [3, 0],
            "our_device": ["CPU", None],
            "our_image_size": [32, None],
        }
    )
    figure = plots.like_with_like_bars(table, path=tmp_path / "l.png")
    axis = figure.axes[0]
    widths = sorted(round(patch.get_width(), 4) for patch in axis.patches)
    assert widths == [0.605, 0.6913, 0.73]  # two prior bars, one of ours
    texts = [text.get_text() for text in axis.texts]  # the bar labels, and the one gap
    ours = "69.1% ± 0.9, 3 seeds  (hires, 32 px, CPU)"
    assert texts == ["60.5%", "73.0%", ours, "no run of ours on this setting"]
    (errorbars,) = [c for c in axis.containers if isinstance(c, ErrorbarContainer)]
    (segments,) = errorbars.lines[2]  # our spread over the seeds, one bar's
    assert np.allclose(segments.get_segments()[0][:, 0], [0.6913 - 0.0091, 0.6913 + 0.0091])
    one_seed = plots.like_with_like_bars(table.assign(seeds=[1, 0]), path=tmp_path / "1.png")
    one_seed = one_seed.axes[0]
    assert "69.1%  (hires, 32 px, CPU)" in [text.get_text() for text in one_seed.texts]
    labels = [label.get_text() for label in axis.get_yticklabels()]
    assert labels[0].endswith("(10k images, 32 px)") and labels[1].endswith(
        "(setting not recorded)"
    )
    assert (tmp_path / "l.png").stat().st_size > 0
    with pytest.raises(ValueError, match="reports.like_with_like's"):
        plots.like_with_like_bars(table.drop(columns="profile"))


def test_image_prediction_shows_the_top_classes_best_first(tmp_path):
    probabilities = np.full(config.NUM_CLASSES, 0.02)
    probabilities[[3, 7]] = 0.5, 0.34
    figure = plots.image_prediction(
        IMAGES[0], IMAGES[0], probabilities, top_k=3, path=tmp_path / "p.png"
    )
    bars = figure.axes[2]
    shown = [label.get_text() for label in bars.get_yticklabels()]
    assert shown[:2] == [config.CLASS_NAMES[3], config.CLASS_NAMES[7]] and len(shown) == 3
    with pytest.raises(ValueError, match="one value per class"):
        plots.image_prediction(IMAGES[0], IMAGES[0], probabilities[:4], path=tmp_path / "q.png")
