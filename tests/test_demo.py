"""The Space export (`cifar10-transfer export`) and the demo app's preprocessing and predict.

The app is imported from an exported folder, exactly as it runs on Hugging Face Spaces.
"""

import importlib.util
import io
import json
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from cifar10_transfer import config, models
from cifar10_transfer.cli import main
from cifar10_transfer.publish import export

ROOT = Path(__file__).resolve().parents[1]
RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)


def make_run_folder(folder: Path, **metric_overrides) -> Path:
    """A run folder as the training engine writes it, with a tiny untrained model."""
    folder.mkdir(parents=True)
    images = keras.Input(shape=(32, 32, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(images)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(config.NUM_CLASSES, activation="softmax", dtype="float32")(x)
    keras.Model(images, outputs).save(folder / "model.keras")
    metrics = {
        "experiment": "finetune",
        "test_accuracy": 0.8765,
        "test_loss": 0.4321,
        "ece": 0.0345,
        "per_class_accuracy": {
            name: 0.5 + index / 100 for index, name in enumerate(config.CLASS_NAMES)
        },
        "backbone": "efficientnet_lite0",
        "image_size": 128,
        "profile": {"name": "quick", "weights": "imagenet"},
        "data": {
            "source": "cifar10-jpeg.tar.gz",
            "verified": True,
            "train_size": 10000,
            "val_size": 2000,
            "test_size": 10000,
        },
        "backend": "tensorflow",
        "versions": {"keras": keras.__version__},
        "device": "cpu",
        "seed": 42,
        "wall_time_s": 600.0,
        "class_names": list(config.CLASS_NAMES),
        **metric_overrides,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def make_image_tree(folder: Path) -> Path:
    """A CIFAR-10 image-folder tree, two images per class and split; test/<class>/0.png, the
    first test image of class ``label``, is filled with the value 20 * label."""
    for split in ("train", "test"):
        for label, name in enumerate(config.CLASS_NAMES):
            (folder / split / name).mkdir(parents=True)
            for index in range(2):
                pixels = np.full((32, 32, 3), 20 * label + index, np.uint8)
                Image.fromarray(pixels).save(folder / split / name / f"{index}.png")
    return folder


def import_app(folder: Path):
    """Import the app.py of an exported folder as a fresh module."""
    spec = importlib.util.spec_from_file_location(f"demo_app_{id(folder)}", folder / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("export")
    return export.export_run(make_run_folder(base / "run"), base / "deploy")


@pytest.fixture(scope="module")
def app(exported):
    return import_app(exported)


def save(image: Image.Image, folder: Path, name: str, **options) -> Path:
    path = folder / name
    image.save(path, **options)
    return path


def halves(mode: str, left, right, size=(64, 64)) -> Image.Image:
    """An image whose left half is colour ``left`` and right half ``right``."""
    image = Image.new(mode, size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    return image


def assert_colour(pixel, expected, tolerance=3):
    assert np.abs(pixel.astype(int) - np.array(expected)).max() <= tolerance, (pixel, expected)


def png_header_only(width: int, height: int) -> bytes:
    """A few-hundred-byte PNG whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------- load_image: colour modes


def test_rgba_transparency_is_composited_on_white(app, tmp_path):
    # Transparent blue: ignoring alpha would show blue; compositing on black would show black.
    path = save(halves("RGBA", RED + (255,), BLUE + (0,)), tmp_path, "rgba.png")
    pixels = app.load_image(path)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    assert_colour(pixels[16, 2], RED)
    assert_colour(pixels[16, 29], WHITE)


def test_la_transparency_is_composited_on_white(app, tmp_path):
    path = save(halves("LA", (100, 255), (0, 0)), tmp_path, "la.png")
    pixels = app.load_image(path)
    assert_colour(pixels[16, 2], (100, 100, 100))
    assert_colour(pixels[16, 29], WHITE)


def test_palette_with_transparent_index(app, tmp_path):
    image = Image.new("P", (64, 64), 0)
    image.putpalette([0, 0, 0] + list(GREEN) + [0, 0, 0] * 254)
    image.paste(1, (0, 0, 32, 64))
    path = save(image, tmp_path, "palette.png", transparency=0)
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    pixels = app.load_image(path)
    assert_colour(pixels[16, 2], GREEN)
    assert_colour(pixels[16, 29], WHITE)  # index 0 is black but transparent


def test_greyscale_becomes_three_equal_channels(app, tmp_path):
    pixels = app.load_image(save(Image.new("L", (50, 50), 77), tmp_path, "grey.png"))
    assert (pixels == 77).all()


def test_cmyk_jpeg_is_converted_to_rgb(app, tmp_path):
    cyan = (255, 0, 0, 0)  # CMYK cyan is RGB (0, 255, 255)
    path = save(Image.new("CMYK", (64, 64), cyan), tmp_path, "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    assert_colour(app.load_image(path)[16, 16], (0, 255, 255), tolerance=8)


def test_16_bit_greyscale_uses_the_full_range(app, tmp_path):
    values = np.zeros((64, 64), np.uint16)
    values[:, :32], values[:, 32:] = 65535, 32768
    path = save(Image.fromarray(values), tmp_path, "deep.png")
    assert Image.open(path).mode in ("I;16", "I")
    pixels = app.load_image(path)
    assert_colour(pixels[16, 2], WHITE, tolerance=1)
    assert_colour(pixels[16, 29], (128, 128, 128), tolerance=1)  # not clipped to white


def test_exif_orientation_is_applied(app, tmp_path):
    # Stored landscape, left red / right blue; Orientation 6 means "rotate 90 degrees clockwise
    # to display", which puts red on top. Without the transpose red would stay on the left.
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(halves("RGB", RED, BLUE, size=(80, 40)), tmp_path, "phone.jpg", exif=exif)
    pixels = app.load_image(path)
    assert_colour(pixels[3, 3], RED, tolerance=40)
    assert_colour(pixels[3, 28], RED, tolerance=40)
    assert_colour(pixels[28, 3], BLUE, tolerance=40)


def test_large_image_is_center_cropped_and_downscaled(app, tmp_path):
    # 3000x2000: red 500 px bands left and right, outside the central 2000x2000 square.
    image = Image.new("RGB", (3000, 2000), BLUE)
    image.paste(RED, (0, 0, 500, 2000))
    image.paste(RED, (2500, 0, 3000, 2000))
    pixels = app.load_image(save(image, tmp_path, "wide.jpg", quality=95))
    assert pixels.shape == (32, 32, 3)
    # Cropped, not squashed (that would make the edge columns red); a little red may bleed in
    # from the resampling kernel's support and JPEG's chroma subsampling.
    assert_colour(pixels[:, 0].mean(axis=0), BLUE, tolerance=40)
    assert_colour(pixels[:, -1].mean(axis=0), BLUE, tolerance=40)


def test_bytes_and_path_give_the_same_pixels(app, tmp_path):
    path = save(Image.effect_mandelbrot((300, 200), (-2, -1, 1, 1), 50), tmp_path, "m.png")
    assert np.array_equal(app.load_image(path), app.load_image(path.read_bytes()))


# ---------------------------------------------------------------- load_image: bad uploads


def test_non_image_is_rejected(app, tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is a text file with an image extension")
    with pytest.raises(app.ImageRejected, match="not an image"):
        app.load_image(path)


def test_zero_byte_file_is_rejected(app, tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(app.ImageRejected, match="empty"):
        app.load_image(path)


def test_truncated_jpeg_is_rejected(app, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    full = io.BytesIO()
    Image.fromarray(noise).save(full, format="JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    assert app.ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(app.ImageRejected, match="damaged or truncated"):
        app.load_image(path)


@pytest.mark.parametrize(
    "width, height",
    [(100_000, 100_000), (7_000, 7_000)],  # above 2x the limit (Pillow raises), and above 1x
)
@pytest.mark.parametrize("warning_action", ["error", "ignore"])
def test_decompression_bomb_is_rejected(app, tmp_path, width, height, warning_action):
    # "error" is the app's own setting; "ignore" checks the guard that does not rely on it.
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(width, height))
    assert path.stat().st_size < 1000 and width * height > app.imaging.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter(warning_action, Image.DecompressionBombWarning)
        with pytest.raises(app.ImageRejected, match="too large"):
            app.load_image(path)


def test_oversized_file_is_rejected(app, tmp_path, monkeypatch):
    path = save(Image.effect_noise((64, 64), 50).convert("RGB"), tmp_path, "big.png")
    monkeypatch.setattr(app.imaging, "MAX_FILE_BYTES", path.stat().st_size - 1)
    with pytest.raises(app.ImageRejected, match="limit"):
        app.load_image(path)
    with pytest.raises(app.ImageRejected, match="limit"):
        app.load_image(path.read_bytes())


# ---------------------------------------------------------------- predict


def test_predict_returns_probabilities_preview_and_message(app, exported, tmp_path):
    path = save(
        Image.effect_mandelbrot((120, 90), (-2, -1, 1, 1), 50).convert("RGB"), tmp_path, "m.png"
    )
    scores, preview, message = app.predict(str(path))
    assert list(scores) == list(config.CLASS_NAMES)
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-4)
    pixels = app.load_image(path)
    model = keras.saving.load_model(exported / "model.keras", safe_mode=True)
    expected = model.predict(pixels[None], verbose=0)[0]
    np.testing.assert_allclose(list(scores.values()), expected, rtol=1e-5, atol=1e-6)
    # The preview is the model's 32x32 input, each pixel a 7x7 block, as a lossless PNG.
    with Image.open(preview) as image:
        assert image.format == "PNG"
        shown = np.asarray(image)
    assert shown.shape == (224, 224, 3) and shown.dtype == np.uint8
    assert np.array_equal(shown[::7, ::7], pixels)
    best = max(scores, key=scores.get)
    assert best in message and f"{scores[best]:.0%}" in message


def test_identical_uploads_get_their_own_preview_files(app, tmp_path):
    # Gradio rewrites an array output's content-named file in place; a preview path of its
    # own per request is copied instead, so concurrent identical uploads cannot race.
    path = save(Image.new("RGB", (40, 40), RED), tmp_path, "red.png")
    previews = [app.predict(str(path))[1] for _ in range(3)]
    assert len(set(previews)) == 3
    assert all(Path(preview).read_bytes() == Path(previews[0]).read_bytes() for preview in previews)


def test_preview_files_are_bounded(app, tmp_path, monkeypatch):
    monkeypatch.setattr(app, "PREVIEWS_KEPT", 2)
    path = save(Image.new("RGB", (40, 40), BLUE), tmp_path, "blue.png")
    previews = [Path(app.predict(str(path))[1]) for _ in range(5)]
    assert [preview.exists() for preview in previews] == [False, False, False, True, True]
    assert len(list(app.PREVIEW_DIR.iterdir())) <= 2


def test_demo_sweeps_gradios_cache(app):
    demo = app.build_demo()
    assert demo.delete_cache == (app.CACHE_MAX_AGE_S // 4, app.CACHE_MAX_AGE_S)


def test_predict_without_upload(app):
    assert app.predict(None) == (None, None, "Upload an image or click an example.")


def test_predict_reports_bad_upload_instead_of_raising(app, tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    scores, preview, message = app.predict(str(path))
    assert scores is None and preview is None
    assert "Could not classify" in message and "empty" in message


# ---------------------------------------------------------------- export


def front_matter(readme: str) -> dict[str, str]:
    block = readme.split("---\n")[1]
    return dict(line.split(": ", 1) for line in block.strip().splitlines())


def requirement_pins(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))


def test_export_writes_a_space_folder(exported):
    names = {path.name for path in exported.iterdir()}
    assert names == {
        "app.py",
        "imaging.py",  # the image conversion the training data used
        "requirements.txt",
        "README.md",
        "model.keras",
        "class_names.json",
        "metrics.json",
    }
    assert json.loads((exported / "class_names.json").read_text()) == list(config.CLASS_NAMES)
    assert not list(exported.parent.glob(".deploy.*"))  # no temporary folder left behind


def test_model_card_has_front_matter_and_the_runs_metrics(exported):
    readme = (exported / "README.md").read_text()
    meta = front_matter(readme)
    pins = requirement_pins(exported / "requirements.txt")
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["sdk_version"] == pins["gradio"]
    assert {"title", "emoji", "license"} <= set(meta)
    metrics = json.loads((exported / "metrics.json").read_text())
    assert f"| test accuracy | {100 * metrics['test_accuracy']:.2f}% |" in readme
    assert f"| test loss (cross-entropy) | {metrics['test_loss']:.4f} |" in readme
    for name, fraction in metrics["per_class_accuracy"].items():
        assert f"| {name} | {100 * fraction:.2f}% |" in readme
    assert f"{metrics['ece']:.3f}" in readme  # quoted in the limitations
    assert "efficientnet_lite0" in readme and "128 px" in readme
    assert "10,000 for training, 2,000 for validation" in readme
    assert "32x32" in readme and '"none of these"' in readme
    assert "No example images were exported" in readme
    assert "$" not in readme  # every template field was filled


def test_model_card_of_a_baseline_without_calibration(tmp_path):
    run = make_run_folder(
        tmp_path / "run", experiment="baseline_cnn", backbone=None, image_size=32, ece=None
    )
    readme = (export.export_run(run, tmp_path / "deploy") / "README.md").read_text()
    assert "`baseline_cnn` network trained from scratch on CIFAR-10" in readme
    assert "Preprocessing (scaling) happens" in readme
    assert "recorded no calibration measurement" in readme and "calibration error" not in readme


def test_space_requirements_match_the_project_pins(exported):
    space, project = (
        requirement_pins(exported / "requirements.txt"),
        requirement_pins(ROOT / "requirements.txt"),
    )
    for package in ("keras", "gradio", "pillow", "numpy"):
        assert space[package] == project[package], package
    assert space["tensorflow-cpu"] == project["tensorflow"]


def test_exported_model_loads_safely_and_predicts_the_same(exported, tmp_path):
    run = make_run_folder(tmp_path / "run")
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    original = keras.saving.load_model(run / "model.keras").predict(images, verbose=0)
    out_dir = export.export_run(run, tmp_path / "deploy")
    copied = keras.saving.load_model(out_dir / "model.keras", safe_mode=True)
    np.testing.assert_array_equal(copied.predict(images, verbose=0), original)


LOAD_WITHOUT_PACKAGE = """
import sys
sys.modules["cifar10_transfer"] = None  # as on the Space: importing the package fails
import keras, numpy as np
model = keras.saving.load_model(sys.argv[1], safe_mode=True)
np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
"""


@pytest.mark.slow
def test_exported_augmenting_model_loads_without_the_package(tmp_path):
    # The run's augmentation block holds RandomAffine, which only this package registers.
    run = make_run_folder(tmp_path / "run")
    models.baseline_cnn(augment=True, seed=0).save(run / "model.keras")
    out_dir = export.export_run(run, tmp_path / "deploy")
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    paths = [str(out_dir / "model.keras"), str(tmp_path / "images.npy"), str(tmp_path / "p.npy")]
    result = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_PACKAGE, *paths],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    original = keras.saving.load_model(run / "model.keras", safe_mode=True)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), original.predict(images, verbose=0))


def test_export_writes_one_example_per_class(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))  # the data module's cache
    tree = make_image_tree(tmp_path / "tree")
    out_dir = export.export_run(make_run_folder(tmp_path / "run"), tmp_path / "deploy", tree)
    for label, name in enumerate(config.CLASS_NAMES):
        example = np.asarray(Image.open(out_dir / "examples" / f"{name}.png"))
        assert example.shape == (32, 32, 3) and (example == 20 * label).all(), name
    assert (
        "`examples/` holds the first test image of each class"
        in (out_dir / "README.md").read_text()
    )


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda run: shutil.rmtree(run), "run folder .* not found"),
        (lambda run: (run / "model.keras").unlink(), "model.keras not found"),
        (lambda run: (run / "metrics.json").unlink(), "metrics.json not found"),
        (
            lambda run: (run / "metrics.json").write_text(json.dumps({"test_loss": 1.0})),
            r"metrics.json lacks \['test_accuracy'",
        ),
        (lambda run: (run / "metrics.json").write_text("{"), "metrics.json: not valid JSON"),
        (
            lambda run: (run / "model.keras").write_bytes(b"not a zip archive"),
            "model.keras: not a .keras model",
        ),
    ],
    ids=["no folder", "no model", "no metrics", "no accuracy", "bad JSON", "bad model"],
)
def test_bad_run_folder_raises_and_writes_nothing(tmp_path, damage, expected):
    run = make_run_folder(tmp_path / "run")
    damage(run)
    with pytest.raises(ValueError, match=expected):
        export.export_run(run, tmp_path / "deploy")
    assert sorted(path.name for path in tmp_path.iterdir()) == ([] if not run.exists() else ["run"])


def test_existing_output_needs_force_and_must_be_an_export(tmp_path):
    run = make_run_folder(tmp_path / "run")
    out_dir = export.export_run(run, tmp_path / "deploy")
    with pytest.raises(ValueError, match="already exists; pass --force"):
        export.export_run(run, out_dir)
    (out_dir / "metrics.json").write_text("stale")
    export.export_run(run, out_dir, force=True)  # replaces an earlier export
    assert json.loads((out_dir / "metrics.json").read_text())["test_accuracy"] == 0.8765
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    with pytest.raises(ValueError, match="not an earlier export"):
        export.export_run(run, project, force=True)
    assert (project / "src").is_dir()


def test_failed_export_keeps_the_earlier_one(tmp_path):
    run = make_run_folder(tmp_path / "run")
    out_dir = export.export_run(run, tmp_path / "deploy")
    before = {path.name: path.read_bytes() for path in out_dir.iterdir()}
    (run / "model.keras").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="model.keras: not a .keras model"):
        export.export_run(run, out_dir, force=True)
    assert {path.name: path.read_bytes() for path in out_dir.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["deploy", "run"]


def test_cli_export(tmp_path, capsys):
    run = make_run_folder(tmp_path / "run")
    assert main(["export", str(run), "--out", str(tmp_path / "deploy")]) == 0
    assert "without (no --data) example images" in capsys.readouterr().out
    assert (tmp_path / "deploy" / "app.py").is_file()
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "other")]) == 2
    assert capsys.readouterr().err.startswith("error: run folder")
