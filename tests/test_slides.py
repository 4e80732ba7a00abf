import dataclasses
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.text import Text

from cifar10_transfer import cli, config, data, fileio, plots, runs
from cifar10_transfer.publish import reports, slides

PROFILE = "quick"
# Distinctive values, so the tests can tell that slide numbers come from these files.
ACCURACIES = {"baseline_cnn": 0.6123, "head": 0.8417, "finetune": 0.8771}


def _metrics(experiment: str, accuracy: float) -> dict:
    settings = config.profile(PROFILE).to_dict()
    return {
        "experiment": experiment,
        "test_accuracy": accuracy,
        "tta_test_accuracy": accuracy + 0.004 if experiment == "finetune" else None,
        "test_loss": 1.0 - accuracy,
        "ece": 0.031,
        "per_class_accuracy": {
            name: accuracy - 0.01 * index for index, name in enumerate(config.CLASS_NAMES)
        },
        "epochs": 4,
        "wall_time_s": 600.0,
        "seed": 42,
        "backend": "tensorflow",
        "device": "cpu (x86_64, 2 cores)",
        "git_commit": "abc1234",
        "backbone": None if experiment == "baseline_cnn" else settings["backbone"],
        "image_size": 32 if experiment == "baseline_cnn" else settings["image_size"],
        "data": {"train_size": 10_000, "val_size": 2_000, "test_size": 10_000},
        "profile": settings,
    }


@pytest.fixture(scope="module")
def fake_outputs(tmp_path_factory):
    """results/<profile>/ and images/<profile>/ as `make reproduce` leaves them (small)."""
    root = tmp_path_factory.mktemp("outputs")
    results, figures = root / "results" / PROFILE, root / "images" / PROFILE
    labels = {
        "baseline_cnn": "Baseline CNN (from scratch)",
        "head": "efficientnet_lite0 head only (frozen)",
        "finetune": "efficientnet_lite0 fine-tuned",
    }
    rows = []
    for experiment, accuracy in ACCURACIES.items():
        metrics = _metrics(experiment, accuracy)
        fileio.write_json(results / experiment / "metrics.json", metrics)
        rows.append(
            {
                "experiment": experiment,
                "model": labels[experiment],
                **{key: metrics[key] for key in ("test_accuracy", "tta_test_accuracy")},
                **{key: metrics[key] for key in ("test_loss", "ece", "image_size", "epochs")},
                "train_size": 10_000,
                "test_size": 10_000,
                **{key: metrics[key] for key in ("wall_time_s", "device", "backend", "seed")},
                "git_commit": "abc1234",
                "test_accuracy_std": None,
                "seeds": 1,
            }
        )
    fileio.write_json(results / "summary.json", {"profile": PROFILE, "runs": rows})
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3, 4],
            "accuracy": [0.70, 0.78, 0.85, 0.88],
            "learning_rate": [0.001, 0.001, 0.0001, 0.00005],
            "loss": [0.9, 0.7, 0.5, 0.4],
            "val_accuracy": [0.75, 0.80, 0.86, 0.87],
            "val_loss": [0.8, 0.6, 0.45, 0.42],
            "stage": ["head", "head", "finetune", "finetune"],
        }
    )
    history.to_csv(results / "finetune" / "history.csv", index=False)
    # eda.json and error_analysis.json as notebooks 01 and 05 write them, through the same
    # functions. Tiny images: of the pixels the deck shows only their shape.
    train_labels, test_labels = np.arange(50_000) % 10, np.arange(10_000) % 10
    dataset = data.CIFAR10(
        x_train=np.zeros((50_000, 2, 2, 3), np.uint8),
        y_train=train_labels,
        x_test=np.zeros((10_000, 2, 2, 3), np.uint8),
        y_test=test_labels,
        class_names=config.CLASS_NAMES,
        source="/data/cifar10-jpeg.tar.gz",
        verified=True,
        verification="sha256 of cifar10-jpeg.tar.gz",
    )
    fileio.write_json(results / "eda.json", reports.eda_summary(dataset))
    cat, dog = config.CLASS_NAMES.index("cat"), config.CLASS_NAMES.index("dog")
    predicted = test_labels.copy()
    predicted[np.flatnonzero(test_labels == cat)[:132]] = dog
    predicted[np.flatnonzero(test_labels == dog)[:100]] = cat  # 232 of 2,000 mixed up
    probabilities = np.full((10_000, 10), 0.1 / 9)
    probabilities[np.arange(10_000), predicted] = 0.9
    best = runs.Run(
        results / "finetune",
        _metrics("finetune", ACCURACIES["finetune"]),
        history,
        test_labels,
        probabilities,
    )
    fileio.write_json(results / "error_analysis.json", reports.error_analysis(best))
    # Two of the figures; the reliability diagram is missing, which the deck must survive.
    figures.mkdir(parents=True)
    for name in ("sample_grid.png", "best_confusion_matrix.png"):
        figure = Figure(figsize=(2, 2))
        figure.add_subplot().plot([0, 1], [1, 0])
        figure.savefig(figures / name)
    return results, figures


def _texts(figure: Figure) -> list[Text]:
    return [text for text in figure.findobj(Text) if text.get_visible() and text.get_text()]


def test_main_builds_one_pdf_page_per_slide(fake_outputs, tmp_path, monkeypatch):
    results, figures = fake_outputs
    monkeypatch.setattr(config, "RESULTS_DIR", results.parent)
    monkeypatch.setattr(config, "IMAGES_DIR", figures.parent)
    out = tmp_path / "deck" / "slides.pdf"

    assert cli.main(["presentation", "--profile", PROFILE, "--out", str(out)]) == 0

    data = out.read_bytes()
    assert data.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page(?!s)", data)) == len(slides.SLIDES) == 11
    assert [path.name for path in out.parent.iterdir()] == ["slides.pdf"]  # no temp file left


def test_slides_are_readable_on_the_page_and_use_the_results(fake_outputs):
    results, figures = fake_outputs
    deck = slides.load_deck(PROFILE, results, figures)
    pages = []
    for figure in slides.render_slides(deck):
        assert tuple(figure.get_size_inches()) == pytest.approx((13.333, 7.5))
        renderer = FigureCanvasAgg(figure).get_renderer()
        figure.draw(renderer)
        assert min(text.get_fontsize() for text in _texts(figure)) >= 18
        drawn = figure.get_tightbbox(renderer)  # inches, everything drawn (text included)
        assert drawn.x0 >= 0 and drawn.y0 >= 0, figure.texts[0].get_text()
        assert drawn.x1 <= 13.333 and drawn.y1 <= 7.5, figure.texts[0].get_text()
        pages.append(" ".join(text.get_text() for text in _texts(figure)))
    assert "87.7% test accuracy" in pages[0] and "61.2%" in pages[0]
    assert "cat ↔ dog: 232 (11.6%)" in pages[7]
    assert "profile quick" in pages[4] and "code abc1234" in pages[4]
    assert "No GPU run yet" in pages[9]


def test_limitations_follow_which_results_exist(fake_outputs):
    deck = dataclasses.replace(slides.load_deck(PROFILE, *fake_outputs), has_full_results=True)
    figure = Figure(figsize=(slides.WIDTH, slides.HEIGHT))
    slides.limitations_slide(figure, deck)
    text = " ".join(text.get_text() for text in _texts(figure))
    assert "No GPU run yet" not in text
    assert "Trained on 10,000 of the 48,000 training images" in text
    assert "One seed, one run per model" in text


def test_limitations_give_the_spread_over_seeds_where_there_are_several(fake_outputs):
    deck = slides.load_deck(PROFILE, *fake_outputs)
    best = deck.runs["test_accuracy"].idxmax()
    deck.runs.loc[best, ["seeds", "test_accuracy_std"]] = [3, 0.002]
    figure = Figure(figsize=(slides.WIDTH, slides.HEIGHT))
    slides.limitations_slide(figure, deck)
    text = " ".join(text.get_text() for text in _texts(figure))
    assert "3 seeds for the models with a spread" in text and "over seeds is 0.2 points" in text
    assert "One seed" not in text


def test_missing_summary_names_the_file_and_the_command(fake_outputs, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"summary\.json.*make reproduce PROFILE=quick"):
        slides.build_deck(PROFILE, tmp_path / "empty", fake_outputs[1], out=tmp_path / "deck.pdf")
    assert not (tmp_path / "deck.pdf").exists()


def test_main_prints_an_error_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(config, "RESULTS_DIR", tmp_path)
    out = tmp_path / "deck.pdf"
    assert cli.main(["presentation", "--profile", PROFILE, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "summary.json" in error


@pytest.mark.parametrize("slide", [slides.comparison_slide, slides.curves_slide])
def test_charts_are_placed_no_smaller_than_plots_drew_them(fake_outputs, slide):
    """plots.py draws them in slide type sizes (>= 18 pt): shrunk, their text would be less."""
    figure = Figure(figsize=(slides.WIDTH, slides.HEIGHT))
    slide(figure, slides.load_deck(PROFILE, *fake_outputs))
    [image] = figure.findobj(AxesImage)
    height, width = image.get_array().shape[:2]
    box = image.axes.get_position()  # the image fills its box's width or height
    shown = min(box.width * slides.WIDTH / width, box.height * slides.HEIGHT / height)
    assert shown * plots.DPI >= 0.99
