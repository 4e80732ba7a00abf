"""Read a ``.pth`` file's tensors as NumPy arrays without PyTorch, safely.

``torch.load`` unpickles whatever the file says, so a weights file can run code. ``read_state_dict``
reads both ``torch.save`` layouts (legacy, and the zip archive of PyTorch >= 1.6) with a restricted
unpickler that resolves only OrderedDict, tensors and storages: anything else is refused before it
can be called, and no tensor may reach outside the bytes the file holds.
"""

from __future__ import annotations

import collections
import math
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

# torch.save's legacy (pre-1.6) format: pickles of this magic number, the protocol version and
# system info, then the state dict, then the storage keys, then each storage's raw bytes.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
# Storage classes named in checkpoints, read as little-endian numpy dtypes.
_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class CheckpointError(ValueError):
    """A ``.pth`` file that is missing, corrupt, unsafe, or not a state dict of tensors."""


class _Tensor(NamedTuple):
    """What ``torch._utils._rebuild_tensor_v2`` would rebuild: a strided view of a storage."""

    storage: str
    offset: int
    shape: tuple
    strides: tuple


def _rebuild_tensor(storage, offset, shape, strides, *_):
    # Stands in for torch._utils._rebuild_tensor_v2; the view is cut out once storages are read.
    return _Tensor(storage, offset, tuple(shape), tuple(strides))


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a state dict of tensors and nothing else: any other global is refused."""

    def __init__(self, file, path: Path, storages: dict):
        super().__init__(file)
        self.path = path
        self.storages = storages  # key -> (dtype, element count), filled by persistent_load
        self.file_size = path.stat().st_size  # no storage can be larger than the file

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return np.dtype(_STORAGE_DTYPES[name])
        raise CheckpointError(
            f"{self.path}: refusing to load '{module}.{name}'; a weights file may only hold "
            "tensors (it could run code: do not load it with torch.load either)"
        )

    def persistent_load(self, pid):
        # Legacy: ("storage", dtype, key, device, count, view); zip: the same without view.
        if not (
            isinstance(pid, tuple)
            and len(pid) in (5, 6)
            and pid[0] == "storage"
            and isinstance(pid[1], np.dtype)
            and isinstance(pid[4], int)
            and pid[4] >= 0
            and (len(pid) == 5 or pid[5] is None)
        ):
            raise CheckpointError(f"{self.path}: unsupported storage record {pid!r}")
        dtype, key, count = pid[1], str(pid[2]), pid[4]
        if count * dtype.itemsize > self.file_size:
            raise CheckpointError(
                f"{self.path}: storage {key} is larger than the file (truncated?)"
            )
        self.storages[key] = (dtype, count)
        return key


def _read_legacy(file, path: Path, storages: dict):
    """The state dict and storage bytes of a legacy ``torch.save`` file."""
    if RestrictedUnpickler(file, path, storages).load() != LEGACY_MAGIC:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (no zip archive, wrong magic)")
    if RestrictedUnpickler(file, path, storages).load() != LEGACY_PROTOCOL:
        raise CheckpointError(f"{path}: unsupported legacy PyTorch checkpoint protocol")
    system = RestrictedUnpickler(file, path, storages).load()
    if not (isinstance(system, dict) and system.get("little_endian")):
        raise CheckpointError(f"{path}: only little-endian checkpoints are supported")
    state = RestrictedUnpickler(file, path, storages).load()
    data = {}
    for key in RestrictedUnpickler(file, path, storages).load():
        dtype, count = storages[key]
        (stored_count,) = struct.unpack("<q", file.read(8))
        buffer = file.read(count * dtype.itemsize)
        if stored_count != count or len(buffer) != count * dtype.itemsize:
            raise CheckpointError(f"{path}: storage {key} is truncated or inconsistent")
        data[key] = np.frombuffer(buffer, dtype)
    return state, data


def _read_zip(path: Path, storages: dict):
    """The state dict and storage bytes of a zip ``torch.save`` file (PyTorch >= 1.6)."""
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: expected one data.pkl in the archive, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"  # absent in files from PyTorch < 1.10: little-endian
        if byteorder in archive.namelist() and archive.read(byteorder) != b"little":
            raise CheckpointError(f"{path}: only little-endian checkpoints are supported")
        with archive.open(pickles[0]) as file:
            state = RestrictedUnpickler(file, path, storages).load()
        data = {}
        for key, (dtype, count) in storages.items():
            name = f"{prefix}data/{key}"
            if archive.getinfo(name).file_size != count * dtype.itemsize:
                raise CheckpointError(f"{path}: storage {key} is truncated or inconsistent")
            data[key] = np.frombuffer(archive.read(name), dtype)
    return state, data


def _view(tensor: _Tensor, data: dict, path: Path, name: str) -> np.ndarray:
    """Cut ``tensor`` out of its storage, refusing views that reach outside it."""
    storage = data.get(tensor.storage)
    shape, strides, offset = tensor.shape, tensor.strides, tensor.offset
    numbers = (offset, *shape, *strides)
    if (
        storage is None
        or len(shape) != len(strides)
        or not all(isinstance(n, int) and n >= 0 for n in numbers)
    ):
        raise CheckpointError(f"{path}: tensor {name} has an invalid layout")
    count = math.prod(shape)
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
    if count > storage.size or (count > 0 and last >= storage.size):
        raise CheckpointError(f"{path}: tensor {name} reaches outside its storage")
    itemsize = storage.dtype.itemsize
    # A stride along a dimension of size 0 or 1 is never used, and may be anything in the file
    # (a crafted one overflows as_strided's byte strides): use 0.
    strides = [s if n > 1 else 0 for n, s in zip(shape, strides, strict=True)]
    try:
        view = np.lib.stride_tricks.as_strided(
            storage[offset:], shape, [s * itemsize for s in strides], writeable=False
        )
    except (OverflowError, ValueError) as error:
        raise CheckpointError(f"{path}: tensor {name} has an invalid layout ({error})") from None
    return np.array(view)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``torch.save``'d state dict as numpy arrays, without PyTorch and without
    executing anything from the file (only tensors and OrderedDict may be unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    storages: dict = {}
    try:
        if zipfile.is_zipfile(path):
            state, data = _read_zip(path, storages)
        else:
            with open(path, "rb") as file:
                state, data = _read_legacy(file, path, storages)
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {error}") from error
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, OverflowError) as error:
        # Well-formed pickles of the wrong objects (a corrupt or foreign file).
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {error}") from error
    if not (
        isinstance(state, dict)
        and all(isinstance(k, str) and isinstance(v, _Tensor) for k, v in state.items())
    ):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return {name: _view(tensor, data, path, name) for name, tensor in state.items()}
