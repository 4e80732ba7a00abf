"""The PyTorch-free .pth reader: the real EfficientNet-Lite files read as torch.load reads them,
both torch.save layouts, and files that would run code or are cut short are refused."""

import io
import os
import pickle
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cifar10_transfer import efficientnet_lite, torch_checkpoint
from cifar10_transfer.torch_checkpoint import CheckpointError

VARIANTS = range(len(efficientnet_lite.VARIANTS))


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return efficientnet_lite.imagenet_checkpoint(0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_imagenet_checkpoints_read_without_torch(variant):
    tensors = torch_checkpoint.read_state_dict(efficientnet_lite.imagenet_checkpoint(variant))
    # Lite1 and Lite2 have 21 blocks (depth 1.1 and 1.2), Lite0 16; Lite2's last stage has
    # 352 filters (320 * width 1.1, rounded to 8).
    count, blocks, last_filters = [(296, 16, 320), (386, 21, 320), (386, 21, 352)][variant]
    assert len(tensors) == count
    assert tensors["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert f"_blocks.{blocks - 1}._depthwise_conv.weight" in tensors
    assert f"_blocks.{blocks}._depthwise_conv.weight" not in tensors
    assert tensors["_conv_head.weight"].shape == (1280, last_filters, 1, 1)
    assert tensors["_fc.weight"].shape == (1000, 1280)
    assert tensors["_bn0.num_batches_tracked"].dtype == np.int64
    assert all(np.isfinite(tensor).all() for tensor in tensors.values())


@pytest.mark.parametrize("variant", VARIANTS)
def test_loaded_tensors_match_torch_load(variant):
    torch = pytest.importorskip("torch")
    path = efficientnet_lite.imagenet_checkpoint(variant)
    reference = torch.load(path, map_location="cpu", weights_only=True)
    tensors = torch_checkpoint.read_state_dict(path)
    assert list(tensors) == list(reference)
    for name, tensor in reference.items():
        np.testing.assert_array_equal(tensors[name], tensor.numpy(), err_msg=name)


def _legacy_parts(path: Path) -> tuple[list[bytes], bytes]:
    """A legacy torch.save file's five pickles and the storage bytes that follow them."""
    data = path.read_bytes()
    pickles, start = [], 0
    for _ in range(5):
        end = next(
            pos for opcode, _, pos in pickletools.genops(data[start:]) if opcode.name == "STOP"
        )
        pickles.append(data[start : start + end + 1])
        start += end + 1
    return pickles, data[start:]


def test_zip_format_checkpoint_reads_the_same(checkpoint, tmp_path):
    """PyTorch >= 1.6 writes a zip: data.pkl plus one file per storage. Rebuild one from the
    legacy file (same pickle, same bytes) and check both read identically."""
    pickles, storage_bytes = _legacy_parts(checkpoint)
    storages = {}  # key -> (dtype, count), as recorded by the state dict's pickle
    torch_checkpoint.RestrictedUnpickler(io.BytesIO(pickles[3]), checkpoint, storages).load()
    zipped = tmp_path / "lite0.pth"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("lite0/data.pkl", pickles[3])
        archive.writestr("lite0/byteorder", "little")
        position = 0
        for key in pickle.loads(pickles[4]):  # the storage order: a plain list of strings
            dtype, count = storages[key]
            start = position + 8  # each storage: int64 element count, then its bytes
            archive.writestr(
                f"lite0/data/{key}", storage_bytes[start : start + count * dtype.itemsize]
            )
            position = start + count * dtype.itemsize
    legacy = torch_checkpoint.read_state_dict(checkpoint)
    from_zip = torch_checkpoint.read_state_dict(zipped)
    assert list(from_zip) == list(legacy)
    for name in legacy:
        np.testing.assert_array_equal(from_zip[name], legacy[name])


class _RunsCode:
    """Pickles into "call this function with these arguments" on load (a classic exploit)."""

    def __init__(self, function, *arguments):
        self.function, self.arguments = function, arguments

    def __reduce__(self):
        return self.function, self.arguments


@pytest.mark.parametrize("layout", ["legacy", "zip"])
@pytest.mark.parametrize("function", [os.system, eval])
def test_malicious_checkpoint_is_refused(tmp_path, layout, function):
    marker = tmp_path / "pwned"
    command = f"touch {marker}" if function is os.system else f"open({str(marker)!r}, 'w')"
    payload = pickle.dumps({"_conv_stem.weight": _RunsCode(function, command)}, protocol=2)
    path = tmp_path / "evil.pth"
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("evil/data.pkl", payload)
    else:
        magic, protocol = torch_checkpoint.LEGACY_MAGIC, torch_checkpoint.LEGACY_PROTOCOL
        header = [magic, protocol, {"little_endian": True}]
        path.write_bytes(b"".join(pickle.dumps(part, protocol=2) for part in header) + payload)
    with pytest.raises(
        CheckpointError, match=rf"refusing to load '\w+\.{function.__name__}'"
    ) as error:
        torch_checkpoint.read_state_dict(path)
    assert str(path) in str(error.value)
    assert not marker.exists()


def test_missing_truncated_and_garbage_files_are_named(checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="missing.pth does not exist"):
        torch_checkpoint.read_state_dict(tmp_path / "missing.pth")
    truncated = tmp_path / "truncated.pth"
    for size in (5_000_000, checkpoint.stat().st_size - 1000):  # in a storage's bytes
        truncated.write_bytes(checkpoint.read_bytes()[:size])
        with pytest.raises(CheckpointError, match=r"truncated.pth: storage \d+ .*truncated"):
            torch_checkpoint.read_state_dict(truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(CheckpointError, match="garbage.pth"):
        torch_checkpoint.read_state_dict(garbage)
