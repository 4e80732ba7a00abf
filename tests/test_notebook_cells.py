"""What notebooks 02-04 write out in their cells is what the CLI runs: the models they build
layer by layer, their optimizers and their callback lists, held to the package's builders."""

import keras
import nbformat
import pytest
from test_training import synthetic_splits

from cifar10_transfer import config, models, training

NOTEBOOKS = {
    name: config.NOTEBOOKS_DIR / f"{name}.ipynb"
    for name in ("02_baseline_cnn", "03_transfer_head", "04_finetune")
}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "RUNS_DIR", tmp_path / "runs")


def code_cells(notebook: str) -> list:
    cells = nbformat.read(NOTEBOOKS[notebook], as_version=4).cells
    return [cell for cell in cells if cell.cell_type == "code"]


def tagged(notebook: str, tag: str) -> str:
    (cell,) = [cell for cell in code_cells(notebook) if tag in cell.metadata.get("tags", [])]
    return cell.source


def run_cell(source: str, namespace: dict) -> dict:
    """Run a notebook cell's code in ``namespace`` (its last line, a display, is dropped)."""
    lines = source.rstrip().splitlines()
    exec("\n".join(lines[:-1]), namespace)  # noqa: S102 - the repository's own notebook
    return namespace


def notebook_namespace(experiment: str, profile: config.Profile) -> dict:
    setup = training.set_up(experiment, profile, splits=synthetic_splits())
    return {
        "keras": keras,
        "models": models,
        "training": training,
        "profile": profile,
        "setup": setup,
        "stage": setup.stage,
        "splits": setup.splits,
    }


def layer_signature(model: keras.Model) -> list:
    """Each layer's class, name, output shape, parameters and configuration."""
    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):  # Keras numbers their names
            rows.append(("InputLayer", tuple(layer.output.shape), layer.output.dtype))
            continue
        if layer.name == "backbone":  # a keras.applications model: layer by layer, by kind
            kinds = [type(inner).__name__ for inner in layer.layers]
            rows.append(("backbone", tuple(layer.output.shape), layer.count_params(), kinds))
            continue
        settings = {} if isinstance(layer, keras.Model) else layer.get_config()
        shape = getattr(layer, "output", None)
        shape = None if shape is None else tuple(shape.shape)
        rows.append((type(layer).__name__, layer.name, shape, layer.count_params(), settings))
        if isinstance(layer, keras.Model):
            rows.extend(layer_signature(layer))
    return rows


def optimizer_settings(optimizer) -> dict:
    settings = optimizer.get_config()
    settings.pop("name")
    return settings


def test_notebook_02_builds_the_baseline_cnn_the_cli_builds():
    profile = config.profile("smoke")
    built = run_cell(
        tagged("02_baseline_cnn", "build-model"), notebook_namespace("baseline_cnn", profile)
    )
    model = built["model"]
    expected = models.build(config.experiment("baseline_cnn"), profile)
    assert model.name == expected.name == "baseline_cnn"
    assert model.count_params() == expected.count_params() == 356_810
    assert layer_signature(model) == layer_signature(expected)
    arguments = training.compile_arguments(built["stage"], built["steps_per_epoch"])
    assert optimizer_settings(model.optimizer) == optimizer_settings(arguments["optimizer"])
    assert model.loss.get_config() == arguments["loss"].get_config()


@pytest.mark.parametrize(
    "settings",
    [
        {},  # smoke: EfficientNet-Lite0, frozen BatchNorm, the dense head
        {"backbone": "resnet50", "weights": None, "image_size": 48, "head": "linear"},
        {"backbone": "resnet50", "weights": None, "train_bn": True, "head": "dense_bn"},
        {"weights": None, "stochastic_depth": 0.2, "augment": False},
        {"backbone": "densenet121", "weights": None, "lr_schedule": "cosine"},
    ],
    ids=["lite0", "resnet50-linear", "resnet50-train-bn", "lite0-drop-connect", "densenet"],
)
def test_notebook_03_builds_the_transfer_model_the_cli_builds(settings):
    profile = config.profile("smoke", **settings)
    built = run_cell(tagged("03_transfer_head", "build-model"), notebook_namespace("head", profile))
    model, head = built["model"], built["head"]
    expected = models.build_transfer_model(profile)
    assert model.name == expected.name
    assert model.count_params() == expected.count_params()
    assert layer_signature(model) == layer_signature(expected)
    assert not model.get_layer("backbone").trainable and head.trainable
    # The backbone's call: training=False unless BatchNorm trains or drop-connect acts.
    (node,) = model.get_layer("backbone")._inbound_nodes
    frozen_call = not (profile.train_bn or profile.stochastic_depth)
    assert (node.arguments.kwargs.get("training") is False) == frozen_call
    arguments = training.compile_arguments(built["stage"], built["steps_per_epoch"])
    assert optimizer_settings(head.optimizer) == optimizer_settings(arguments["optimizer"])


@pytest.mark.parametrize("profile_name", ["quick", "paper"])
def test_notebook_04_compiles_with_the_cli_optimizer(profile_name):
    profile = config.profile(profile_name, allow_cpu=True)
    stage = training.Stage.of(profile, "finetune")
    namespace = {"keras": keras, "training": training, "stage": stage, "splits": synthetic_splits()}
    source = tagged("04_finetune", "compile")
    before_scope = source[: source.index("with setup.placement.scope():")]
    exec(before_scope, namespace)  # noqa: S102 - the repository's own notebook
    expected = training.make_optimizer(stage, namespace["steps_per_epoch"])
    assert type(namespace["optimizer"]) is type(expected)
    assert optimizer_settings(namespace["optimizer"]) == optimizer_settings(expected)


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS))
@pytest.mark.parametrize("profile_name", ["quick", "paper"])
def test_each_notebooks_callbacks_are_the_clis(notebook, profile_name, tmp_path):
    stage = training.Stage.of(
        config.profile(profile_name),
        {"02_baseline_cnn": "baseline", "03_transfer_head": "head"}.get(notebook, "finetune"),
    )

    class Setup:  # what the callbacks cell reads: the run folder
        job = training.Job(tmp_path)

    namespace = run_cell(
        tagged(notebook, "callbacks") + "\n",
        {"keras": keras, "training": training, "stage": stage, "setup": Setup},
    )
    shown = namespace["callbacks"]
    used = training.stage_callbacks(stage, tmp_path)
    assert [type(callback) for callback in shown] == [type(callback) for callback in used]
    for ours, theirs in zip(shown, used, strict=True):
        for name in (
            "monitor",
            "patience",
            "factor",
            "min_lr",
            "restore_best_weights",
            "save_best_only",
            "filepath",
            "filename",
            "backup_dir",
            "swap_on_epoch",
        ):
            assert getattr(ours, name, None) == getattr(theirs, name, None), (type(ours), name)


KERAS_CALLS = {
    "02_baseline_cnn": ("keras.Input(", "keras.Model(", "keras.layers.", "keras.optimizers.Adam("),
    "03_transfer_head": (
        "keras.Input(",
        "keras.Model(",
        "keras.layers.",
        "include_top=False",
        ".trainable = False",
        "training=False",
        "keras.optimizers.Adam(",
    ),
    # 04 tests with one model.predict pass: evaluate would run the test set through again.
    "04_finetune": (".trainable = ", "keras.optimizers.Adam(", "model.compile(", ".predict("),
}


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS))
def test_notebooks_write_the_keras_calls_out_and_fit_outside_any_scope(notebook):
    source = "\n".join(cell.source for cell in code_cells(notebook))
    evaluates = (".evaluate(",) if notebook != "04_finetune" else ()
    for call in (*KERAS_CALLS[notebook], ".fit(", *evaluates, "callbacks = ["):
        assert call in source, f"{notebook}: no {call}"
    for call in ("train_batches", "compile_arguments", "build_transfer_model", "models.build("):
        assert call not in source, f"{notebook}: {call} hides what it should show"
    assert source.count(".scope():") == 1, f"{notebook}: one scope, around building and compiling"
    for cell in code_cells(notebook):
        if ".scope():" in cell.source:
            scoped = cell.source.split(".scope():", 1)[1]
            assert not any(call in scoped for call in (".fit(", ".evaluate(", ".predict("))
