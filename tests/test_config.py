"""config: the base recipe and the profiles written as its changes, one override mechanism
(``config.profile``), settings typed from text (``config.parse_setting``) and the list of
experiments; and the CLI's --set and shortcut flags, which feed the same mechanism."""

import argparse
import re

import pytest

from cifar10_transfer import cli, config, models, runs, training

# The base recipe, quick, field by field.
QUICK_RECIPE = {
    "name": "quick",
    "train_size": 10_000,
    "val_size": 2_000,
    "test_size": None,
    "backbone": "efficientnet_lite2",
    "weights": "imagenet",
    "image_size": 128,
    "head": "dense",
    "head_units": 256,
    "dropout_rate": 0.5,
    "label_smoothing": 0.1,
    "batch_size": 64,
    "head_epochs": 15,
    "head_learning_rate": 1e-3,
    "finetune_epochs": 3,
    "finetune_learning_rate": 3e-4,
    "unfreeze": "stage:block4",
    "lr_schedule": "plateau",  # ReduceLROnPlateau: results/quick-trials/plateau-*
    "augment": True,
    "baseline_augment": True,
    "train_bn": False,
    "early_stopping_patience": 4,
    "optimizer": "adam",
    "weight_decay": 0.0,
    "warmup_epochs": 0.0,
    "use_ema": True,
    "stochastic_depth": 0.0,
    "mixing": "none",
    "randaugment": False,
    "baseline_epochs": 10,
    "baseline_learning_rate": 2e-3,
    "baseline_batch_size": 64,
    "seed": 42,
    "precision": "auto",
    "needs_accelerator": False,
    "allow_cpu": False,
    "gradient_accumulation_steps": 1,
}
# The GPU recipe every GPU profile shares (config.GPU_BASE).
GPU_CHANGES = {
    "image_size": 224,
    "batch_size": 256,
    "finetune_learning_rate": 0.01,
    "unfreeze": "all",
    "train_bn": True,
    "optimizer": "sgd",
    "warmup_epochs": 1.0,
    "lr_schedule": "cosine",  # warm-up, then cosine decay
    "baseline_epochs": 30,
    "needs_accelerator": True,
}
# What each profile changes, and nothing else.
PROFILE_CHANGES = {
    "quick": {},
    "smoke": {
        "backbone": "efficientnet_lite0",
        "train_size": 200,
        "val_size": 100,
        "test_size": 200,
        "image_size": 32,
        "head_units": 64,
        "label_smoothing": 0.0,
        "batch_size": 50,
        "head_epochs": 1,
        "finetune_epochs": 1,
        "unfreeze": "top:20",
        "early_stopping_patience": 2,
        "baseline_epochs": 1,
        "baseline_batch_size": 50,
    },
    "hires": {
        "image_size": 192,
        "finetune_epochs": 7,
        "finetune_learning_rate": 1.5e-4,
        "baseline_epochs": 30,
    },
    "full": {
        **GPU_CHANGES,
        "train_size": None,
        "backbone": "resnet50",
        "head_epochs": 5,
        "finetune_epochs": 10,
        "mixing": "mixup",
        "early_stopping_patience": 5,
        "baseline_epochs": 60,
        "baseline_batch_size": 128,
    },
    "paper": {
        **GPU_CHANGES,
        "backbone": "resnet50",
        "head_epochs": 10,
        "finetune_epochs": 15,
        "early_stopping_patience": 5,
    },
    "fast": {
        **GPU_CHANGES,
        "train_size": None,
        "backbone": "efficientnet_lite0",
        "image_size": 160,
        "finetune_epochs": 6,
        "early_stopping_patience": 6,
    },
}


# ---------------------------------------------------------------- profiles


def test_quick_is_the_base_recipe():
    assert config.QUICK.to_dict() == QUICK_RECIPE
    assert config.PROFILES["quick"] == config.QUICK == config.Profile()


@pytest.mark.parametrize("name", list(PROFILE_CHANGES))
def test_each_profile_differs_from_quick_only_in_the_fields_it_lists(name):
    assert list(config.PROFILES) == list(PROFILE_CHANGES)
    settings = config.PROFILES[name].to_dict()
    changed = {key: value for key, value in settings.items() if value != QUICK_RECIPE[key]}
    expected = {**PROFILE_CHANGES[name], **({"name": name} if name != "quick" else {})}
    assert changed == expected


def test_profile_applies_overrides_to_a_copy():
    before = config.PROFILES["smoke"].to_dict()
    changed = config.profile("smoke", backbone="resnet50", seed=43, train_size=None)
    assert (changed.name, changed.backbone, changed.seed, changed.train_size) == (
        "smoke",
        "resnet50",
        43,
        None,
    )
    others = {key for key in before if key not in ("backbone", "seed", "train_size")}
    assert {key: changed.to_dict()[key] for key in others} == {key: before[key] for key in others}
    assert config.PROFILES["smoke"].to_dict() == before  # the base is not changed
    assert config.profile("smoke") == config.PROFILES["smoke"]
    assert config.profile() == config.QUICK


def test_profile_takes_a_profile_as_its_base():
    paper = config.profile("paper", image_size=128)
    smaller = config.profile(paper, batch_size=32)
    assert (smaller.name, smaller.image_size, smaller.batch_size) == ("paper", 128, 32)
    assert paper.batch_size == 256 and config.PROFILES["paper"].image_size == 224


def test_unknown_profile_or_setting_is_a_value_error():
    with pytest.raises(
        ValueError, match="^profile must be one of quick, smoke, hires, full, paper, fast, got"
    ):
        config.profile("huge")
    with pytest.raises(ValueError, match=r"^unknown profile setting\(s\) \['epochz'\]; known:"):
        config.profile("smoke", epochz=3)
    with pytest.raises(ValueError, match="unknown profile setting"):
        config.profile(config.QUICK, head_epochz=3)


# ---------------------------------------------------------------- settings from text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("head_epochs=5", ("head_epochs", 5)),
        ("head_learning_rate=3e-4", ("head_learning_rate", 3e-4)),
        ("dropout_rate=1", ("dropout_rate", 1.0)),
        ("augment=false", ("augment", False)),
        ("train_bn=Yes", ("train_bn", True)),
        ("allow_cpu=1", ("allow_cpu", True)),
        ("baseline_augment=0", ("baseline_augment", False)),
        ("weights=none", ("weights", None)),
        ("weights=None", ("weights", None)),
        ("test_size=none", ("test_size", None)),
        ("train_size=all", ("train_size", None)),
        ("test_size=ALL", ("test_size", None)),
        ("train_size=500", ("train_size", 500)),
        ("weights=all", ("weights", "all")),  # "all" means None for sizes only
        ("weights=/data/resnet50=v2.h5", ("weights", "/data/resnet50=v2.h5")),
        ("unfreeze=top:20", ("unfreeze", "top:20")),
        ("backbone=resnet50", ("backbone", "resnet50")),
        ("image-size=64", ("image_size", 64)),
        (" seed = 7 ", ("seed", 7)),
    ],
)
def test_parse_setting_types_the_value_like_the_profile_field(text, expected):
    key, value = config.parse_setting(text)
    assert (key, value) == expected
    assert type(value) is type(expected[1])  # 5 is an int, 1.0 a float, False a bool
    config.profile("quick", **{key: value})  # and the profile takes it


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochz=3", "setting 'epochz=3': expected KEY=VALUE with KEY one of name, train_size"),
        ("head_epochs", "setting 'head_epochs': expected KEY=VALUE"),
        ("=3", "setting '=3': expected KEY=VALUE"),
        ("head_epochs=many", "setting head_epochs='many': expected int"),
        ("head_epochs=2.5", "setting head_epochs='2.5': expected int"),
        ("head_learning_rate=fast", "setting head_learning_rate='fast': expected float"),
        ("augment=maybe", "setting augment='maybe': expected true or false"),
        ("val_size=all", "setting val_size='all': expected int"),  # val_size cannot be None
        ("seed=none", "setting seed='none': expected int"),
    ],
)
def test_parse_setting_refuses_a_bad_key_or_value(text, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        config.parse_setting(text)


# ---------------------------------------------------------------- experiments


def _train_experiment_choices() -> list:
    commands = next(
        action
        for action in cli.build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    train = commands.choices["train"]
    return list(next(action for action in train._actions if action.dest == "experiment").choices)


def test_experiments_are_one_list_for_the_cli_the_training_and_the_labels():
    names = ["baseline_cnn", "two_layer_fc", "three_layer_cnn", "head", "finetune"]
    assert list(config.EXPERIMENTS) == names  # also the order of the results table
    assert _train_experiment_choices() == names
    labels = {
        name: runs.experiment_label({"experiment": name, "backbone": "resnet50"}) for name in names
    }
    assert labels == {
        "baseline_cnn": "Baseline CNN (from scratch)",
        "two_layer_fc": "Two-layer FC (from scratch)",
        "three_layer_cnn": "Three-layer CNN (from scratch)",
        "head": "resnet50 head only (frozen)",
        "finetune": "resnet50 fine-tuned",
    }
    assert runs.experiment_label({"experiment": "custom"}) == "custom"  # not in the list


def test_every_experiment_can_be_built_or_started_from_its_prerequisite():
    for name, spec in config.EXPERIMENTS.items():
        assert spec.name == name and config.experiment(name) is spec
        assert spec.stage in ("baseline", "head", "finetune")
        training.Stage.of(config.QUICK, spec.stage)  # every stage reads its settings
        if spec.stage == "baseline":
            assert spec.builder in models.BASELINES and spec.prerequisite is None
        elif spec.stage == "head":
            assert spec.builder == "build_transfer_model" and spec.prerequisite is None
        else:
            assert config.EXPERIMENTS[spec.prerequisite].stage == "head"


def test_unknown_experiment_is_a_value_error():
    with pytest.raises(ValueError, match="^experiment must be one of baseline_cnn, two_layer_fc"):
        config.experiment("resnet")


def test_stage_reads_its_own_settings_from_the_profile():
    profile = config.profile("smoke", gradient_accumulation_steps=2, lr_schedule="cosine")
    assert training.Stage.of(profile, "baseline") == training.Stage(
        name="baseline", epochs=1, batch_size=50, learning_rate=2e-3, schedule="cosine",
        patience=2, label_smoothing=0.0,
    )  # fmt: skip
    head = training.Stage.of(profile, "head")
    assert (head.epochs, head.batch_size, head.learning_rate) == (1, 50, 1e-3)
    finetune = training.Stage.of(profile, "finetune")
    assert (finetune.epochs, finetune.learning_rate, finetune.micro_batch_size) == (1, 3e-4, 25)


# ---------------------------------------------------------------- the command line


def test_set_and_shortcut_flags_become_typed_overrides():
    parser = cli.build_parser()
    args = parser.parse_args(
        ["train", "head", "--profile", "smoke", "--set", "head_epochs=5"]
        + ["--set", "weights=none", "--set", "train_size=all", "--backbone", "resnet50"]
        + ["--image-size", "64", "--gradient-accumulation-steps", "2", "--allow-cpu"]
    )
    overrides = cli._overrides(args)
    assert overrides == {
        "head_epochs": 5,
        "weights": None,
        "train_size": None,
        "backbone": "resnet50",
        "image_size": 64,
        "gradient_accumulation_steps": 2,
        "allow_cpu": True,
    }
    profile = config.profile(args.profile, **overrides)
    assert (profile.name, profile.head_epochs, profile.image_size) == ("smoke", 5, 64)
    assert cli._overrides(parser.parse_args(["train", "head"])) == {}
    # --weights none is random initialisation, as --set weights=none.
    assert cli._overrides(parser.parse_args(["train", "head", "--weights", "none"])) == {
        "weights": None
    }
    rerun = parser.parse_args(["reproduce", "--set", "seed=7", "--precision", "float32"])
    assert cli._overrides(rerun) == {"seed": 7, "precision": "float32"}


@pytest.mark.parametrize(
    ("experiment", "setting"),
    [("baseline_cnn", "baseline_epochs"), ("head", "head_epochs"), ("finetune", "finetune_epochs")],
)
def test_train_hands_run_experiment_the_profile_with_the_settings(
    experiment, setting, monkeypatch, capsys
):
    calls = []

    def run_experiment(name, profile, **options):
        calls.append((name, profile, options))
        return dict.fromkeys(
            ("experiment", "test_accuracy", "test_loss", "epochs", "wall_time_s", "device"), 0
        )

    monkeypatch.setattr(training, "run_experiment", run_experiment)
    arguments = ["train", experiment, "--profile", "paper", "--set", "dropout_rate=0.25"]
    assert cli.main([*arguments, "--seed", "3", "--epochs", "2", "--devices", "all"]) == 0
    *before, (name, profile, options) = calls
    assert name == experiment
    # Fine-tuning trains its head run first, with the same profile (none in runs/paper here).
    assert [call[:2] for call in before] == ([("head", profile)] if before else [])
    assert len(before) == (experiment == "finetune")
    assert profile == config.profile("paper", dropout_rate=0.25, seed=3, **{setting: 2})
    assert options == {"data": None, "out_dir": None, "resume": False, "devices": "all"}
    assert '"experiment": 0' in capsys.readouterr().out


@pytest.mark.parametrize("command", [["train", "head"], ["reproduce"]])
@pytest.mark.parametrize(
    ("setting", "error"),
    [
        ("bogus=1", "error: setting 'bogus=1': expected KEY=VALUE with KEY one of name, "),
        ("head_epochs=many", "error: setting head_epochs='many': expected int"),
    ],
)
def test_a_bad_set_is_one_error_line_and_exit_2(command, setting, error, tmp_path, capsys):
    out = ["--out", str(tmp_path / "run")] if command[0] == "train" else []
    assert cli.main([*command, "--set", setting, *out]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(error) and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err
    assert not (tmp_path / "run").exists()
