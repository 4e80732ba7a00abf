"""Model files that must not load: each is refused before anything in it runs, with one
`error:` line that names the file and what was expected (runs.load_model serves evaluate,
export, the demo and notebook 05)."""

import json
import zipfile

import keras
import pytest

from cifar10_transfer import cli, config, models, runs


def rewrite(source, target, change):
    """A copy of the .keras archive ``source`` whose config.json ``change`` has edited."""
    with zipfile.ZipFile(source) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    settings = json.loads(files["config.json"])
    change(settings)
    with zipfile.ZipFile(target, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, json.dumps(settings) if name == "config.json" else content)
    return target


def layer(settings, class_name):
    return next(item for item in settings["config"]["layers"] if item["class_name"] == class_name)


def retarget(class_name, module, new_class):
    def change(settings):
        item = layer(settings, class_name)
        item.update(module=module, class_name=new_class, registered_name=None)

    return change


def outside_vocabulary(settings):
    layer(settings, "StringLookup")["config"]["vocabulary"] = "/etc/passwd"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    cnn = folder / "cnn.keras"
    models.two_layer_fc().save(cnn)
    images = keras.Input(config.IMAGE_SHAPE)
    doubled = keras.layers.Lambda(lambda x: x * 2)(images)
    pooled = keras.layers.GlobalAveragePooling2D()(doubled)
    lambda_model = keras.Model(images, keras.layers.Dense(10, activation="softmax")(pooled))
    lambda_model.save(folder / "lambda.keras")
    words = keras.Input((1,), dtype="string")
    keras.Model(words, keras.layers.StringLookup(vocabulary=["a"])(words)).save(
        folder / "lookup.keras"
    )
    images = keras.Input(config.IMAGE_SHAPE, dtype="uint8")
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(images))
    keras.Model(images, keras.layers.Dense(7, activation="softmax")(pooled)).save(
        folder / "seven.keras"
    )
    return {
        "lambda": (folder / "lambda.keras", "a Lambda layer"),
        "os.system": (
            rewrite(cnn, folder / "system.keras", retarget("Dense", "os", "system")),
            "the class 'system'",
        ),
        "unregistered": (
            rewrite(cnn, folder / "custom.keras", retarget("Dense", None, "Evil")),
            "the class 'Evil'",
        ),
        "unsafe switch": (
            rewrite(
                cnn,
                folder / "unsafe.keras",
                retarget("Dense", "keras.config", "enable_unsafe_deserialization"),
            ),
            "a function that is not a layer",
        ),
        "vocabulary": (
            rewrite(folder / "lookup.keras", folder / "vocabulary.keras", outside_vocabulary),
            "a vocabulary file from outside its archive",
        ),
        "seven classes": (folder / "seven.keras", "has 7 outputs; a CIFAR-10 model"),
    }


CASES = ["lambda", "os.system", "unregistered", "unsafe switch", "vocabulary", "seven classes"]


@pytest.mark.parametrize("case", CASES)
def test_a_refused_model_file_is_named_with_what_was_expected(hostile, case):
    path, reason = hostile[case]
    with pytest.raises(ValueError) as caught:
        runs.load_model(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and reason in message
    assert "\n" not in message and len(message) < 400
    assert "cifar10-transfer" in message or "CIFAR-10" in message  # what was expected


@pytest.mark.parametrize("case", CASES)
def test_evaluate_refuses_it_in_one_error_line(hostile, case, tmp_path, capsys):
    path, reason = hostile[case]
    assert cli.main(["evaluate", str(path), "--data", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and reason in lines[0]
    assert "\x1b[" not in captured.err and captured.out == ""


def test_nothing_in_a_lambda_runs(hostile, tmp_path):
    marker = tmp_path / "ran"
    where = str(marker)  # Keras keeps a lambda's closure in the file: a string, not a Path
    images = keras.Input(config.IMAGE_SHAPE)
    touched = keras.layers.Lambda(lambda x: (open(where, "w").close(), x)[1])(images)
    keras.Model(images, touched).save(tmp_path / "touch.keras")
    marker.unlink(missing_ok=True)  # saving traced the function once
    with pytest.raises(ValueError, match="refused"):
        runs.load_model(tmp_path / "touch.keras")
    assert not marker.exists()
