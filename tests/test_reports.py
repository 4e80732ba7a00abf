import json
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cifar10_transfer import config, data, evaluation, fileio, runs
from cifar10_transfer.publish import reports


def _fake_run(folder, experiment, accuracy, backbone=None, tta=None):
    """A run folder as training.run_experiment writes it (metrics, history, predictions)."""
    folder.mkdir(parents=True)
    metrics = {
        "experiment": experiment,
        "test_accuracy": accuracy,
        "test_loss": 1.0 - accuracy,
        "ece": 0.05,
        "backbone": backbone,
        "image_size": 128 if backbone else 32,
        "data": {"train_size": 10_000, "test_size": 10_000},
        "epochs": 3,
        "wall_time_s": 90.0,
        "device": "cpu",
        "backend": "tensorflow",
        "seed": 42,
        "git_commit": "abc1234",
    }
    if tta is not None:
        metrics["tta_test_accuracy"] = tta
    fileio.write_json(folder / "metrics.json", metrics)
    stages = ["head", "head", "finetune"]
    pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "loss": [2.0, 1.5, 1.0],
            "accuracy": [0.3, 0.5, 0.7],
            "val_loss": [2.1, 1.6, 1.2],
            "val_accuracy": [0.3, 0.5, 0.6],
            "stage": stages,
        }
    ).to_csv(folder / "history.csv", index=False)
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(10), size=50).astype("float32")
    np.savez(folder / "predictions.npz", y_true=np.arange(50) % 10, probabilities=probabilities)
    return folder


def test_summary_table_orders_runs_and_markdown_uses_their_numbers(tmp_path):
    runs_dir, results = tmp_path / "runs", tmp_path / "results" / "quick"
    for experiment, accuracy, backbone, tta in [
        ("finetune", 0.91234, "efficientnet_lite0", 0.92),
        ("baseline_cnn", 0.6543, None, None),
    ]:
        runs.publish_run(
            _fake_run(runs_dir / experiment, experiment, accuracy, backbone, tta), results
        )
    table = reports.write_summary(results, "quick")
    assert list(table["experiment"]) == ["baseline_cnn", "finetune"]
    markdown = (results / "results.md").read_text()
    assert "65.43%" in markdown and "91.23%" in markdown and "92.00%" in markdown
    assert "efficientnet_lite0 fine-tuned" in markdown
    summary = json.loads((results / "summary.json").read_text())
    assert [run["test_accuracy"] for run in summary["runs"]] == [0.6543, 0.91234]
    assert summary["runs"][0]["tta_test_accuracy"] is None  # null, not NaN
    assert "NaN" not in (results / "summary.json").read_text()


def test_summary_reports_mean_std_and_count_over_seeds(tmp_path):
    runs_dir, results = tmp_path / "runs", tmp_path / "results" / "quick"
    runs.publish_run(
        _fake_run(runs_dir / "a", "finetune", 0.86, "efficientnet_lite0", 0.87), results
    )
    runs.publish_run(_fake_run(runs_dir / "b", "baseline_cnn", 0.70), results)
    for seed, accuracy in ((43, 0.88), (44, 0.87)):
        folder = _fake_run(runs_dir / str(seed), "finetune", accuracy, "efficientnet_lite0", 0.89)
        metrics = fileio.read_json(folder / "metrics.json")
        fileio.write_json(folder / "metrics.json", {**metrics, "seed": seed})
        runs.publish_run(folder, results / reports.SEEDS_DIR / str(seed))
    table = reports.write_summary(results, "quick").set_index("experiment")
    accuracies = np.array([0.86, 0.88, 0.87])
    assert table.loc["finetune", "test_accuracy"] == pytest.approx(accuracies.mean())
    assert table.loc["finetune", "test_accuracy_std"] == pytest.approx(accuracies.std(ddof=1))
    assert (table.loc["finetune", "seeds"], table.loc["finetune", "seed"]) == (3, "42,43,44")
    assert table.loc["baseline_cnn", "seeds"] == 1
    assert pd.isna(table.loc["baseline_cnn", "test_accuracy_std"])
    markdown = (results / "results.md").read_text()
    assert " 87.00% ± 1.00 |" in markdown  # mean ± std in points
    assert " 70.00% |" in markdown and "70.00% ±" not in markdown  # one seed: no spread
    assert "over the seeds run (42, 43, 44)" in markdown
    summary = json.loads((results / "summary.json").read_text())
    assert summary["runs"][0]["test_accuracy_std"] is None  # null, not NaN


@pytest.mark.parametrize(
    ("source", "described"),
    [
        ("/data/cifar10-jpeg.tar.gz", "the JPEG copy of CIFAR-10 (`cifar10-jpeg.tar.gz`)"),
        ("/k/cifar-10-batches-py", "the official CIFAR-10 (`cifar-10-batches-py`)"),
        ("/k/cifar-10-python.tar.gz", "the official CIFAR-10 (`cifar-10-python.tar.gz`)"),
        ("/data/my_pngs", "CIFAR-10 from `my_pngs`"),
    ],
)
def test_results_footer_names_the_data_that_was_used(source, described):
    assert reports.data_description(source) == described


def test_summary_of_an_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*/metrics.json"):
        reports.summary_table(tmp_path)


def test_update_readme_replaces_only_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:start -->\nold\n<!-- results:end -->\noutro\n")
    reports.update_readme("| new |", readme)
    assert readme.read_text() == (
        "intro\n<!-- results:start -->\n| new |\n<!-- results:end -->\noutro\n"
    )
    for broken in ("no markers", "<!-- results:end --> <!-- results:start -->"):
        readme.write_text(broken)
        with pytest.raises(ValueError, match="markers"):
            reports.update_readme("x", readme)
        assert readme.read_text() == broken


def test_eda_summary_adds_channel_statistics_to_the_data_summary():
    images = np.zeros((4, 2, 2, 3), np.uint8)
    images[..., 0] = [[[0]], [[100]], [[200]], [[100]]]  # red: mean 100, std sqrt(5000)
    images[..., 2] = 255
    dataset = data.CIFAR10(
        images,
        np.array([0, 1, 1, 2]),
        images[:1],
        np.array([3]),
        config.CLASS_NAMES,
        "/data/cifar.tar.gz",
        True,
        "sha256 of cifar.tar.gz",
    )
    summary = reports.eda_summary(dataset)
    assert summary["channel_mean"] == [100.0, 0.0, 255.0]
    assert summary["channel_std"] == [70.71, 0.0, 0.0]
    assert summary["train"]["automobile"] == 2 and summary["test"]["cat"] == 1
    assert summary["image_shape"] == [2, 2, 3] and summary["verified"] is True
    json.dumps(summary)  # JSON-ready: plain ints, floats and lists


def test_error_analysis_of_a_run_is_json_ready(tmp_path):
    run = runs.load_run(_fake_run(tmp_path / "run", "finetune", 0.9, "resnet50", tta=0.91))
    analysis = json.loads(json.dumps(reports.error_analysis(run, top_k=2)))
    assert analysis["best_experiment"] == "finetune"
    assert (analysis["test_accuracy"], analysis["tta_test_accuracy"]) == (0.9, 0.91)
    assert analysis["ece"] == evaluation.expected_calibration_error(run.y_true, run.probabilities)
    pairs = evaluation.most_confused_pairs(
        run.y_true, run.probabilities.argmax(axis=1), top_k=2, symmetric=True
    )
    assert analysis["most_confused_pairs"] == pairs.to_dict(orient="records")
    assert len(pairs) == 2 and set(pairs) == {"class_a", "class_b", "count", "share_of_true"}


def test_error_figures_come_from_stored_predictions(tmp_path):
    run = runs.load_run(_fake_run(tmp_path / "run", "finetune", 0.9, "efficientnet_lite0"))
    assert reports.stage_boundary(run.history) == 2
    images = np.random.default_rng(1).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    paths = reports.error_figures(images, run.y_true, run.probabilities, tmp_path / "figures")
    assert len(paths) == 4
    for path in paths:
        with Image.open(path) as image:
            assert image.width > 300 and image.height > 200


def test_load_model_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.keras"):
        runs.load_model(tmp_path)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="broken.keras"):
        runs.load_model(broken)


def test_experiment_labels_name_the_backbone():
    assert runs.experiment_label({"experiment": "head", "backbone": "resnet50"}) == (
        "resnet50 head only (frozen)"
    )


def test_provenance_says_whether_the_code_differs_from_its_commit(tmp_path, monkeypatch):
    def git(*arguments):
        subprocess.run(["git", *arguments], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "src").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "src" / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "metrics.json").write_text("{}\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    monkeypatch.setattr(config, "CHECKOUT", tmp_path)
    assert runs.environment()["git_dirty"] is False
    (tmp_path / "results" / "metrics.json").write_text('{"a": 1}\n')  # outputs may change
    assert runs.environment()["git_dirty"] is False
    (tmp_path / "src" / "code.py").write_text("x = 2\n")  # the code may not
    assert runs.environment()["git_dirty"] is True
    monkeypatch.setattr(config, "CHECKOUT", tmp_path / "no-repository")
    assert runs.environment()["git_dirty"] is None


def _trial(folder, experiment, accuracy, **settings):
    profile = config.profile("quick", **settings).to_dict()
    image_size = 32 if experiment == "baseline_cnn" else profile["image_size"]
    fileio.write_json(
        folder / "metrics.json",
        {
            "experiment": experiment,
            "test_accuracy": accuracy,
            "backbone": None if experiment == "baseline_cnn" else profile["backbone"],
            "image_size": image_size,
            "wall_time_s": 120.0,
            "git_commit": "abc1234",
            "seed": profile["seed"],
            "profile": profile,
        },
    )


def test_trials_table_reads_what_each_trial_changed_from_its_profile(tmp_path):
    _trial(
        tmp_path / "lite0-all",
        "finetune",
        0.8421,
        backbone="efficientnet_lite0",
        unfreeze="all",
        finetune_epochs=8,
        use_ema=False,
    )
    _trial(tmp_path / "cnn-30", "baseline_cnn", 0.6943, baseline_epochs=30, baseline_batch_size=128)
    _trial(tmp_path / "head-15", "head", 0.7486, head_epochs=15, finetune_epochs=4)
    markdown = reports.trials_markdown(tmp_path)
    lines = markdown.splitlines()
    assert lines[0].startswith("| trial") and len(lines) == 5
    cnn, head, lite0 = lines[2], lines[3], lines[4]  # sorted by folder name
    # The head row shows the head stage's own settings, not fine-tuning's.
    assert "| head (cached features) " in head and "| 15 " in head and "| 0.001 " in head
    assert head.count("| no ") == 2  # no EMA, not augmented
    assert "cnn-30" in cnn and "| all layers " in cnn and "| 30 " in cnn and "69.43%" in cnn
    assert "| 128 " in cnn and "| 64 " in lite0  # the baseline's batch, the fine-tuning's
    assert "efficientnet_lite0 fine-tuned" in lite0 and "| all " in lite0 and "| 8 " in lite0
    assert "84.21%" in lite0 and "| no " in lite0  # no EMA
    with pytest.raises(FileNotFoundError, match="no \\*/metrics.json"):
        reports.trials_markdown(tmp_path / "empty")


def test_comparison_labels_name_each_setting(tmp_path):
    results, runs_dir = tmp_path / "results", tmp_path / "runs"
    runs.publish_run(
        _fake_run(runs_dir / "ft", "finetune", 0.8672, "efficientnet_lite2", 0.8706), results
    )
    (label,) = reports.comparison_labels(reports.summary_table(results))
    assert label.endswith(" fine-tuned: 128 px, 10k images, CPU"), label


def test_trials_over_seeds_are_averaged_per_arm(tmp_path):
    for seed, accuracy in ((42, 0.86), (43, 0.88)):
        _trial(tmp_path / f"plateau-seed{seed}-finetune", "finetune", accuracy, seed=seed)
        _trial(
            tmp_path / f"cosine-seed{seed}-finetune",
            "finetune",
            0.85,
            seed=seed,
            lr_schedule="cosine",
        )
    _trial(tmp_path / "lite0-all", "finetune", 0.5)  # one run: not a trial over seeds
    lines = reports.seed_groups_markdown(tmp_path).splitlines()
    assert len(lines) == 4 and lines[0].startswith("| arm")
    cosine, plateau = lines[2], lines[3]
    assert "cosine-finetune" in cosine and "| cosine " in cosine and "85.00% ± 0.00" in cosine
    assert "| 42, 43 " in plateau and "87.00% ± 1.41" in plateau
    with pytest.raises(FileNotFoundError, match="over seeds"):
        reports.seed_groups_markdown(tmp_path / "empty")


def test_refresh_regenerates_summaries_and_every_readme_table(tmp_path):
    results, runs_dir = tmp_path / "results", tmp_path / "runs"
    runs.publish_run(
        _fake_run(runs_dir / "ft", "finetune", 0.8672, "efficientnet_lite2", 0.8706),
        results / "quick",
    )
    fileio.write_json(
        results / "quick" / "notebooks" / "timings.json",
        {"seconds": {"01_eda.ipynb": 30.0, "04_finetune.ipynb": 570.0, "extra seeds": 900.0}},
    )
    _trial(results / reports.TRIALS_DIR / "lite2", "finetune", 0.8672)
    readme = tmp_path / "README.md"
    markers = ["results-quick", "results-full", "profiles"]
    readme.write_text(
        "intro\n" + "".join(f"<!-- {m}:start -->\nold\n<!-- {m}:end -->\n" for m in markers)
    )
    recipe = tmp_path / "docs" / "recipe.md"  # docs/ beside the README holds tables too
    recipe.parent.mkdir()
    recipe.write_text("# Recipe\n<!-- trials-quick:start -->\nold\n<!-- trials-quick:end -->\n")
    done = reports.refresh_tables(results, readme)
    assert done == ["quick (1 models)", "profiles", "trials-quick"]
    assert "| lite2 " in recipe.read_text() and "old" not in recipe.read_text()
    text = readme.read_text()
    assert text.startswith("intro\n") and text.count("old") == 1  # full: no results yet
    assert (results / "quick" / "summary.json").exists()
    profiles = text.split("<!-- profiles:start -->")[1].split("<!-- profiles:end -->")[0]
    quick = next(line for line in profiles.splitlines() if line.startswith("| `quick`"))
    assert "10.0 min (notebooks 01-05, one seed)" in quick  # extra seeds not counted
    assert "86.72% (1 seed)" in quick
    fast = next(line for line in profiles.splitlines() if line.startswith("| `fast`"))
    assert "not measured" in fast and "all 48,000" in fast and "sgd" in fast


def test_tables_command_regenerates_from_the_results_files(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    runs.publish_run(_fake_run(tmp_path / "runs" / "b", "baseline_cnn", 0.6943), results / "quick")
    monkeypatch.setattr(config, "RESULTS_DIR", results)
    monkeypatch.setattr(config, "ROOT", tmp_path)
    from cifar10_transfer.cli import main

    assert main(["tables"]) == 0
    assert "regenerated quick (1 models)" in capsys.readouterr().out
    assert "69.43%" in (results / "quick" / "results.md").read_text()


def test_quickstart_time_gives_the_machines_reading_and_the_time_at_the_reference(tmp_path):
    folder = tmp_path / "quick"
    seconds = {name: 120.0 for name in config.NOTEBOOKS}  # 10 min in all
    machine = {
        "images_per_second": 62.4,
        "reference_images_per_second": 124.8,
        "command": "python benchmarks/throughput.py --steps 8",
        "file": "r.json",
    }
    fileio.write_json(
        folder / "notebooks" / "timings.json", {"seconds": seconds, "machine": machine}
    )
    fileio.write_json(folder / "finetune" / "metrics.json", {"device": "cpu", "git_commit": "abc"})
    text = reports.quickstart_time_markdown(tmp_path)
    assert "the five notebooks took 10.0 min" in text and "read 62.4 images/s" in text
    assert "would take about 5.0 min" in text  # half the reference speed: half the time there
    fileio.write_json(folder / "notebooks" / "timings.json", {"seconds": seconds})
    assert "did not read its machine's speed" in reports.quickstart_time_markdown(tmp_path)


def _corruption_entry(label, clean, accuracies):
    corruptions = {
        name: {"accuracy": value, "ratio": value / clean}
        for name, value in zip(evaluation.CORRUPTIONS, accuracies, strict=True)
    }
    mean = sum(value["ratio"] for value in corruptions.values()) / len(corruptions)
    harsher = {name: {"accuracy": value["accuracy"] / 2, "ratio": value["ratio"] / 2}
               for name, value in corruptions.items()}  # fmt: skip
    return {"label": label, "clean": clean, "seed": 0, "test_images": 2000, "severities": {
        "3": {"corruptions": corruptions, "mean_ratio": mean},
        "5": {"corruptions": harsher, "mean_ratio": mean / 2}}}  # fmt: skip


def test_corruption_table_note_and_readme_rows_come_from_the_results_file(tmp_path):
    results = {
        "models": {
            "baseline_cnn": _corruption_entry("Baseline CNN", 0.6, [0.3, 0.5, 0.5, 0.5, 0.5, 0.4]),
            "finetune": _corruption_entry("Lite2 fine-tuned", 0.9, [0.6, 0.8, 0.8, 0.8, 0.7, 0.45]),
        },
        "git_commit": "abc1234",
    }
    fileio.write_json(tmp_path / reports.CORRUPTIONS_FILE, results)
    table = reports.corruption_table(results, "5")
    assert list(table.columns) == ["Baseline CNN", "Lite2 fine-tuned"]
    assert list(table.index) == ["clean", *evaluation.CORRUPTIONS]
    assert table.loc["pixelate", "Lite2 fine-tuned"] == pytest.approx(0.225)
    note = reports.corruption_note(results)
    assert note.startswith("Lite2 fine-tuned is right on 90.0%") and "22.5% of pixelate" in note
    assert "0.77× at severity 3, 0.38× at severity 5" in note and "a pixelated one far" in note
    markdown = reports.corruptions_markdown(tmp_path)
    assert "| Lite2 fine-tuned | 3 " in markdown and "45.0% (0.50×)" in markdown
    assert "| Lite2 fine-tuned | 5 " in markdown and "22.5% (0.25×)" in markdown
    assert "severities 3 and 5 of 5, on 2,000 test images" in markdown and "abc1234" in markdown


def _fake_profile_run(results, profile, experiment, accuracy, image_size, seed=42):
    """A published run of ``profile`` at ``image_size`` px (``_fake_run``'s, re-sized)."""
    folder = _fake_run(
        results.parent / "runs" / profile / f"{experiment}-{seed}", experiment, accuracy,
        None if experiment == "baseline_cnn" else "efficientnet_lite2",
    )  # fmt: skip
    metrics = fileio.read_json(folder / "metrics.json")
    fileio.write_json(folder / "metrics.json", {**metrics, "image_size": image_size, "seed": seed})
    target = results / profile
    runs.publish_run(folder, target if seed == 42 else target / reports.SEEDS_DIR / str(seed))


def test_each_prior_result_stands_beside_our_best_run_on_its_own_setting(tmp_path):
    results = tmp_path / "results"
    _fake_profile_run(results, "quick", "baseline_cnn", 0.64, 32)
    _fake_profile_run(results, "quick", "finetune", 0.88, 128)  # below hires' 0.90 mean
    _fake_profile_run(results, "hires", "baseline_cnn", 0.69, 32)
    _fake_profile_run(results, "hires", "head", 0.81, 224)
    for seed, accuracy in ((42, 0.89), (43, 0.91)):
        _fake_profile_run(results, "hires", "finetune", accuracy, 224, seed=seed)
    table = reports.like_with_like([results]).set_index("prior")
    assert list(table.index) == [prior.label for prior in config.PRIOR_RESULTS]
    baseline = table.loc["MapiAI: baseline CNN, 10k"]
    assert (baseline.profile, baseline.accuracy) == ("hires", 0.69)  # the better of the two
    tuned = table.loc["MapiAI: ResNet-50 tuned, 224 px"]
    assert tuned.accuracy == pytest.approx(0.90) and tuned.seeds == 2
    assert tuned.accuracy_std == pytest.approx(np.std([0.89, 0.91], ddof=1))
    assert pd.isna(table.loc["Kornblith: ResNet-50 tuned, 50k"].profile)  # 50k: never run
    markdown = reports.like_with_like_markdown(table.reset_index())
    baseline_row = next(line for line in markdown.splitlines() if "baseline CNN, 10k" in line)
    assert "69.00%: `hires`, Baseline CNN (from scratch), 32 px, CPU, 1 seed" in baseline_row
    assert "+8.5 points: ours higher" in baseline_row
    tuned_row = next(line for line in markdown.splitlines() if "ResNet-50 tuned, 224" in line)
    assert "90.00% ± 1.41" in tuned_row and "mean of 2 seeds" in tuned_row
    assert "-1.0 points: prior higher" in tuned_row
    kallu = next(line for line in markdown.splitlines() if "ResNet-18 tuned" in line)
    assert "not recorded here" in kallu and "no run of ours on this setting" in kallu
    # `cifar10-transfer tables` redraws the README's figure with the README's table
    readme = tmp_path / "README.md"
    readme.write_text("<!-- like-with-like:start -->\nold\n<!-- like-with-like:end -->\n")
    done = reports.refresh_tables(results, readme)
    assert done[-2:] == ["like-with-like", "images/like_with_like.png"]
    assert (tmp_path / "images" / "like_with_like.png").stat().st_size > 0


def test_the_corruption_check_measures_each_compared_model_and_writes_its_results(
    tmp_path, monkeypatch
):
    from types import SimpleNamespace

    from cifar10_transfer import models

    monkeypatch.setattr(config, "RUNS_DIR", tmp_path / "runs")
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 10
    splits = SimpleNamespace(
        x_test=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), y_test=labels, source="memory"
    )
    assert reports.measure_corruptions("smoke", splits, tmp_path / "results") is None  # no models
    for experiment in reports.CORRUPTION_EXPERIMENTS:
        folder = runs.run_dir("smoke", experiment)
        folder.mkdir(parents=True)
        models.baseline_cnn().save(folder / "model.keras")  # any 32x32x3 -> 10 classes model
        fileio.write_json(folder / "metrics.json", {"experiment": experiment, "backbone": None})
    measured = reports.measure_corruptions("smoke", splits, tmp_path / "results")
    assert measured == fileio.read_json(tmp_path / "results" / reports.CORRUPTIONS_FILE)
    assert list(measured["models"]) == list(reports.CORRUPTION_EXPERIMENTS)
    for entry in measured["models"].values():
        assert entry["test_images"] == 40  # fewer than CORRUPTION_TEST_SIZE: all of them
        assert list(entry["severities"]) == [str(s) for s in reports.CORRUPTION_SEVERITIES]
    assert measured["models"]["head"]["label"] == runs.experiment_label({"experiment": "head"})
    assert measured["profile"] == "smoke" and measured["data"] == "memory"


@pytest.mark.parametrize("earlier", [False, True])  # the profile's own recipe, or another
def test_the_profiles_table_marks_results_of_an_earlier_recipe(tmp_path, earlier):
    results = tmp_path / "results"
    _fake_profile_run(results, "hires", "finetune", 0.90, 192)
    hires = config.PROFILES["hires"]
    epochs = hires.finetune_epochs + 2 if earlier else hires.finetune_epochs
    path = results / "hires" / "finetune" / "metrics.json"
    recipe = config.profile(hires, finetune_epochs=epochs).to_dict()
    fileio.write_json(path, {**fileio.read_json(path), "profile": recipe})
    table = reports.profiles_markdown(results).splitlines()
    row = next(line for line in table if "`hires`" in line)
    assert "90.00% (1 seed" in row
    note = f"an earlier recipe: finetune_epochs={epochs}→{hires.finetune_epochs}"
    assert (note in row) == earlier, row
