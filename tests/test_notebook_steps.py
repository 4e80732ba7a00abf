"""The package calls the notebooks show: profile choice, freezing and unfreezing, the results
notebook 05 finds, the measured times they print, and the one-seed time comparison."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_training import SMALL, synthetic_splits

from cifar10_transfer import config, fileio, hardware, imaging, models, runs, training
from cifar10_transfer.publish import reports, reproduce

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(config, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(config, "COMMITTED_RESULTS", tmp_path / "committed")


@pytest.mark.parametrize("gpu, expected", [(False, "quick"), (True, "paper")])
def test_auto_profile_is_quick_on_a_cpu_and_paper_on_a_gpu(gpu, expected, monkeypatch):
    monkeypatch.setattr(hardware, "has_accelerator", lambda: gpu)
    monkeypatch.setattr(hardware, "device_name", lambda: "NVIDIA T4")
    name, why = hardware.choose_profile("auto")
    assert name == expected and why.startswith("auto: ")
    assert ("NVIDIA T4" in why) == gpu
    assert hardware.choose_profile("smoke") == ("smoke", "chosen by name")
    with pytest.raises(ValueError, match="profile must be one of"):
        hardware.choose_profile("quik")


def test_head_stage_freezes_the_backbone_and_fine_tuning_unfreezes_from_the_profile(tmp_path):
    profile = config.profile("smoke", **SMALL)
    splits = synthetic_splits()
    training.run_experiment("head", profile, splits=splits)
    head = runs.load_model(runs.run_dir("smoke", "head") / "model.keras")
    table = models.trainable_table(head)
    trains = dict(zip(table["part"], table["trains"], strict=True))
    assert trains["head"] == "all"
    assert {value for part, value in trains.items() if part.startswith("backbone ")} == {"no"}

    setup = training.set_up("finetune", profile, splits=splits)
    model = training.load_head_model(setup)  # the head run just written
    models.set_trainable(model, setup.unfreeze, train_bn=profile.train_bn)
    after = models.trainable_table(model)
    assert after.loc[after["part"] == "backbone conv5", "trains"].item() == "part"  # BN frozen
    assert after.loc[after["part"] == "backbone conv1", "trains"].item() == "no"
    metrics = training.run_experiment("finetune", profile, splits=splits)
    assert metrics["epochs"] == profile.finetune_epochs and "tta_test_accuracy" in metrics
    stored = runs.load_run(runs.run_dir("smoke", "finetune"))
    assert list(stored.history["stage"].unique()) == ["head", "finetune"]
    assert np.array_equal(stored.predicted, stored.probabilities.argmax(axis=1))


def test_stage_callbacks_run_reduce_lr_on_plateau_with_the_plateau_schedule(tmp_path):
    names = [
        type(c).__name__ for c in training.stage_callbacks(training.Stage("finetune"), tmp_path)
    ]
    assert names[0] == "TerminateOnNaN"
    # an epoch's history row is written before its backup, the backup before the EMA swap
    assert names[names.index("CSVLogger") + 1] == "AtomicBackupAndRestore"
    assert "ReduceLROnPlateau" not in names  # a constant rate stays constant
    plateau = training.Stage.of(config.profile("quick"), "finetune")
    assert plateau.schedule == "plateau"  # the default
    names = [type(c).__name__ for c in training.stage_callbacks(plateau, tmp_path)]
    assert "ReduceLROnPlateau" in names and ("SwapEMAWeights" in names) == plateau.use_ema
    assert names.index("ReduceLROnPlateau") < names.index("LearningRateLogger")
    assert names.index("AtomicBackupAndRestore") < names.index("SwapEMAWeights")


def test_an_epoch_run_again_after_a_resume_keeps_its_last_row(tmp_path):
    # stopped after epoch 1's row but before its backup: the resumed run repeats epoch 1
    (tmp_path / training.HISTORY_PART).write_text(
        "epoch,loss,val_accuracy\n0,2.0,0.3\n1,1.5,0.4\n1,1.4,0.45\n2,1.2,0.5\n"
    )
    history = training.read_history(tmp_path)
    assert list(history["loss"]) == [2.0, 1.4, 1.2]


def test_fit_refuses_a_model_that_was_not_compiled(tmp_path):
    model = models.build(config.experiment("two_layer_fc"), config.profile("smoke"))
    stage = training.Stage("baseline")
    with pytest.raises(ValueError, match="compile it first"):
        training.fit(model, None, None, None, None, stage, training.Job(tmp_path))


def publish(metrics_dir: Path, experiment="finetune", commit="abc1234", accuracy=0.5):
    folder = metrics_dir / experiment
    folder.mkdir(parents=True)
    fileio.write_json(
        folder / "metrics.json",
        {"experiment": experiment, "git_commit": commit, "test_accuracy": accuracy},
    )


def test_notebook_05_prefers_runs_made_here_then_committed_results(tmp_path, monkeypatch):
    publish(config.COMMITTED_RESULTS / "smoke", commit="c0mm1t")
    folder, which = reproduce.find_results(config.profile("smoke"))
    assert folder == config.COMMITTED_RESULTS / "smoke" and "c0mm1t" in which
    publish(config.RESULTS_DIR / "smoke", commit=None)
    folder, which = reproduce.find_results(config.profile("smoke"))
    assert folder == config.RESULTS_DIR / "smoke" and reports.NO_COMMIT in which


def test_notebook_05_trains_what_it_compares_when_nothing_exists(monkeypatch):
    trained = []

    def run_experiment(experiment, profile, data=None, devices=None):
        trained.append(experiment)
        publish(config.RUNS_DIR / profile.name, experiment)

    monkeypatch.setattr(training, "run_experiment", run_experiment)
    monkeypatch.setattr(runs, "publish_run", lambda run, results: trained.append(results))
    folder, which = reproduce.find_results(config.profile("smoke"))
    assert trained[::2] == list(reproduce.SEED_EXPERIMENTS)
    assert folder == config.RESULTS_DIR / "smoke" and "trained just now" in which


def test_expected_time_reads_the_committed_timings_and_says_which_recipe_ran():
    quick = config.profile("quick")
    assert "no measured time" in reproduce.expected_time(quick, "04_finetune.ipynb")
    folder = config.COMMITTED_RESULTS / "quick"
    fileio.write_json(folder / "notebooks" / "timings.json", {"seconds": {"04_finetune.ipynb": 90}})
    fileio.write_json(
        folder / "finetune" / "metrics.json",
        {"device": "cpu (x86_64, 2 cores)", "profile": {**quick.to_dict(), "seed": 7}},
    )
    assert reproduce.expected_time(quick, "04_finetune.ipynb") == (
        "04_finetune.ipynb took 1.5 min in the committed make reproduce of 'quick' on "
        "cpu (x86_64, 2 cores), the same recipe as this run"
    )
    longer = config.profile("quick", finetune_epochs=9)
    assert reproduce.expected_time(longer, "04_finetune.ipynb").endswith(
        f"another recipe than this run's (finetune_epochs={quick.finetune_epochs}→9)"
    )
    table = reports.notebook_times_markdown(config.COMMITTED_RESULTS)
    assert "| 04_finetune.ipynb" in table and "1.5 min" in table
    assert "not measured yet (a GPU)" in table


def test_expect_lines_cite_the_committed_results_of_this_recipe_or_say_they_are_not():
    # The real committed results: the line quotes results/quick's own table, and says
    # plainly when the profile asks for another recipe than the one that made them.
    committed = config.CHECKOUT / "results"
    for name in ("quick", "hires"):
        folder = committed / name
        if not (folder / "finetune" / "metrics.json").exists():
            continue
        (config.COMMITTED_RESULTS / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(folder, config.COMMITTED_RESULTS / name)
        row = reports.summary_table(folder).set_index("experiment").loc["finetune"]
        recorded = fileio.read_json(folder / "finetune" / "metrics.json")["profile"]
        profile = config.profile(name)
        line = reproduce.expected_result(profile, "finetune")
        assert f"{100 * row['test_accuracy']:.2f}%" in line and str(row["git_commit"]) in line
        same = not reports.recipe_differences(recorded, profile)
        assert line.startswith("expect about") == same, line
        other = reproduce.expected_result(config.profile(name, finetune_epochs=99), "finetune")
        assert other.startswith("the committed result comes from another recipe")
        assert "finetune_epochs=" in other and "→99" in other


def test_curve_notes_say_what_the_learning_rate_and_the_accuracies_did():
    history = pd.DataFrame({
        "stage": ["head", "head", "finetune", "finetune", "finetune"],
        "accuracy": [0.80, 0.91, 0.72, 0.78, 0.80],
        "val_accuracy": [0.70, 0.75, 0.84, 0.86, 0.87],
        "learning_rate": [1e-3, 1e-3, 3e-4, 3e-4, 3e-4],
    })  # fmt: skip
    stage = training.Stage.of(config.profile("quick"), "finetune")
    notes = reports.curve_notes(history, stage)
    assert "training accuracy from 91.0% to 72.0%" in notes and "augmented images" in notes
    assert "ReduceLROnPlateau did not fire" in notes and "still rising" in notes
    history.loc[4, "learning_rate"] = 6e-5
    history.loc[4, "val_accuracy"] = 0.85
    notes = reports.curve_notes(history, stage)
    assert "ReduceLROnPlateau cut the learning rate after fine-tuning epoch 2" in notes
    assert "no longer rising" in notes and "did not fire" not in notes


def test_reliability_note_reads_which_way_the_bars_fall():
    bins = pd.DataFrame({"confidence": [0.5, 0.7, 0.9], "accuracy": [0.6, 0.85, 0.97],
                         "count": [100, 300, 600]})  # fmt: skip
    note = reports.reliability_note(bins, 0.08, label_smoothing=0.1)
    assert "**underconfident**" in note and "100% of the test images" in note
    assert "label smoothing 0.1" in note and "8.0% (ECE)" in note
    bins["accuracy"] = [0.4, 0.6, 0.85]
    note = reports.reliability_note(bins, 0.05)
    assert "**overconfident**" in note and "label smoothing" not in note


def test_best_trained_is_the_best_model_on_this_machine():
    assert runs.best_trained("quick", ["finetune", "head"]) is None
    folder = runs.run_dir("quick", "head")
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(b"PK")
    assert runs.best_trained("quick", ["finetune", "head"]) == folder


def test_published_predictions_are_bounded_when_read(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    fileio.write_json(folder / "metrics.json", {"experiment": "head"})
    (folder / "history.csv").write_text("epoch\n1\n")
    np.savez(folder / "predictions.npz", y_true=np.zeros(3, int), probabilities=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="one probability per class"):
        runs.load_run(folder)


def test_save_png_and_thumbnail_round_trip(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    path = imaging.save_png(pixels, tmp_path / "x.png")
    assert [entry.name for entry in tmp_path.iterdir()] == ["x.png"]
    assert np.array_equal(imaging.thumbnail(path), pixels)
    assert imaging.load_image(path).shape == (32, 32, 3)


def write_root(root: Path, seconds: float, commit: str, device="cpu (x86_64, 2 cores)"):
    timings = {name: seconds / len(config.NOTEBOOKS) for name in config.NOTEBOOKS}
    timings["extra seeds"] = 999.0  # not part of the one-seed time
    fileio.write_json(root / "results/quick/notebooks/timings.json", {"seconds": timings})
    fileio.write_json(
        root / "results/quick/finetune/metrics.json",
        {"git_commit": commit, "device": device, "backend": "tensorflow",
         "backbone": "efficientnet_lite2", "test_accuracy": 0.86,
         "timestamp": "2026-12-02T00:00:00Z"},
    )  # fmt: skip


def test_reproduce_ratio_compares_the_one_seed_times(tmp_path):
    write_root(tmp_path / "new", 900, "new1234")
    write_root(tmp_path / "old", 500, "old1234")
    out = tmp_path / "ratio.json"
    script = ROOT / "benchmarks" / "reproduce_ratio.py"
    command = [sys.executable, str(script), "--new", str(tmp_path / "new"), "--old"]
    done = subprocess.run(
        [*command, str(tmp_path / "old"), "--out", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["ratio"] == pytest.approx(1.8) and result["goals_met"]
    assert result["new"]["one_seed_seconds"] == 900 and result["old"]["git_commit"] == "old1234"
    write_root(tmp_path / "other", 500, "old1234", device="cpu (x86_64, 16 cores)")
    done = subprocess.run(
        [*command, str(tmp_path / "other"), "--out", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.startswith("error: the runs used different")


def test_make_reproduce_of_a_cpu_profile_does_not_start_tensorflow_in_its_own_process():
    # The kernels print their own lines; the parent's TensorFlow start-up logs (which
    # TF_CPP_MIN_LOG_LEVEL cannot silence) would sit between the progress lines.
    code = (
        "import sys\n"
        "from cifar10_transfer import cli, config\n"
        "from cifar10_transfer.publish import reports, reproduce\n"
        "config.check(config.profile('quick'))\n"
        "print(reproduce.check_settings('quick', {'image_size': 64, 'weights': None}))  # a child\n"
        "reports.notebook_times_markdown()\n"
        "print(sorted({'keras', 'tensorflow'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    checked, modules = done.stdout.splitlines()
    assert checked.startswith("profile 'quick': settings checked") and modules == "[]"
    assert "oneDNN" not in done.stderr
