"""The command line's own options: --version, --profile auto, the examples in --help."""

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
