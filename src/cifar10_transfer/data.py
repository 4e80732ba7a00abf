"""CIFAR-10 loading, checking, caching and stratified splits.

``load_cifar10`` reads the official ``cifar-10-python.tar.gz`` (or its extracted
``cifar-10-batches-py/`` folder) or an image-folder tree ``[top/]{train,test}/<class>/<image>``
(PNG or JPEG, as a folder or a tar archive). Archives are read straight from the tar stream, so
nothing is ever extracted to disk. The decoded arrays are cached as ``.npz`` in
``<keras cache>/datasets``, keyed by the archive's sha256 (a folder: its file names, sizes and
mtimes), so only the first load decodes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import sys
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from cifar10_transfer import config, fileio, imaging
from cifar10_transfer.fileio import atomic_path, one_line

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_NAME = "cifar-10-python.tar.gz"
# Published sha256 per archive name. An archive under a known name must match it (a mismatch is
# a corrupted or partial copy); a known digest under any name counts as verified; any other
# archive loads unverified.
KNOWN_ARCHIVES = {
    OFFICIAL_NAME: "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    "cifar10-jpeg.tar.gz": "efac85c8ed52f4ead1e1f1b670d8dcf435d551fccebdd8b6365e0a01a504f3a4",
}
SPLITS = ("train", "test")
OFFICIAL_BATCHES = {
    "train": [f"data_batch_{index}" for index in range(1, 6)],
    "test": ["test_batch"],
}
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
# CIFAR-10 has known sizes, so a source claiming more is refused before it is read: at most
# 50,000 training and 10,000 test images, batches of at most 10,000 rows, and files a little
# above the largest real one (an official batch: 31 MB; one JPEG of the shared copy: 1.1 KB).
MAX_IMAGES = {"train": 50_000, "test": 10_000}
MAX_BATCH_ROWS = 10_000
MAX_FILE_BYTES = 40 * 2**20
MAX_FILES = 60_000 + 1_000  # the images, and room for READMEs and metadata
MAX_TOTAL_BYTES = 512 * 2**20
CACHE_VERSION = 1  # part of the cache file name: bump it when decoding changes
EXPECTED_SOURCES = (
    "expected the official cifar-10-python.tar.gz, a cifar-10-batches-py/ folder, or "
    "train/<class>/ and test/<class>/ image folders (a folder or a .tar.gz)"
)


class DataError(ValueError):
    """A CIFAR-10 source that is missing, corrupted or not in an expected layout."""


@dataclasses.dataclass(frozen=True, eq=False)
class CIFAR10:
    """The whole dataset: images uint8 (N, 32, 32, 3), labels int64 in 0..9."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str
    verified: bool
    verification: str  # what was checked, e.g. "sha256 of cifar10-jpeg.tar.gz"


@dataclasses.dataclass(frozen=True, eq=False)
class Splits:
    """Train/validation/test arrays; validation is held out of the training images."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str  # provenance, copied from the CIFAR10 it was split from
    verified: bool


def cache_file(key: str) -> Path:
    """Where the decoded arrays of the source with cache key ``key`` are kept (``"*"``: the
    pattern of every source's, at this CACHE_VERSION)."""
    return config.cache_dir() / "datasets" / f"cifar10-v{CACHE_VERSION}-{key}.npz"


def load_cifar10(data: str | os.PathLike | None = None) -> CIFAR10:
    """Load CIFAR-10 from ``data`` (a path), else ``$CIFAR10_DATA``, else the official
    download. ``CIFAR10.source`` records where it came from."""
    if data is None:
        data = os.environ.get("CIFAR10_DATA") or _download_official()
    path = Path(data).expanduser().resolve()
    if not path.exists():
        raise DataError(f"data source {path} does not exist; {EXPECTED_SOURCES}")
    key, verified, verification = _fingerprint(path)
    cache = cache_file(key)
    if cache.exists():
        arrays = _load_cache(cache)
        _check_arrays(arrays, cache)
    else:
        arrays = _decode(path)
        _check_arrays(arrays, path)
        _save_cache(cache, arrays)
    return CIFAR10(
        **arrays,
        class_names=config.CLASS_NAMES,
        source=str(path),
        verified=verified,
        verification=verification,
    )


def summary(dataset: CIFAR10) -> dict:
    """JSON-ready facts about ``dataset``: source, verification, images per class and split."""

    def counts(labels: np.ndarray) -> dict[str, int]:
        per_class = np.bincount(labels, minlength=len(dataset.class_names))
        return {
            name: int(count) for name, count in zip(dataset.class_names, per_class, strict=True)
        }

    return {
        "source": dataset.source,
        "verified": dataset.verified,
        "verification": dataset.verification,
        "train": counts(dataset.y_train),
        "test": counts(dataset.y_test),
        "image_shape": list(dataset.x_train.shape[1:]),
        "dtype": str(dataset.x_train.dtype),
    }


def one_per_class(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """The index of one random image of each class, in class order (for figures)."""
    rng = np.random.default_rng(seed)
    return np.array([rng.choice(np.flatnonzero(labels == c)) for c in np.unique(labels)])


def stratified_indices(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` shuffled indices into ``labels``, each class in proportion to its count.

    Leftover places go to the classes with the largest remainders (ties at random). The draws
    within a class do not depend on ``size``, so a larger ``size`` only adds indices.
    """
    labels = np.asarray(labels)
    _check_size("size", size, len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    taken, remainders = np.divmod(size * counts, len(labels))  # integer math: exact quotas
    tie_break = rng.permutation(len(classes))
    leftover = size - taken.sum()
    taken[np.lexsort((tie_break, -remainders))[:leftover]] += 1
    picked = [
        rng.permutation(np.flatnonzero(labels == label))[:count]
        for label, count in zip(classes, taken, strict=True)
    ]
    return rng.permutation(np.concatenate(picked))


def make_splits(
    dataset: CIFAR10,
    train_size: int | None = None,
    val_size: int = 2000,
    test_size: int | None = None,
    seed: int = 42,
) -> Splits:
    """Deterministic stratified splits; ``None`` sizes mean "all".

    Validation comes out of the training images (never the test set) and does not depend on
    ``train_size``; the training subset is drawn from the rest.
    """
    _check_size("val_size", val_size, len(dataset.y_train) - config.NUM_CLASSES)
    val = stratified_indices(dataset.y_train, val_size, seed)
    rest = np.setdiff1d(np.arange(len(dataset.y_train)), val)
    train_size = len(rest) if train_size is None else train_size
    _check_size("train_size", train_size, len(rest))
    train = rest[stratified_indices(dataset.y_train[rest], train_size, seed)]
    test_size = len(dataset.y_test) if test_size is None else test_size
    _check_size("test_size", test_size, len(dataset.y_test))
    test = stratified_indices(dataset.y_test, test_size, seed)
    return Splits(
        x_train=dataset.x_train[train],
        y_train=dataset.y_train[train],
        x_val=dataset.x_train[val],
        y_val=dataset.y_train[val],
        x_test=dataset.x_test[test],
        y_test=dataset.y_test[test],
        class_names=dataset.class_names,
        source=dataset.source,
        verified=dataset.verified,
    )


def load_splits(profile: config.Profile, data: str | os.PathLike | None = None) -> Splits:
    """Load CIFAR-10 from ``data`` and split it with the profile's sizes and seed."""
    return make_splits(
        load_cifar10(data),
        train_size=profile.train_size,
        val_size=profile.val_size,
        test_size=profile.test_size,
        seed=profile.seed,
    )


def _check_size(name: str, size, available: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {size!r}")
    if not config.NUM_CLASSES <= size <= available:
        raise ValueError(
            f"{name} must be between {config.NUM_CLASSES} and {available} (images available), "
            f"got {size}"
        )


def _download_official() -> Path:
    """The official tarball in Keras's cache, downloaded (sha256-checked) if not there yet."""
    import keras  # only here: importing Keras starts a backend, which loading never needs

    target = config.cache_dir() / "datasets" / OFFICIAL_NAME
    try:
        # Keras prints download progress to stdout; keep stdout clean for `data-info --json`.
        with contextlib.redirect_stdout(sys.stderr):
            downloaded = keras.utils.get_file(
                OFFICIAL_NAME,
                OFFICIAL_URL,
                file_hash=KNOWN_ARCHIVES[OFFICIAL_NAME],
                hash_algorithm="sha256",
                cache_dir=str(config.cache_dir()),
            )
    except Exception as error:  # Keras raises a bare Exception when the URL cannot be fetched
        raise DataError(
            f"could not download CIFAR-10 from {OFFICIAL_URL} to {target} ({one_line(error)}); "
            "pass a local copy with --data PATH or set the CIFAR10_DATA environment variable"
        ) from error
    return Path(downloaded)


def _folder_files(folder: Path) -> list[Path]:
    return sorted(file for file in folder.rglob("*") if file.is_file())


class _Budget:
    """Counts the files and bytes a source holds; refuses what no CIFAR-10 copy holds."""

    def __init__(self, source: Path):
        self.source, self.files, self.bytes = source, 0, 0

    def admit(self, name: str, size: int) -> None:
        self.files, self.bytes = self.files + 1, self.bytes + size
        if size > MAX_FILE_BYTES:
            raise DataError(
                f"{self.source}: {name} is {size:,} bytes; no CIFAR-10 file is larger than "
                f"{MAX_FILE_BYTES:,} (an official batch is 31 MB)"
            )
        if self.files > MAX_FILES or self.bytes > MAX_TOTAL_BYTES:
            raise DataError(
                f"{self.source}: more than {MAX_FILES:,} files or {MAX_TOTAL_BYTES:,} bytes; "
                "CIFAR-10 has 60,000 images (about 180 MB)"
            )


def _fingerprint(path: Path) -> tuple[str, bool, str]:
    """(cache key, verified, what was checked) for a folder or an archive."""
    if path.is_dir():
        digest = hashlib.sha256()
        for file in _folder_files(path):
            stat = file.stat()
            relative = file.relative_to(path).as_posix()
            digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest(), False, "not verified: folder"
    digest = fileio.sha256(path)
    known_as = {sha256: name for name, sha256 in KNOWN_ARCHIVES.items()}.get(digest)
    if known_as:
        return digest, True, f"sha256 of {known_as}"
    if path.name in KNOWN_ARCHIVES:
        raise DataError(
            f"{path}: sha256 {digest} does not match the published "
            f"{KNOWN_ARCHIVES[path.name]}; the copy is truncated or corrupted, fetch it again"
        )
    return digest, False, f"not verified: unknown archive, sha256 {digest}"


def _read_files(path: Path) -> dict[str, bytes]:
    """Every regular file below folder or tar archive ``path``: relative POSIX path -> bytes."""
    budget = _Budget(path)
    if path.is_dir():
        files = {}
        for file in _folder_files(path):
            name = file.relative_to(path).as_posix()
            budget.admit(name, file.stat().st_size)
            files[name] = file.read_bytes()
        return files
    try:
        with open(path, "rb") as raw:
            is_gzip = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            # gzip.GzipFile, unlike tarfile's own stream reader, raises on a truncated stream.
            stream = gzip.GzipFile(fileobj=raw) if is_gzip else raw
            files = {}
            with tarfile.open(fileobj=stream, mode="r|") as archive:
                for member in archive:
                    if member.isfile():
                        # Before reading: the header's size is what the read would inflate.
                        budget.admit(member.name, member.size)
                        files[member.name] = archive.extractfile(member).read()
            # Drain to the end (gzip checks its CRC and length only there), in bounded reads.
            while stream.read(1 << 20):
                pass
        return files
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(
            f"{path}: not a readable tar archive, truncated or corrupted ({one_line(error)}); "
            f"{EXPECTED_SOURCES}"
        ) from error


def _decode(path: Path) -> dict[str, np.ndarray]:
    # Path parts per file (str.split: PurePosixPath is slow for 60k names). Hidden files
    # (.DS_Store, macOS ._* twins) are never data.
    files = _read_files(path)
    parts = {
        name: tuple(part for part in name.split("/") if part not in ("", ".")) for name in files
    }
    parts = {name: part for name, part in parts.items() if not any(p.startswith(".") for p in part)}
    if not parts:
        raise DataError(f"{path} holds no files; {EXPECTED_SOURCES}")
    if any(part[-1] == "data_batch_1" for part in parts.values()):
        return _decode_official(files, parts, path)
    return _decode_image_tree(files, parts, path)


# The official batches are pickles of dicts, lists, ints, bytes and numpy arrays; rebuilding
# those arrays needs exactly these globals. Anything else (os.system, ...) is refused.
_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's _reconstruct, whatever module holds it


class _NdarrayName:
    """What a batch pickle gets for ``numpy.ndarray``: usable only as the class argument of
    ``_reconstruct``. Called, ``numpy.ndarray(shape)`` would allocate any shape a pickle
    names, from no data (a 3 KB file claiming 250,000 images)."""


_NDARRAY = _NdarrayName()


def _reconstruct(cls, shape, dtype):
    # An empty array whose data, and so its size, comes from the pickle's own bytes
    # (ndarray.__setstate__ refuses data that does not fill the shape).
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError("_reconstruct of anything but numpy.ndarray")
    return _RECONSTRUCT(np.ndarray, shape, dtype)


_BATCH_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # pickled by numpy 1.x
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # pickled by numpy 2.x
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): np.dtype,
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _BATCH_GLOBALS:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}")
        return _BATCH_GLOBALS[module, name]


def _load_batch(content: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _BatchUnpickler(io.BytesIO(content), encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        TypeError,
        ValueError,
        AttributeError,
        OverflowError,  # e.g. a dtype whose field offsets overflow
        MemoryError,
    ) as error:
        raise DataError(f"{where}: not an official CIFAR-10 batch ({one_line(error)})") from error
    images = batch.get(b"data") if isinstance(batch, dict) else None
    labels = np.asarray(batch.get(b"labels") if isinstance(batch, dict) else None)
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 2
        or images.shape[1:] != (3072,)
        or not 0 < len(images) <= MAX_BATCH_ROWS
        or labels.dtype.kind not in "iu"
        or labels.shape != images.shape[:1]
    ):
        raise DataError(
            f"{where}: expected a dict with b'data' (uint8, N x 3072, N at most "
            f"{MAX_BATCH_ROWS:,}) and b'labels' (N integers)"
        )
    # Each row holds the 1024 red, then green, then blue values of a 32x32 image, row-major.
    return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


def _decode_official(
    files: dict[str, bytes], parts: dict[str, tuple[str, ...]], path: Path
) -> dict[str, np.ndarray]:
    by_basename = {part[-1]: name for name, part in parts.items()}
    arrays = {}
    for split, batch_names in OFFICIAL_BATCHES.items():
        missing = [batch for batch in batch_names if batch not in by_basename]
        if missing:
            raise DataError(f"{path}: official batch(es) {', '.join(missing)} missing")
        batches = [
            _load_batch(files[by_basename[batch]], f"{path} ({by_basename[batch]})")
            for batch in batch_names
        ]
        arrays[f"x_{split}"] = np.concatenate([images for images, _ in batches])
        arrays[f"y_{split}"] = np.concatenate([labels for _, labels in batches])
    return arrays


def _decode_image_tree(
    files: dict[str, bytes], parts: dict[str, tuple[str, ...]], path: Path
) -> dict[str, np.ndarray]:
    tops = {part[0] for part in parts.values()}
    if len(tops) == 1 and tops.isdisjoint(SPLITS) and all(len(p) > 1 for p in parts.values()):
        # One top folder, e.g. cifar10-jpeg/: look below it.
        parts = {name: part[1:] for name, part in parts.items()}
    entries = {split: [] for split in SPLITS}  # (name, label) per split
    for name, part in parts.items():
        if part[0] not in SPLITS:
            continue  # e.g. a README beside train/ and test/
        if len(part) != 3 or part[1] not in config.CLASS_NAMES:
            raise DataError(
                f"{path}: unexpected file {name}; expected {part[0]}/<class>/<image> with "
                f"<class> one of {', '.join(config.CLASS_NAMES)}"
            )
        entries[part[0]].append((name, config.CLASS_NAMES.index(part[1])))
    for split, split_entries in entries.items():
        if len(split_entries) > MAX_IMAGES[split]:
            raise DataError(
                f"{path}: {len(split_entries):,} {split}/ images; CIFAR-10 has at most "
                f"{MAX_IMAGES[split]:,}"
            )
        present = {label for _, label in split_entries}
        missing = [name for label, name in enumerate(config.CLASS_NAMES) if label not in present]
        if len(missing) == config.NUM_CLASSES:
            raise DataError(f"{path}: no {split}/ images; {EXPECTED_SOURCES}")
        if missing:
            raise DataError(f"{path}: {split}/ lacks class folder(s) {', '.join(missing)}")
    arrays = {}
    total = sum(len(split_entries) for split_entries in entries.values())
    # disable=None: a bar on terminals only, not in logs or captured output.
    with tqdm(total=total, desc=f"decoding {path.name}", unit="img", disable=None) as progress:
        for split, split_entries in entries.items():
            split_entries.sort()  # path order, independent of the archive's member order
            images = np.empty((len(split_entries), *config.IMAGE_SHAPE), np.uint8)
            for index, (name, _) in enumerate(split_entries):
                images[index] = _decode_image(files[name], f"{path}: {name}")
                progress.update()
            arrays[f"x_{split}"] = images
            arrays[f"y_{split}"] = np.array([label for _, label in split_entries], np.int64)
    return arrays


def _decode_image(content: bytes, where: str) -> np.ndarray:
    """One 32x32 PNG or JPEG as uint8 RGB (32, 32, 3), converted as the demo converts uploads
    (``imaging.to_rgb``: 16-bit scaled to 8, transparency on white)."""
    # Pillow raises all of these for crafted or damaged files (a PNG text bomb: ValueError).
    broken = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
    try:
        image = Image.open(io.BytesIO(content), formats=imaging.DATA_FORMATS)
    except broken as error:
        raise DataError(f"{where} is not a PNG or JPEG image ({one_line(error)})") from error
    with image:
        if image.size != (32, 32):
            raise DataError(f"{where} is {image.size[0]}x{image.size[1]} pixels; expected 32x32")
        try:
            return np.asarray(imaging.to_rgb(image))
        except broken as error:
            raise DataError(f"{where}: broken image data ({one_line(error)})") from error


def _check_arrays(arrays: dict[str, np.ndarray], where: Path) -> None:
    for split in SPLITS:
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if (
            images.dtype != np.uint8
            or images.shape[1:] != config.IMAGE_SHAPE
            or len(images) == 0
            or labels.dtype != np.int64
            or labels.shape != images.shape[:1]
        ):
            raise DataError(
                f"{where}: {split} images must be uint8 (N, 32, 32, 3) with N > 0 int64 labels, "
                f"got {images.dtype} {images.shape} and {labels.dtype} {labels.shape}"
            )
        outside = labels[(labels < 0) | (labels >= config.NUM_CLASSES)]
        if outside.size:
            raise DataError(
                f"{where}: {split} label {outside[0]} is outside 0..{config.NUM_CLASSES - 1}"
            )


def _load_cache(cache: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(cache, allow_pickle=False) as stored:
            return {key: stored[key] for key in ARRAY_KEYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise DataError(
            f"cached arrays {cache} are unreadable ({one_line(error)}); delete the file to "
            "decode the source again"
        ) from error


def _save_cache(cache: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        with atomic_path(cache) as temporary, open(temporary, "wb") as file:
            np.savez(file, **arrays)
    except OSError as error:  # e.g. a read-only home: the data is fine, only the cache is not
        warnings.warn(f"could not cache CIFAR-10 arrays at {cache}: {error}", stacklevel=3)
