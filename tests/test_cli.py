"""The command line's own options: --version, --profile auto, the examples in --help, and
``check``, which refuses what training would before any work."""

import argparse

import pytest

from cifar10_transfer import __version__, cli, hardware


def test_version_and_examples(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--version"])
    assert (
        stopped.value.code == 0 and capsys.readouterr().out == f"cifar10-transfer {__version__}\n"
    )
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "examples:\n  cifar10-transfer data-info" in capsys.readouterr().out


@pytest.mark.parametrize(("gpu", "expected"), [(False, "quick"), (True, "paper")])
def test_profile_auto_picks_as_the_notebooks_do(gpu, expected, monkeypatch, capsys):
    monkeypatch.setattr(hardware, "has_accelerator", lambda: gpu)
    monkeypatch.setattr(hardware, "device_name", lambda: "NVIDIA T4")
    arguments = cli.build_parser().parse_args(["train", "head", "--profile", "auto"])
    assert cli._profile_name(arguments) == expected
    assert capsys.readouterr().err.startswith(f"profile {expected!r} (auto: ")
    assert cli._profile_name(argparse.Namespace(profile="smoke")) == "smoke"


def test_check_passes_a_profile_training_accepts(capsys):
    assert cli.main(["check", "--profile", "smoke", "--unfreeze", "stage:block6"]) == 0
    assert capsys.readouterr().out == (
        "profile 'smoke': settings checked for baseline_cnn, two_layer_fc, three_layer_cnn, "
        "head, finetune\n"
    )


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("--backbone=efficientnet_lite9", "backbone must be one of"),
        ("--backbone=resnet5O", "a keras.applications model name"),
        ("--weights=missing.weights.h5", "weights file 'missing.weights.h5' does not exist"),
        ("--unfreeze=stage:block9", "no layer of efficientnet_lite0 starts with 'block9'"),
        ("--set=head_epochs=0", "head_epochs=0: expected an integer"),
    ],
)
def test_check_refuses_in_one_line_what_training_would(argument, message, capsys):
    assert cli.main(["check", "--profile", "smoke", argument]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1


def test_check_refuses_a_gpu_profile_on_a_cpu_unless_allowed(monkeypatch, capsys):
    monkeypatch.setattr(hardware, "has_accelerator", lambda: False)
    assert cli.main(["check", "--profile", "paper"]) == 2
    assert "profile 'paper' needs a GPU" in capsys.readouterr().err
    assert cli.main(["check", "--profile", "paper", "--allow-cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("warning: profile 'paper' needs a GPU") and "settings checked" in out
