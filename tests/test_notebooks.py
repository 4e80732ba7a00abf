"""The five notebooks: structure, and a full headless run in the smoke profile on real data."""

import ast
import json
import os
import subprocess
import sys

import nbformat
import pytest

from cifar10_transfer import config
from cifar10_transfer.publish import reproduce

NOTEBOOKS = [config.NOTEBOOKS_DIR / name for name in config.NOTEBOOKS]
REQUIRED_PARAMETERS = {"profile_name", "overrides", "data", "out_dir", "figures_dir", "devices"}
# Settings the parameters cell no longer takes one by one: they are entries of ``overrides``.
REMOVED_PARAMETERS = {"profile", "backbone", "weights", "seed", "precision"}


def _code_cells(path):
    return [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]


def _python(source: str) -> str:
    # IPython magics (%pip) and shell lines (!git) are not Python; they only run in Colab.
    lines = source.splitlines()
    return "\n".join(
        line[: len(line) - len(line.lstrip())] + "pass"
        if line.lstrip()[:1] in "%!" and line.strip()
        else line
        for line in lines
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_starts_with_a_tagged_parameters_cell(path):
    first = _code_cells(path)[0]
    assert "parameters" in first.metadata.get("tags", [])
    assigned = {
        target.id
        for node in ast.parse(first.source).body
        for target in getattr(node, "targets", [])
    }
    assert assigned >= REQUIRED_PARAMETERS
    assert not assigned & REMOVED_PARAMETERS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_defines_no_functions_or_classes(path):
    for cell in _code_cells(path):
        for node in ast.walk(ast.parse(_python(cell.source))):
            assert not isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
            ), f"{path.name}: code belongs in src/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_installs_the_project_in_colab(path):
    assert "google.colab" in _code_cells(path)[1].source


def test_a_failing_cell_is_reported_by_notebook_cell_and_error(tmp_path):
    failing = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell("raise ValueError('boom')"),
        ]
    )
    failing.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path = tmp_path / "99_failing.ipynb"
    nbformat.write(failing, path)
    committed = tmp_path / "out" / "99_failing.ipynb"  # an executed copy from an earlier run
    committed.parent.mkdir()
    committed.write_text("the committed copy")
    # Cell 3 of the executed notebook: papermill injects its parameters cell after cell 1.
    with pytest.raises(
        reproduce.NotebookError, match=r"99_failing.ipynb failed in cell 3: ValueError: boom"
    ):
        reproduce.run_notebooks({"x": 2}, tmp_path / "out", notebooks=[path])
    # The committed copy stays; the failed run is kept beside it, nothing half-written.
    assert committed.read_text() == "the committed copy"
    failed = nbformat.read(tmp_path / "out" / "99_failing.failed.ipynb", as_version=4)
    assert "boom" in json.dumps(failed.cells[-1].outputs)
    assert sorted(p.name for p in committed.parent.iterdir()) == [
        "99_failing.failed.ipynb",
        "99_failing.ipynb",
        "99_failing.kernel.log",
    ]


def test_a_kernels_own_output_goes_to_its_log_and_the_kernel_is_shut_down(tmp_path, capfd):
    # What a library writes to file descriptor 2 (as TensorFlow's C++ start-up does) stays
    # out of the terminal and the notebook; Python's own warnings still show in the cell.
    chatty = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell(
                "import os, warnings\n"
                "os.write(2, b'I0000 C++ start-up chatter\\n')\n"
                "warnings.warn('a warning that matters')\n"
                "print(os.getpid())"
            ),
        ]
    )
    chatty.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    path = tmp_path / "98_chatty.ipynb"
    nbformat.write(chatty, path)
    reproduce.run_notebooks({}, tmp_path / "out", notebooks=[path])
    terminal = capfd.readouterr()
    assert "chatter" not in terminal.out + terminal.err and "[98_chatty.ipynb] done" in terminal.out
    assert "chatter" in (tmp_path / "out" / "98_chatty.kernel.log").read_text()
    outputs = nbformat.read(tmp_path / "out" / "98_chatty.ipynb", as_version=4).cells[-1].outputs
    text = "".join(output.get("text", "") for output in outputs)
    assert "chatter" not in text and "a warning that matters" in text
    pid = int(next(output.text for output in outputs if output.get("name") == "stdout"))
    with pytest.raises(ProcessLookupError):  # the kernel has exited, not lingering
        os.kill(pid, 0)


class NotebooksStarted(Exception):
    """Stops reproduce where it would start the notebooks."""


def test_reproduce_hands_the_notebooks_the_profile_name_and_its_overrides(tmp_path, monkeypatch):
    started = {}

    def run_notebooks(parameters, output_dir, notebooks=None, timings=None):
        started.update(parameters=parameters, output_dir=output_dir)
        raise NotebooksStarted

    checked = []
    monkeypatch.setattr(reproduce, "run_notebooks", run_notebooks)
    monkeypatch.setattr(reproduce, "machine_reading", lambda folder: None)  # 30 s, measured
    monkeypatch.setattr(reproduce, "check_settings", lambda *arguments: checked.append(arguments))
    monkeypatch.setattr(config, "RESULTS_DIR", tmp_path / "results")  # elsewhere
    monkeypatch.chdir(tmp_path)
    overrides = {"weights": "local.h5", "seed": 43, "train_size": None}
    with pytest.raises(NotebooksStarted):
        reproduce.reproduce("smoke", overrides, data="cifar.tar.gz", devices="all")
    # Notebooks run in notebooks/: relative paths reach them resolved.
    assert started["parameters"] == {
        "profile_name": "smoke",
        "overrides": {"weights": str(tmp_path / "local.h5"), "seed": 43, "train_size": None},
        "data": str(tmp_path / "cifar.tar.gz"),
        "devices": "all",
    }
    assert started["output_dir"] == config.RESULTS_DIR / "smoke" / "notebooks"
    assert checked == [("smoke", started["parameters"]["overrides"])]  # what the notebooks get
    assert overrides["weights"] == "local.h5"  # the caller's dict is left as it was


def test_reproduce_refuses_an_unknown_setting_before_any_notebook(tmp_path, monkeypatch):
    def run_notebooks(parameters, output_dir, notebooks=None, timings=None):
        raise AssertionError("the notebooks started")

    monkeypatch.setattr(reproduce, "run_notebooks", run_notebooks)
    monkeypatch.setattr(config, "RESULTS_DIR", tmp_path / "results")
    with pytest.raises(ValueError, match="unknown profile setting"):
        reproduce.reproduce("smoke", {"epochz": 3})
    # What only Keras can check (notebook 03 would meet it after 02's training) fails here too.
    with pytest.raises(ValueError, match="profile 'smoke': unfreeze='stage:block9': no layer"):
        reproduce.reproduce("smoke", {"unfreeze": "stage:block9"})
    assert not (tmp_path / "results").exists()  # no log, no folder: nothing half-written


def fake_notebooks(parameters, output_dir, notebooks=None, timings=None):
    """run_notebooks without the notebooks: the progress lines of one that ran."""
    timings = {} if timings is None else timings
    for path in notebooks:
        reproduce.say(f"[{path.name}] done in 1 s, data {parameters['data']}")
        timings[path.name] = 1.0
    return timings


def stub_reproduce(monkeypatch, tmp_path, notebooks=fake_notebooks):
    """reproduce() with the notebooks, the speed reading and the tables stubbed, in tmp_path."""
    monkeypatch.setattr(config, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(reproduce, "run_notebooks", notebooks)
    monkeypatch.setattr(reproduce, "machine_reading", lambda folder: None)
    monkeypatch.setattr(reproduce, "check_settings", lambda *arguments: "settings checked")

    def refresh_tables():
        (tmp_path / "results" / "smoke" / "results.md").write_text("| the table |\n")
        return ["smoke (5 models)"]

    monkeypatch.setattr(reproduce.reports, "refresh_tables", refresh_tables)


def test_reproduce_keeps_its_progress_lines_in_reproduce_log(tmp_path, monkeypatch, capsys):
    stub_reproduce(monkeypatch, tmp_path)
    data = tmp_path / "data" / "cifar10-jpeg.tar.gz"
    data.parent.mkdir()
    data.write_bytes(b"")
    reproduce.reproduce("smoke", {"seed": 7}, data=str(data))
    log = (tmp_path / "results" / "smoke" / "reproduce.log").read_text().splitlines()
    # The command that reproduces the run, the code it ran, the caches already there.
    assert log[0] == (
        "cifar10-transfer reproduce --profile smoke --set seed=7 "
        "--data path/to/cifar10-jpeg.tar.gz --seeds 1"
    )
    assert log[1].startswith("started ") and ("commit " in log[1] or "not in a git" in log[1])
    assert log[2].startswith("caches at the start: ") and "efficientnet_lite0 at 32 px" in log[2]
    # Then what the terminal showed, with this machine's folders taken out.
    assert log[3:] == [
        "settings checked",
        "[01_eda.ipynb] done in 1 s, data cifar10-jpeg.tar.gz",
        "[02_baseline_cnn.ipynb] done in 1 s, data cifar10-jpeg.tar.gz",
        "[03_transfer_head.ipynb] done in 1 s, data cifar10-jpeg.tar.gz",
        "[04_finetune.ipynb] done in 1 s, data cifar10-jpeg.tar.gz",
        "[05_compare_and_errors.ipynb] done in 1 s, data cifar10-jpeg.tar.gz",
        "regenerated smoke (5 models)",
        "| the table |",
    ]
    printed = capsys.readouterr().out
    assert f"done in 1 s, data {data}" in printed and printed.endswith("| the table |\n")
    assert sorted(path.name for path in (tmp_path / "results" / "smoke").glob("*.log")) == [
        "reproduce.log"
    ]


def test_a_failed_reproduce_keeps_its_log_apart_and_the_last_one_as_it_was(tmp_path, monkeypatch):
    def failing(parameters, output_dir, notebooks=None, timings=None):
        reproduce.say("[01_eda.ipynb] ...")
        raise reproduce.NotebookError("01_eda.ipynb failed in cell 3: ValueError: boom")

    stub_reproduce(monkeypatch, tmp_path, failing)
    last = tmp_path / "results" / "smoke" / "reproduce.log"
    last.parent.mkdir(parents=True)
    last.write_text("the last run's log\n")
    with pytest.raises(reproduce.NotebookError):
        reproduce.reproduce("smoke")
    failed = (tmp_path / "results" / "smoke" / "reproduce.failed.log").read_text().splitlines()
    assert failed[-2:] == [
        "[01_eda.ipynb] ...",
        "failed: 01_eda.ipynb failed in cell 3: ValueError: boom",
    ]
    assert last.read_text() == "the last run's log\n"
    assert not (tmp_path / "results" / "smoke" / "reproduce.partial.log").exists()
    reproduce.say("after the run")  # goes to the terminal only: no log is open
    logs = tmp_path / "results" / "smoke"
    assert (logs / "reproduce.failed.log").read_text().splitlines() == failed
    assert last.read_text() == "the last run's log\n"


def test_executed_notebooks_keep_no_machine_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "ROOT", tmp_path / "root")
    data = tmp_path / "data" / "cifar10-jpeg.tar.gz"
    data.parent.mkdir()
    data.write_bytes(b"")
    text = f"starting from {tmp_path}/root/runs/smoke/head/model.keras; source: {data}"
    assert reproduce.portable_paths(text, {"data": str(data)}) == (
        "starting from runs/smoke/head/model.keras; source: cifar10-jpeg.tar.gz"
    )


@pytest.mark.realdata
def test_all_notebooks_run_top_to_bottom_in_the_smoke_profile(real_data_path, tmp_path):
    environment = {**os.environ, "CIFAR10_TRANSFER_ROOT": str(tmp_path), "CIFAR10_VERBOSE": "0"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cifar10_transfer",
            "reproduce",
            "--profile",
            "smoke",
            "--data",
            str(real_data_path),
            "--seeds",
            "2",
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Our progress lines only: TensorFlow's start-up logs went to the kernel logs.
    assert "oneDNN" not in result.stdout + result.stderr, result.stderr[-3000:]
    assert "[seed 43] finetune: test accuracy" in result.stdout
    results = tmp_path / "results" / "smoke"
    # The same progress lines, kept under the command that reproduces them.
    log = (results / "reproduce.log").read_text()
    assert log.startswith(
        f"cifar10-transfer reproduce --profile smoke --data path/to/{real_data_path.name} "
        "--seeds 2\n"
    )
    assert "[seed 43] finetune: test accuracy" in log
    assert "[05_compare_and_errors.ipynb] done" in log
    assert str(tmp_path) not in log and str(real_data_path.resolve().parent) not in log
    assert (results / "notebooks" / "seeds.kernel.log").is_file()
    for name in config.NOTEBOOKS:
        executed = (results / "notebooks" / name).read_text()
        # No machine's folders: the project's paths are relative, the data file by its name.
        assert str(tmp_path) not in executed and str(config.CHECKOUT) not in executed
        assert str(real_data_path.resolve().parent) not in executed
    recorded = json.loads((results / "notebooks" / "timings.json").read_text())
    timings = recorded["seconds"]
    assert set(timings) == {*config.NOTEBOOKS, "extra seeds", "total"}
    # The machine's speed was read first, with the committed command, and kept beside them.
    machine = recorded["machine"]
    assert machine["images_per_second"] > 0 and machine["reference_images_per_second"] == 124.8
    assert machine["command"].startswith("python benchmarks/throughput.py --backbone")
    reading = json.loads((results / "notebooks" / machine["file"]).read_text())
    assert reading["images_per_second"] == pytest.approx(machine["images_per_second"], abs=0.05)
    assert timings["total"] > timings["extra seeds"] > 0
    summary = json.loads((results / "summary.json").read_text())
    experiments = [run["experiment"] for run in summary["runs"]]
    assert experiments == ["baseline_cnn", "two_layer_fc", "three_layer_cnn", "head", "finetune"]
    assert all(0.0 <= run["test_accuracy"] <= 1.0 for run in summary["runs"])
    # Seed 43 trained the compared models again: their rows are means over 2 seeds.
    seeds = {run["experiment"]: (run["seeds"], run["seed"]) for run in summary["runs"]}
    assert seeds == {
        "baseline_cnn": (2, "42,43"),
        "two_layer_fc": (1, "42"),
        "three_layer_cnn": (1, "42"),
        "head": (2, "42,43"),
        "finetune": (2, "42,43"),
    }
    second = json.loads((results / "seeds" / "43" / "finetune" / "metrics.json").read_text())
    assert second["seed"] == 43 and second["profile"]["seed"] == 43
    finetune = next(run for run in summary["runs"] if run["experiment"] == "finetune")
    first = json.loads((results / "finetune" / "metrics.json").read_text())["test_accuracy"]
    assert finetune["test_accuracy"] == pytest.approx((first + second["test_accuracy"]) / 2)
    assert json.loads((results / "eda.json").read_text())["train"]["cat"] == 5000
    assert "most_confused_pairs" in json.loads((results / "error_analysis.json").read_text())
    figures = sorted(path.name for path in (tmp_path / "images" / "smoke").glob("*.png"))
    assert {
        "sample_grid.png",
        "comparison.png",
        "finetune_curves.png",
        "best_reliability.png",
    } <= set(figures)
    assert "\n| Baseline CNN (from scratch) " in result.stdout  # a row of the printed table

    # One code path: the CLI trains what notebooks 02-04 trained, to the same numbers.
    cli_root = tmp_path / "cli"
    for experiment in reproduce.SEED_EXPERIMENTS:
        trained = subprocess.run(
            [sys.executable, "-m", "cifar10_transfer", "train", experiment, "--profile", "smoke",
             "--data", str(real_data_path)],
            env={**environment, "CIFAR10_TRANSFER_ROOT": str(cli_root)},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert trained.returncode == 0, trained.stderr[-3000:]
        by_cli = json.loads((cli_root / "runs" / "smoke" / experiment / "metrics.json").read_text())
        by_notebook = json.loads((results / experiment / "metrics.json").read_text())
        keys = ["test_accuracy", "test_loss", "ece", "epochs"]
        keys += ["tta_test_accuracy"] if experiment == "finetune" else []
        for key in keys:
            assert by_cli.get(key) == pytest.approx(by_notebook.get(key), rel=1e-6), (
                experiment,
                key,
            )


def write_seed_metrics(results_dir, profile, seed):
    """A seed folder as train_seeds leaves it: each experiment's metrics.json names its recipe."""
    for experiment in ("baseline_cnn", "finetune"):
        folder = results_dir / profile.name / "seeds" / str(seed) / experiment
        folder.mkdir(parents=True)
        recipe = {**profile.to_dict(), "seed": seed}
        (folder / "metrics.json").write_text(json.dumps({"profile": recipe}))


def test_extra_seed_keeps_seeds_of_its_recipe_and_drops_the_others(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "RESULTS_DIR", tmp_path)
    hires = config.profile("hires")
    write_seed_metrics(tmp_path, hires, 43)
    write_seed_metrics(tmp_path, config.profile("hires", finetune_epochs=9), 44)
    trained = []

    def train_seeds(profile, seeds, data, devices):
        trained.append(seeds)
        reproduce.say(f"[seed {seeds[0]}] finetune: test accuracy 90.00% in 30.0 min (7 epochs)")

    monkeypatch.setattr(reproduce, "train_seeds", train_seeds)
    monkeypatch.setattr(reproduce.reports, "refresh_tables", lambda: [])
    (tmp_path / "hires" / "results.md").write_text("| the table |\n")
    assert reproduce.extra_seed(hires, 45) == tmp_path / "hires" / "results.md"
    assert trained == [[45]]
    # Seed 43 ran this recipe and stays for the table; 44 ran another number of epochs.
    assert sorted(path.name for path in (tmp_path / "hires" / "seeds").iterdir()) == ["43", "45"]
    log = (tmp_path / "hires" / "seeds" / "45" / "reproduce.log").read_text().splitlines()
    assert log[0] == "cifar10-transfer reproduce --profile hires --seeds 1 --extra-seed 45"
    assert log[3:] == [
        "[seed 45] finetune: test accuracy 90.00% in 30.0 min (7 epochs)",
        "| the table |",
    ]


def test_extra_seed_refuses_the_notebooks_seed_before_any_training(monkeypatch, capsys):
    monkeypatch.setattr(reproduce, "train_seeds", lambda *args: pytest.fail("it trained"))
    with pytest.raises(ValueError, match="seed=42 is the notebooks' own seed"):
        reproduce.extra_seed(config.profile("hires"), 42)
    from cifar10_transfer import cli

    assert cli.main(["reproduce", "--profile", "hires", "--extra-seed", "44", "--seeds", "2"]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["error: --extra-seed trains one seed alone: expected no --seeds with it"]


RESNET_SCRIPT = """
import sys
from pathlib import Path
from cifar10_transfer import config
from cifar10_transfer.publish import reproduce
parameters = {"profile_name": "smoke", "data": sys.argv[1], "overrides": {
    "backbone": "resnet50", "weights": None, "image_size": 32, "unfreeze": "stage:conv5"}}
names = ("03_transfer_head.ipynb", "04_finetune.ipynb")
notebooks = [config.NOTEBOOKS_DIR / name for name in names]
reproduce.run_notebooks(parameters, Path(sys.argv[2]), notebooks=notebooks)
"""


@pytest.mark.realdata
def test_notebooks_03_and_04_run_top_to_bottom_with_resnet50(real_data_path, tmp_path):
    # What auto picks on a Colab GPU (paper: ResNet-50): its preprocessing, the backbone built
    # in 03's cells and unfrozen by stage in 04, here without weights and at 32 px.
    environment = {**os.environ, "CIFAR10_TRANSFER_ROOT": str(tmp_path), "CIFAR10_VERBOSE": "0"}
    out = tmp_path / "executed"
    done = subprocess.run(
        [sys.executable, "-c", RESNET_SCRIPT, str(real_data_path), str(out)],
        env=environment, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    head = json.loads((tmp_path / "runs" / "smoke" / "head" / "metrics.json").read_text())
    finetune = json.loads((tmp_path / "runs" / "smoke" / "finetune" / "metrics.json").read_text())
    assert head["backbone"] == finetune["backbone"] == "resnet50"
    executed = (out / "04_finetune.ipynb").read_text()
    assert "unfreeze stage:conv5:" in executed and "backbone conv5" in executed
