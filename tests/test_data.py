"""cifar10_transfer.data: sources, checks, cache and splits (tiny synthetic data + real data)."""

import io
import os
import pickle
import shutil
import sys
import tarfile
import types

import numpy as np
import pytest
from PIL import Image

from cifar10_transfer import config, data, fileio
from cifar10_transfer.data import DataError

PER_CLASS = 2  # images per class and split in the synthetic trees


@pytest.fixture(autouse=True)
def keras_home(request, tmp_path, monkeypatch):
    """An empty Keras cache per test and no $CIFAR10_DATA; real-data tests keep the shared cache."""
    monkeypatch.delenv("CIFAR10_DATA", raising=False)
    if request.node.get_closest_marker("realdata"):
        return None
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


def cached_files(keras_home):
    return sorted((keras_home / "datasets").glob("*")) if keras_home.exists() else []


def pixel_value(split, label, index):
    """A flat colour that encodes where an image came from (PNG is lossless)."""
    return {"train": 0, "test": 100}[split] + 10 * label + index


def write_tree(root, fmt="PNG", per_class=PER_CLASS):
    """root/{train,test}/<class>/<i>.png, each image one flat colour from ``pixel_value``."""
    for split in data.SPLITS:
        for label, name in enumerate(config.CLASS_NAMES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(per_class):
                pixels = np.full((32, 32, 3), pixel_value(split, label, index), np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.{fmt.lower()}", format=fmt)
    return root


def write_tar(folder, path, arcname):
    with tarfile.open(path, "w:gz") as archive:
        archive.add(folder, arcname=arcname)
    return path


def official_batch(labels, data_rows=None):
    """Bytes of an official-format batch: a dict with bytes keys, pickled like the originals."""
    rows = np.arange(len(labels) * 3072).reshape(len(labels), 3072) % 251
    batch = {
        b"batch_label": b"synthetic",
        b"labels": list(labels),
        b"data": rows.astype(np.uint8) if data_rows is None else data_rows,
        b"filenames": [f"{index}.png".encode() for index in range(len(labels))],
    }
    # Protocol 3 writes globals as text lines; name the module the way numpy 1.x (and so the
    # official files) spell it, so the loader's allow-list is tested on the real name.
    return pickle.dumps(batch, protocol=3).replace(
        b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"
    )


def write_official(path, batches=None):
    """A cifar-10-python.tar.gz look-alike: 3 images in each of the six batches."""
    batches = batches or {}
    with tarfile.open(path, "w:gz") as archive:
        for name in [*data.OFFICIAL_BATCHES["train"], *data.OFFICIAL_BATCHES["test"]]:
            content = batches.get(name) or official_batch([1, 0, 9])
            member = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            member.size = len(content)
            archive.addfile(member, io.BytesIO(content))
    return path


# --- image-folder trees ----------------------------------------------------------------------


@pytest.mark.parametrize("as_tar", [False, True], ids=["folder", "tar.gz"])
def test_image_tree_loads_with_labels_from_folders(tmp_path, keras_home, as_tar):
    source = write_tree(tmp_path / "tree")
    if as_tar:
        source = write_tar(source, tmp_path / "tree.tar.gz", arcname="cifar10-fake")
    dataset = data.load_cifar10(source)

    assert dataset.x_train.shape == (10 * PER_CLASS, 32, 32, 3)
    assert dataset.x_test.shape == (10 * PER_CLASS, 32, 32, 3)
    assert dataset.x_train.dtype == np.uint8 and dataset.y_train.dtype == np.int64
    assert dataset.class_names == config.CLASS_NAMES
    for split in data.SPLITS:
        images, labels = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
        indices = np.tile(np.arange(PER_CLASS), 10)  # path order: class by class, 0.png, 1.png
        expected = [pixel_value(split, label, i) for label, i in zip(labels, indices, strict=True)]
        assert images[:, 0, 0, 0].tolist() == expected
        assert np.bincount(labels).tolist() == [PER_CLASS] * 10
    assert dataset.source == str(source.resolve())
    assert dataset.verified is False
    assert dataset.verification.startswith("not verified")
    assert len(cached_files(keras_home)) == 1


def test_jpeg_tree_and_ignored_extras(tmp_path):
    tree = write_tree(tmp_path / "tree", fmt="JPEG")
    (tree / "README.txt").write_text("not data")  # beside train/ and test/: ignored
    (tree / "train" / "cat" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored
    Image.new("L", (32, 32), 7).save(tree / "train" / "cat" / "gray.png")  # grayscale -> RGB
    dataset = data.load_cifar10(tree)
    assert len(dataset.y_train) == 10 * PER_CLASS + 1
    assert dataset.x_train.shape[1:] == (32, 32, 3)


def test_known_checksum_marks_archive_verified(tmp_path, monkeypatch):
    archive = write_tar(write_tree(tmp_path / "tree"), tmp_path / "mirror.tar.gz", "cifar10-x")
    monkeypatch.setitem(data.KNOWN_ARCHIVES, "published.tar.gz", fileio.sha256(archive))
    dataset = data.load_cifar10(archive)
    assert dataset.verified is True
    assert dataset.verification == "sha256 of published.tar.gz"


def test_second_load_comes_from_cache(tmp_path, keras_home, monkeypatch):
    archive = write_tar(write_tree(tmp_path / "tree"), tmp_path / "tree.tar.gz", "cifar10-x")
    first = data.load_cifar10(archive)

    def no_decoding(*args):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(data, "_decode", no_decoding)
    second = data.load_cifar10(archive)
    assert np.array_equal(first.x_train, second.x_train)
    assert np.array_equal(first.y_test, second.y_test)
    assert len(cached_files(keras_home)) == 1


def test_changed_folder_is_decoded_again(tmp_path, keras_home):
    tree = write_tree(tmp_path / "tree")
    data.load_cifar10(tree)
    image = tree / "test" / "dog" / "0.png"
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(image)
    os.utime(image, ns=(0, 0))  # a different mtime even on coarse-grained file systems
    dataset = data.load_cifar10(tree)
    dog_first = np.flatnonzero(dataset.y_test == config.CLASS_NAMES.index("dog"))[0]
    assert dataset.x_test[dog_first, 0, 0, 0] == 255
    assert len(cached_files(keras_home)) == 2


def test_cifar10_data_variable_is_the_default_source(tmp_path, monkeypatch):
    tree = write_tree(tmp_path / "tree")
    monkeypatch.setenv("CIFAR10_DATA", str(tree))
    assert data.load_cifar10().source == str(tree.resolve())


# --- official batches ------------------------------------------------------------------------


def test_official_tarball_loads_channel_planar_rows(tmp_path, keras_home):
    dataset = data.load_cifar10(write_official(tmp_path / "fake-official.tar.gz"))
    assert dataset.x_train.shape == (15, 32, 32, 3)
    assert dataset.x_test.shape == (3, 32, 32, 3)
    assert dataset.y_train.tolist() == [1, 0, 9] * 5
    # Row = 1024 red, 1024 green, 1024 blue values; pixel (r, c) channel k = row[k*1024+32r+c].
    row = np.arange(3072) % 251
    assert dataset.x_train[0, 2, 5].tolist() == [row[2 * 32 + 5], row[1024 + 69], row[2048 + 69]]
    assert dataset.verified is False
    assert len(cached_files(keras_home)) == 1


def test_official_folder_loads(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [*data.OFFICIAL_BATCHES["train"], *data.OFFICIAL_BATCHES["test"]]:
        (folder / name).write_bytes(official_batch([1, 0, 9]))
    (folder / "batches.meta").write_bytes(b"not read")
    dataset = data.load_cifar10(folder)
    assert len(dataset.y_train) == 15 and len(dataset.y_test) == 3
    assert dataset.verification == "not verified: folder"


def test_official_name_with_wrong_checksum_is_rejected(tmp_path, keras_home):
    archive = write_official(tmp_path / data.OFFICIAL_NAME)
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz: sha256 .* does not match"):
        data.load_cifar10(archive)
    assert cached_files(keras_home) == []


def test_forbidden_pickle_global_is_refused(tmp_path, keras_home):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    evil = pickle.dumps({b"data": Exploit(), b"labels": [0]}, protocol=3)
    archive = write_official(tmp_path / "evil.tar.gz", {"data_batch_3": evil})
    with pytest.raises(DataError, match=r"data_batch_3.*refusing global (posix|os|nt)\.mkdir"):
        data.load_cifar10(archive)
    assert not marker.exists()
    assert cached_files(keras_home) == []


def test_label_out_of_range_is_rejected(tmp_path, keras_home):
    archive = write_official(tmp_path / "bad.tar.gz", {"test_batch": official_batch([3, 11, 0])})
    with pytest.raises(DataError, match="test label 11 is outside 0..9"):
        data.load_cifar10(archive)
    assert cached_files(keras_home) == []


def test_missing_official_batch_is_rejected(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(official_batch([0, 1]))
    with pytest.raises(DataError, match="data_batch_2, data_batch_3, data_batch_4, data_batch_5"):
        data.load_cifar10(folder)


def test_malformed_batch_is_rejected(tmp_path):
    flat = official_batch([0, 1], data_rows=np.zeros((2, 1024), np.uint8))
    archive = write_official(tmp_path / "flat.tar.gz", {"data_batch_1": flat})
    with pytest.raises(DataError, match=r"data_batch_1\): expected a dict with b'data'"):
        data.load_cifar10(archive)


# --- rejected sources: one DataError, nothing cached -----------------------------------------


def test_truncated_tarball_is_rejected(tmp_path, keras_home):
    archive = write_tar(write_tree(tmp_path / "tree"), tmp_path / "tree.tar.gz", "cifar10-x")
    content = archive.read_bytes()
    archive.write_bytes(content[: len(content) // 2])
    with pytest.raises(DataError, match=r"tree\.tar\.gz: not a readable tar archive, truncated"):
        data.load_cifar10(archive)
    assert cached_files(keras_home) == []


@pytest.mark.parametrize(
    "damage",
    [lambda content: content[:-8], lambda content: content[:-8] + bytes(8)],
    ids=["gzip-trailer-cut", "gzip-crc-wrong"],
)
def test_tarball_damaged_only_at_its_end_is_rejected(tmp_path, keras_home, damage):
    # Every tar member is intact here; only gzip's end check can tell.
    archive = write_tar(write_tree(tmp_path / "tree"), tmp_path / "tree.tar.gz", "cifar10-x")
    archive.write_bytes(damage(archive.read_bytes()))
    with pytest.raises(DataError, match=r"tree\.tar\.gz: not a readable tar archive"):
        data.load_cifar10(archive)
    assert cached_files(keras_home) == []


def test_corrupted_tarball_is_rejected(tmp_path, keras_home):
    archive = write_tar(write_tree(tmp_path / "tree"), tmp_path / "tree.tar.gz", "cifar10-x")
    content = bytearray(archive.read_bytes())
    middle = len(content) // 2
    content[middle : middle + 64] = bytes(64)
    archive.write_bytes(bytes(content))
    with pytest.raises(DataError, match=r"tree\.tar\.gz"):
        data.load_cifar10(archive)
    assert cached_files(keras_home) == []


def test_not_an_archive_is_rejected(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt: not a readable tar archive"):
        data.load_cifar10(path)


def test_known_name_with_wrong_checksum_is_rejected(tmp_path, keras_home):
    archive = write_tar(write_tree(tmp_path / "tree"), tmp_path / "cifar10-jpeg.tar.gz", "x")
    with pytest.raises(DataError, match=r"cifar10-jpeg\.tar\.gz: sha256 .* truncated or corrupted"):
        data.load_cifar10(archive)
    assert cached_files(keras_home) == []


def _remove_test_split(tree):
    shutil.rmtree(tree / "test")


def _remove_class(tree):
    shutil.rmtree(tree / "train" / "cat")


def _add_text_file(tree):
    (tree / "train" / "dog" / "notes.txt").write_text("not an image")


def _add_big_image(tree):
    Image.new("RGB", (33, 32)).save(tree / "test" / "ship" / "big.png")


def _add_unknown_class(tree):
    (tree / "train" / "unicorn").mkdir()
    Image.new("RGB", (32, 32)).save(tree / "train" / "unicorn" / "0.png")


def _add_truncated_image(tree):
    content = (tree / "test" / "frog" / "0.png").read_bytes()
    (tree / "test" / "frog" / "0.png").write_bytes(content[: len(content) // 2])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_remove_test_split, "no test/ images"),
        (_remove_class, r"train/ lacks class folder\(s\) cat"),
        (_add_text_file, r"train/dog/notes\.txt is not a PNG or JPEG image"),
        (_add_big_image, r"test/ship/big\.png is 33x32 pixels; expected 32x32"),
        (_add_unknown_class, r"unexpected file .*train/unicorn/0\.png"),
        (_add_truncated_image, r"test/frog/0\.png: broken image data"),
    ],
)
@pytest.mark.parametrize("as_tar", [False, True], ids=["folder", "tar.gz"])
def test_bad_tree_is_rejected(tmp_path, keras_home, damage, message, as_tar):
    tree = write_tree(tmp_path / "tree")
    damage(tree)
    source = write_tar(tree, tmp_path / "tree.tar.gz", "cifar10-x") if as_tar else tree
    with pytest.raises(DataError, match=message) as error:
        data.load_cifar10(source)
    assert "\n" not in str(error.value)
    assert cached_files(keras_home) == []


def test_empty_folder_is_rejected(tmp_path, keras_home):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="empty holds no files"):
        data.load_cifar10(tmp_path / "empty")
    assert cached_files(keras_home) == []


def test_missing_source_is_rejected(tmp_path):
    with pytest.raises(DataError, match=r"data source .*nowhere does not exist"):
        data.load_cifar10(tmp_path / "nowhere")


def test_failed_cache_write_leaves_nothing(tmp_path, keras_home, monkeypatch):
    def interrupted_save(file, **arrays):
        file.write(b"half an npz")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        data.load_cifar10(write_tree(tmp_path / "tree"))
    assert cached_files(keras_home) == []


def test_unreadable_cache_is_reported(tmp_path, keras_home):
    tree = write_tree(tmp_path / "tree")
    data.load_cifar10(tree)
    [cache] = cached_files(keras_home)
    cache.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cached arrays .*\.npz are unreadable"):
        data.load_cifar10(tree)


def test_download_failure_names_every_way_out(keras_home, monkeypatch):
    calls = []

    def unreachable(*args, **kwargs):
        calls.append((args, kwargs))
        # What keras.utils.get_file raises without network (a bare Exception).
        raise Exception(f"URL fetch failure on {args[1]}: None -- [Errno -3] name resolution")

    # A stand-in Keras module: importing the real one costs seconds and touches no network code.
    fake_keras = types.SimpleNamespace(utils=types.SimpleNamespace(get_file=unreachable))
    monkeypatch.setitem(sys.modules, "keras", fake_keras)
    with pytest.raises(DataError) as error:
        data.load_cifar10()
    message = str(error.value)
    assert data.OFFICIAL_URL in message
    assert str(keras_home / "datasets" / "cifar-10-python.tar.gz") in message
    assert "--data" in message and "CIFAR10_DATA" in message
    assert "\n" not in message
    [(args, kwargs)] = calls
    assert args == (data.OFFICIAL_NAME, data.OFFICIAL_URL)
    assert kwargs["file_hash"] == data.KNOWN_ARCHIVES[data.OFFICIAL_NAME]
    assert kwargs["cache_dir"] == str(keras_home)
    assert cached_files(keras_home) == []


# --- summary and splits ----------------------------------------------------------------------


def synthetic(train_per_class=50, test_per_class=20):
    """A CIFAR10 whose images carry their own index (pixel [0, 0, :2] = divmod(index, 256))."""

    def split(per_class):
        labels = np.tile(np.arange(10, dtype=np.int64), per_class)
        images = np.zeros((len(labels), 32, 32, 3), np.uint8)
        images[:, 0, 0, 0], images[:, 0, 0, 1] = np.divmod(np.arange(len(labels)), 256)
        return images, labels

    x_train, y_train = split(train_per_class)
    x_test, y_test = split(test_per_class)
    return data.CIFAR10(
        x_train, y_train, x_test, y_test, config.CLASS_NAMES, "synthetic", False, "none"
    )


def image_ids(images):
    return images[:, 0, 0, 0].astype(int) * 256 + images[:, 0, 0, 1]


def test_summary_counts_per_class(tmp_path):
    result = data.summary(data.load_cifar10(write_tree(tmp_path / "tree")))
    assert list(result["train"]) == list(config.CLASS_NAMES)
    assert set(result["train"].values()) == {PER_CLASS}
    assert set(result["test"].values()) == {PER_CLASS}
    assert result["image_shape"] == [32, 32, 3] and result["dtype"] == "uint8"
    assert result["verified"] is False and result["verification"] == "not verified: folder"


def test_stratified_indices_balanced_deterministic_and_nested():
    labels = np.repeat(np.arange(10), 100)
    small = data.stratified_indices(labels, 35, seed=1)
    assert len(set(small.tolist())) == 35
    assert sorted(set(np.bincount(labels[small]).tolist())) == [3, 4]
    assert np.array_equal(small, data.stratified_indices(labels, 35, seed=1))
    assert not np.array_equal(small, data.stratified_indices(labels, 35, seed=2))
    larger = data.stratified_indices(labels, 70, seed=1)
    assert set(small.tolist()) <= set(larger.tolist())
    assert not np.array_equal(np.sort(larger), larger)  # shuffled, not grouped by class


def test_stratified_indices_keep_class_proportions():
    labels = np.repeat(np.arange(10), [300] + [100] * 9)  # class 0 is three times as common
    counts = np.bincount(labels[data.stratified_indices(labels, 120, seed=0)])
    assert counts.tolist() == [30] + [10] * 9


def test_make_splits_are_disjoint_stratified_and_deterministic():
    dataset = synthetic()
    splits = data.make_splits(dataset, train_size=200, val_size=100, test_size=50, seed=3)
    train_ids, val_ids = image_ids(splits.x_train), image_ids(splits.x_val)
    assert len(train_ids) == 200 and len(val_ids) == 100 and len(splits.y_test) == 50
    assert set(train_ids.tolist()).isdisjoint(val_ids.tolist())
    assert np.array_equal(dataset.y_train[train_ids], splits.y_train)  # images keep their labels
    assert np.array_equal(dataset.y_test[image_ids(splits.x_test)], splits.y_test)
    assert np.bincount(splits.y_train).tolist() == [20] * 10
    assert np.bincount(splits.y_val).tolist() == [10] * 10
    assert np.bincount(splits.y_test).tolist() == [5] * 10
    again = data.make_splits(dataset, train_size=200, val_size=100, test_size=50, seed=3)
    assert np.array_equal(again.x_train, splits.x_train)
    # The validation set does not move when the training subset changes size.
    everything = data.make_splits(dataset, val_size=100, seed=3)
    assert np.array_equal(everything.y_val, splits.y_val)
    assert np.array_equal(everything.x_val, splits.x_val)
    assert len(everything.y_train) == 400 and len(everything.y_test) == 200
    assert splits.class_names == config.CLASS_NAMES
    assert (splits.source, splits.verified) == ("synthetic", False)  # provenance travels


@pytest.mark.parametrize(
    ("sizes", "parameter"),
    [
        ({"val_size": 495}, "val_size"),
        ({"val_size": 9}, "val_size"),
        ({"val_size": 100, "train_size": 401}, "train_size"),
        ({"train_size": 5}, "train_size"),
        ({"test_size": 201}, "test_size"),
        ({"test_size": 2.5}, "test_size"),
        ({"train_size": True}, "train_size"),
    ],
)
def test_make_splits_rejects_bad_sizes(sizes, parameter):
    with pytest.raises(ValueError, match=f"^{parameter} must be"):
        data.make_splits(synthetic(), **{"val_size": 20, **sizes})


def test_load_splits_uses_the_profile(tmp_path):
    profile = config.profile("smoke", train_size=10, val_size=10, test_size=10)
    splits = data.load_splits(profile, write_tree(tmp_path / "tree"))
    assert [len(splits.y_train), len(splits.y_val), len(splits.y_test)] == [10, 10, 10]
    assert np.bincount(splits.y_val).tolist() == [1] * 10


# --- the real dataset ------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_cifar10_counts_and_verification(real_cifar10):
    assert real_cifar10.x_train.shape == (50_000, 32, 32, 3)
    assert real_cifar10.x_test.shape == (10_000, 32, 32, 3)
    assert real_cifar10.x_train.dtype == np.uint8 and real_cifar10.y_train.dtype == np.int64
    assert np.bincount(real_cifar10.y_train).tolist() == [5000] * 10
    assert np.bincount(real_cifar10.y_test).tolist() == [1000] * 10
    assert real_cifar10.verified is True
    assert real_cifar10.verification == "sha256 of cifar10-jpeg.tar.gz"
    assert 100 < real_cifar10.x_train.mean() < 150  # real photos, not blank arrays


@pytest.mark.realdata
def test_real_cifar10_second_load_uses_cache(real_cifar10, real_data_path, monkeypatch):
    def no_decoding(*args):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(data, "_decode", no_decoding)
    again = data.load_cifar10(real_data_path)
    assert np.array_equal(again.x_train, real_cifar10.x_train)
    assert np.array_equal(again.y_test, real_cifar10.y_test)


@pytest.mark.realdata
def test_real_quick_profile_splits(real_cifar10):
    profile = config.profile("quick")
    splits = data.make_splits(
        real_cifar10, profile.train_size, profile.val_size, profile.test_size, profile.seed
    )
    assert np.bincount(splits.y_train).tolist() == [1000] * 10
    assert np.bincount(splits.y_val).tolist() == [200] * 10
    assert len(splits.y_test) == 10_000
