"""Reliability: no silent wrong results, settings checked before any work, bounded inputs,
crafted files answered with one error line, resumable after faults (issue 15)."""

import errno
import io
import pickle
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from cifar10_transfer import config, data, fileio, imaging, runs, torch_checkpoint, training
from cifar10_transfer.cli import main
from cifar10_transfer.data import DataError


def tiny_splits(rows: int = 20, seed: int = 0, source: str = "memory") -> data.Splits:
    rng = np.random.default_rng(seed)

    def images():
        return rng.integers(0, 256, (rows, *config.IMAGE_SHAPE), dtype=np.uint8)

    labels = np.arange(rows) % config.NUM_CLASSES
    return data.Splits(
        images(), labels, images(), labels, images(), labels, config.CLASS_NAMES, source, False
    )


# ---------------------------------------------------------------- silent wrong results


def test_feature_cache_key_follows_the_weights_file_contents_not_its_path(tmp_path):
    weights = tmp_path / "lite.weights.h5"
    weights.write_bytes(b"weights A")
    profile = config.profile("smoke", weights=str(weights))
    splits = tiny_splits()
    first = training._features_key(profile, splits)
    weights.write_bytes(b"weights B")  # other weights copied over the same path
    assert training._features_key(profile, splits) != first
    weights.write_bytes(b"weights A")
    assert training._features_key(profile, splits) == first


def test_feature_cache_key_covers_every_image_not_only_the_first_ones():
    profile, splits = config.profile("smoke"), tiny_splits(rows=100)
    first = training._features_key(profile, splits)
    splits.x_train[-1] ^= 1  # one pixel of the last training image
    assert training._features_key(profile, splits) != first


def fake_head_run(folder, profile, source="memory"):
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(b"not read: the check comes first")
    fileio.write_json(
        folder / "metrics.json",
        {"experiment": "head", "profile": profile.to_dict(), "data": {"source": source}},
    )


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        ({"image_size": 64}, "image_size=32 there, 64 here"),
        ({"backbone": "efficientnet_lite2"}, "backbone='efficientnet_lite0' there"),
        ({"seed": 7}, "seed=42 there, 7 here"),
        ({"head_units": 16}, "head_units=64 there, 16 here"),
    ],
)
def test_finetuning_refuses_a_head_run_made_with_other_settings(tmp_path, changed, message):
    fake_head_run(tmp_path / "head", config.profile("smoke"))
    profile = config.profile("smoke", **changed)
    with pytest.raises(ValueError, match=message):
        training.run_experiment(
            "finetune", profile, out_dir=tmp_path / "finetune", splits=tiny_splits()
        )
    assert not (tmp_path / "finetune").exists()  # nothing half-made


def test_finetuning_without_its_head_run_says_how_to_train_it_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"head: no head run to start from; train it first "
                       r"\(cifar10-transfer train head --out .*head\)"):  # fmt: skip
        training.run_experiment(
            "finetune", config.profile("smoke"), out_dir=tmp_path / "ft", splits=tiny_splits()
        )
    assert not (tmp_path / "ft").exists()  # nothing half-made


def test_finetuning_refuses_a_head_run_on_other_data(tmp_path):
    fake_head_run(tmp_path / "head", config.profile("smoke"), source="/data/other.tar.gz")
    with pytest.raises(ValueError, match="data '/data/other.tar.gz' there, 'memory' here"):
        training.run_experiment(
            "finetune", config.profile("smoke"), out_dir=tmp_path / "ft", splits=tiny_splits()
        )


def test_batch_size_of_a_baseline_is_the_one_it_trains_with_and_records(tmp_path, monkeypatch):
    captured, original = {}, training.run_experiment

    def run_experiment(experiment, profile, **kwargs):
        captured["profile"] = profile
        return original(experiment, profile, out_dir=tmp_path / "run", splits=tiny_splits())

    monkeypatch.setattr(training, "run_experiment", run_experiment)
    assert main(["train", "baseline_cnn", "--profile", "smoke", "--batch-size", "5"]) == 0
    profile = captured["profile"]
    assert (profile.baseline_batch_size, profile.batch_size) == (5, 50)
    metrics = fileio.read_json(tmp_path / "run" / "metrics.json")
    assert metrics["batch_size"] == 5  # what it did, 4 steps of 5 for 20 images
    assert metrics["profile"]["baseline_batch_size"] == 5


# ---------------------------------------------------------------- settings before any work


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--batch-size", "0"], "batch_size=0: expected an integer from 1 to 65536 (images)"),
        (["--batch-size", "-5"], "batch_size=-5: expected an integer from 1 to 65536"),
        (["--epochs", "0"], "head_epochs=0: expected an integer from 1 to 1000 (epochs)"),
        (["--epochs", "-1"], "head_epochs=-1: expected an integer from 1 to 1000"),
        (["--image-size", "10000"], "image_size=10000: expected an integer from 32 to 512 (px)"),
        (["--unfreeze", "bogus"], "unfreeze='bogus': expected head, all, top:N"),
        (["--set", "dropout_rate=1.5"], r"dropout_rate=1.5: expected a number in \[0, 1\)"),
        (["--set", "head_learning_rate=0"], "head_learning_rate=0.0: expected a learning rate"),
        (["--set", "optimizer=lamb"], "optimizer='lamb': expected one of adam, adamw, sgd"),
        (["--set", "train_size=49000", "--set", "val_size=2000"], "together at most 50000"),
    ],
)
def test_bad_settings_stop_with_one_error_line_before_any_work(
    tmp_path, capsys, arguments, message
):
    out = tmp_path / "run"
    command = ["train", "head", "--profile", "smoke", "--data", str(tmp_path / "no-data")]
    assert main(command + ["--out", str(out), *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error
    assert message.replace("\\", "") in error or pytest.fail(error)
    assert not out.exists()  # no half-made run folder


def test_an_unfreeze_stage_the_backbone_lacks_stops_before_the_head_trains(tmp_path, capsys):
    out = tmp_path / "runs" / "finetune"
    command = ["train", "finetune", "--profile", "smoke", "--unfreeze", "stage:block9"]
    assert main(command + ["--data", str(tmp_path / "no-data"), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "unfreeze='stage:block9': no layer of efficientnet_lite0 starts with 'block9'" in error
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- bounded inputs


def write_members(path, members):
    """A .tar.gz of (name, bytes or a file-like object and its claimed size)."""
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members:
            if isinstance(content, bytes):
                content = (io.BytesIO(content), len(content))
            stream, size = content
            member = tarfile.TarInfo(name)
            member.size = size
            archive.addfile(member, stream)
    return path


class Zeros(io.RawIOBase):
    """``size`` zero bytes, produced as they are read (a bomb without the memory)."""

    def __init__(self, size):
        self.left = size

    def readinto(self, buffer):
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count

    def readable(self):
        return True


def test_an_archive_member_larger_than_any_cifar_file_is_refused_before_it_is_read(tmp_path):
    size = data.MAX_FILE_BYTES + 1  # compresses to about 40 KB
    bomb = write_members(tmp_path / "bomb.tar.gz", [("train/cat/0.png", (Zeros(size), size))])
    assert bomb.stat().st_size < 200_000
    with pytest.raises(DataError, match=r"bomb.tar.gz: train/cat/0.png is 41,943,041 bytes"):
        data.load_cifar10(bomb)


def official_pickle_claiming(shape) -> bytes:
    """An official-format batch whose b'data' is numpy.ndarray(shape) called by the pickle:
    any shape, from no data at all."""
    ndarray_call = (
        b"cnumpy\nndarray\n"  # the global
        + pickle.dumps(shape, protocol=2)[2:-1]  # the shape tuple, without PROTO and STOP
        + b"\x85R"  # TUPLE1, REDUCE: ndarray(shape), a float64 array of that shape
    )
    return b"\x80\x02}q\x00(C\x04dataq\x01" + ndarray_call + b"C\x06labelsq\x02]q\x03K\x00au."


def test_a_batch_pickle_cannot_make_numpy_allocate_a_shape_it_names(tmp_path):
    content = official_pickle_claiming((250_000, 3072))
    assert len(content) < 200
    batches = {name: content for name in data.OFFICIAL_BATCHES["train"]}
    source = write_official_batches(tmp_path / "cifar-10-batches-py", batches)
    with pytest.raises(DataError, match="data_batch_1.*not an official CIFAR-10 batch"):
        data.load_cifar10(source)


def write_official_batches(folder, batches):
    folder.mkdir()
    for name in [*data.OFFICIAL_BATCHES["train"], *data.OFFICIAL_BATCHES["test"]]:
        (folder / name).write_bytes(batches.get(name) or official_batch_bytes(3))
    return folder


def official_batch_bytes(rows: int) -> bytes:
    images = (np.arange(rows * 3072) % 251).astype(np.uint8).reshape(rows, 3072)
    return pickle.dumps({b"data": images, b"labels": list(range(rows))}, protocol=3)


def test_a_batch_of_more_rows_than_cifar_batches_have_is_refused(tmp_path):
    batches = {"data_batch_1": official_batch_bytes(data.MAX_BATCH_ROWS + 1)}
    source = write_official_batches(tmp_path / "cifar-10-batches-py", batches)
    with pytest.raises(DataError, match="N at most 10,000"):
        data.load_cifar10(source)


def test_more_images_than_cifar_has_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(data.MAX_IMAGES, "test", 15)  # the real limit, 10,000, scaled down
    tree = tmp_path / "tree"
    for split, count in (("train", 1), ("test", 2)):
        for name in config.CLASS_NAMES:
            (tree / split / name).mkdir(parents=True)
            for index in range(count):
                Image.new("RGB", (32, 32)).save(tree / split / name / f"{index}.png")
    with pytest.raises(DataError, match="20 test/ images; CIFAR-10 has at most 15"):
        data.load_cifar10(tree)


# ---------------------------------------------------------------- crafted files


def test_a_dtype_with_an_overflowing_offset_is_a_data_error(tmp_path):
    # A structured dtype whose field offset does not fit in a C long.
    dtype_state = (3, "|", None, ("a",), {"a": (np.dtype("u1"), 2**63 - 1)}, 2**63, 1, 16)
    crafted = (
        b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00V8\x89\x88\x87R"
        + pickle.dumps(dtype_state, protocol=2)[2:-1]
        + b"b."
    )
    source = write_official_batches(tmp_path / "cifar-10-batches-py", {"test_batch": crafted})
    with pytest.raises(DataError, match="test_batch.*not an official CIFAR-10 batch"):
        data.load_cifar10(source)


def test_a_pth_tensor_with_huge_strides_is_a_checkpoint_error(tmp_path):
    storage = np.zeros(2, np.float32)
    tensor = torch_checkpoint._Tensor("0", 0, (1, 2), (2**62, 1))
    view = torch_checkpoint._view(tensor, {"0": storage}, tmp_path / "w.pth", "w")
    assert view.shape == (1, 2)  # the stride of a size-1 dimension is never used
    tensor = torch_checkpoint._Tensor("0", 0, (2, 1), (2**62, 1))
    with pytest.raises(torch_checkpoint.CheckpointError, match="w.pth: tensor w"):
        torch_checkpoint._view(tensor, {"0": storage}, tmp_path / "w.pth", "w")


def ztxt_bomb_png(path):
    """A valid 32x32 PNG with a zTXt chunk that inflates to 64 MB of text."""
    Image.new("RGB", (32, 32)).save(path)
    raw = path.read_bytes()
    text = b"Comment\0\0" + zlib.compress(bytes(64 * 2**20), 9)
    chunk = struct.pack(">I", len(text) - 0) + b"zTXt" + text
    chunk += struct.pack(">I", zlib.crc32(b"zTXt" + text) & 0xFFFFFFFF)
    end = raw.index(b"IEND") - 4
    path.write_bytes(raw[:end] + chunk + raw[end:])
    return path


def test_a_png_text_bomb_is_an_error_naming_the_file(tmp_path):
    tree = tmp_path / "tree"
    for split in data.SPLITS:
        for name in config.CLASS_NAMES:
            (tree / split / name).mkdir(parents=True)
            Image.new("RGB", (32, 32)).save(tree / split / name / "0.png")
    ztxt_bomb_png(tree / "train" / "cat" / "0.png")
    with pytest.raises(DataError, match=r"train/cat/0.png: broken image data \(Decompressed"):
        data.load_cifar10(tree)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04truncated"], ids=["empty", "truncated"])
def test_an_empty_or_truncated_keras_file_is_named_as_such(tmp_path, content):
    path = tmp_path / "model.keras"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"model.keras: not a .keras model .*empty or truncated"):
        runs.load_model(path)


# ---------------------------------------------------------------- one image decoder


def decoded_by_data_and_demo(image, tmp_path):
    """The pixels the data layer and the demo's conversion make of one 32x32 image."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    from_data = data._decode_image(buffer.getvalue(), "test image")
    from_demo = np.asarray(imaging.to_rgb(Image.open(io.BytesIO(buffer.getvalue()))))
    return from_data, from_demo


def test_16_bit_grey_is_scaled_not_clipped_in_training_data_and_demo(tmp_path):
    grey16 = Image.fromarray(np.full((32, 32), 128 * 257, np.uint16))
    from_data, from_demo = decoded_by_data_and_demo(grey16, tmp_path)
    assert (from_data == 128).all() and np.array_equal(from_data, from_demo)


def test_transparent_pixels_are_white_in_training_data_and_demo(tmp_path):
    clear = Image.new("RGBA", (32, 32), (10, 20, 30, 0))
    from_data, from_demo = decoded_by_data_and_demo(clear, tmp_path)
    assert (from_data == 255).all() and np.array_equal(from_data, from_demo)


def test_the_demo_refuses_formats_outside_its_list(tmp_path):
    eps = tmp_path / "picture.eps"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\nshowpage\n")
    assert "EPS" not in imaging.DEMO_FORMATS
    with Image.open(eps) as image:  # Pillow alone would open it (and run Ghostscript to load)
        assert image.format == "EPS"
    with pytest.raises(UnidentifiedImageError):
        Image.open(eps, formats=imaging.DEMO_FORMATS)


# ---------------------------------------------------------------- resume after faults


class FailAfter(keras.callbacks.Callback):
    """From epoch ``epoch`` on, saving weights fails as a full disk makes it fail."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch + 1 >= self.epoch:

            def no_space(*args, **kwargs):
                raise OSError(errno.ENOSPC, "No space left on device")

            self.model.save_weights = no_space


def baseline_profile(epochs=3):
    return config.profile(
        "smoke", baseline_epochs=epochs, early_stopping_patience=10, baseline_batch_size=10
    )


def train_until_the_disk_fills(out, splits):
    """Train 3 epochs into ``out``; saving fails from epoch 2 on, as on a full disk."""
    with pytest.raises(OSError, match="No space left"):
        training.run_experiment(
            "baseline_cnn",
            baseline_profile(),
            out_dir=out,
            splits=splits,
            callbacks=[FailAfter(2)],
        )


def test_a_full_disk_leaves_the_last_backup_whole_and_resumable(tmp_path):
    out, splits = tmp_path / "run", tiny_splits()
    train_until_the_disk_fills(out, splits)
    backup = out / "backup"
    # Epoch 1's backup, complete; the failed save left no temporary file beside it.
    assert sorted(path.name for path in backup.iterdir()) == [
        "latest.weights.h5",
        "training_metadata.json",
    ]
    assert fileio.read_json(backup / "training_metadata.json")["epoch"] == 1
    metrics = training.run_experiment(
        "baseline_cnn", baseline_profile(), out_dir=out, splits=splits, resume=True
    )
    assert metrics["epochs"] == 3


def test_a_damaged_backup_is_reported_on_resume_with_how_to_start_over(tmp_path, capsys):
    out, splits = tmp_path / "run", tiny_splits()
    train_until_the_disk_fills(out, splits)
    weights = out / "backup" / "latest.weights.h5"
    weights.write_bytes(weights.read_bytes()[:1000])  # cut short, as a crash would leave it
    with pytest.raises(training.BackupError, match="does not load .*without --resume to start"):
        training.run_experiment(
            "baseline_cnn", baseline_profile(), out_dir=out, splits=splits, resume=True
        )
    # Starting over (no --resume) replaces the damaged backup and trains.
    metrics = training.run_experiment(
        "baseline_cnn", baseline_profile(), out_dir=out, splits=splits
    )
    assert metrics["epochs"] == 3


def test_the_cli_reports_a_full_disk_in_one_error_line(tmp_path, capsys, monkeypatch):
    original = training.run_experiment

    def full_disk(experiment, profile, **kwargs):
        return original(
            experiment,
            baseline_profile(),
            out_dir=tmp_path / "run",
            splits=tiny_splits(),
            callbacks=[FailAfter(1)],
        )

    monkeypatch.setattr(training, "run_experiment", full_disk)
    assert main(["train", "baseline_cnn", "--profile", "smoke"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "No space left on device" in error
    assert "\n" not in error


KILLED_RUN = """
import sys, time
import keras
sys.path.insert(0, {tests!r})
from test_reliability import baseline_profile, tiny_splits
from cifar10_transfer import training

class Slow(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        time.sleep(0.5)  # time to be killed between two epochs

training.run_experiment("baseline_cnn", baseline_profile(epochs=12), out_dir={out!r},
                        splits=tiny_splits(), callbacks=[Slow()])
"""


def test_a_run_killed_with_sigkill_resumes_from_its_last_backup(tmp_path):
    out = tmp_path / "run"
    script = KILLED_RUN.format(tests=str(Path(__file__).parent), out=str(out))
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
    metadata = out / "backup" / "training_metadata.json"
    history = out / training.HISTORY_PART
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        # Killed in Slow's pause: after the epoch's backup and its history row, not between
        # the two (the backup is written first; a kill there loses that epoch's row).
        done = fileio.read_json(metadata)["epoch"] if metadata.exists() else 0
        rows = len(history.read_text().splitlines()) - 1 if history.exists() else 0
        if done >= 2 and rows >= done:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    done = fileio.read_json(metadata)["epoch"]
    assert 2 <= done < 12 and not (out / "metrics.json").exists()
    metrics = training.run_experiment(
        "baseline_cnn", baseline_profile(epochs=12), out_dir=out, splits=tiny_splits(), resume=True
    )
    assert metrics["epochs"] == 12
