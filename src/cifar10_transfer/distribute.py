"""Data-parallel training over several devices, with Keras's own engines.

``setup(devices, batch_size)`` returns a ``Placement``: the one object training talks to.
Models are built, compiled, fitted and used for prediction inside ``placement.scope()``;
``placement.local`` gives this process's rows, ``placement.predict`` all predictions,
``placement.is_chief`` says whether this process writes the run folder, and
``placement.finish`` tidies up and waits for the others. With one device nothing changes. With
N devices every device holds a full copy of the weights, each global batch is split into N
equal slices along the batch axis, and the gradients are averaged across devices before
each step, so a run computes what one device would, only faster:

- JAX: ``keras.distribution.DataParallel`` over the first N devices
  (``keras.distribution.list_devices()``); the torch backend has no Keras engine for this.
- TensorFlow: ``tf.distribute.MirroredStrategy`` (Keras's distribution API does not cover
  TensorFlow), so the weights are ``MirroredVariable``s.

Batch size: ``batch_size`` is global (all devices together) and must be a multiple of N.
Every split size (train, val, test) must be a multiple of N as well, because the last,
partial batch of a split is split across the devices too: JAX cannot shard it otherwise,
and MirroredStrategy would weight its unequal slices wrongly.

Learning rate: the profile learning rates are tuned for the profile's global batch size.
Changing the number of devices keeps the global batch and so needs no change. When you
change ``batch_size`` itself, the linear scaling rule (Goyal et al., 2017: multiply the
learning rates by new/old batch size) is a starting point for Adam, not a guarantee.

Several machines (JAX only): one process per machine, each started with Keras's
``KERAS_DISTRIBUTION_JOB_ADDRESSES`` (the coordinator, process 0, first),
``KERAS_DISTRIBUTION_NUM_PROCESSES`` and ``KERAS_DISTRIBUTION_PROCESS_ID``. ``setup`` joins
the cluster (``keras.distribution.initialize``) before anything touches a JAX device, and
``DataParallel`` spans every device of every machine. Each process feeds its own slice of
every split (``Placement.local``) with a per-process batch of ``batch_size / processes``;
``Placement.predict`` gives every process all the predictions; only the chief (process 0)
writes the run folder (``is_chief``), while the others keep their Keras backup (for
``resume``) in ``<run folder>.process<N>``. Fine-tuning loads the head run's model,
so for it the runs folder must be one that every machine sees (a shared filesystem).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
from pathlib import Path

import keras
import numpy as np

from cifar10_transfer import hardware

# The variables keras.distribution.initialize() reads to join a multi-host cluster.
MULTI_HOST_VARIABLES = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)


def process_count() -> int:
    """Processes (machines) training together; 1 without the multi-host variables."""
    return int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1"))


def process_index() -> int:
    return int(os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID", "0"))


def is_chief() -> bool:
    """Whether this process writes files (process 0; always true on one machine)."""
    return process_index() == 0


def process_slice(array):
    """This process's rows of ``array``: every process_count()-th row from process_index().

    Strided rather than contiguous, so that without shuffling global batch k holds the same
    rows as batch k on one machine.
    """
    return array[process_index() :: process_count()]


def _interleave(parts: np.ndarray) -> np.ndarray:
    """(processes, rows, ...) process slices -> rows in their original order."""
    return parts.swapaxes(0, 1).reshape(-1, *parts.shape[2:])


def gather(local: np.ndarray) -> np.ndarray:
    """Undo ``process_slice``: every process gets all rows, in the original order."""
    if process_count() == 1:
        return np.asarray(local)
    from jax.experimental import multihost_utils  # JAX only here

    return _interleave(multihost_utils.process_allgather(np.asarray(local)))


def on_every_process(flag: bool) -> bool:
    """True when ``flag`` is true on every process, so that all processes take the same
    branch (e.g. "a cached file exists") and none waits forever for the others."""
    return bool(gather(np.array([flag])).all())


def barrier(name: str) -> None:
    """Wait until every process reaches this point (e.g. the chief has written a file)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def worker_dir(out_dir: Path) -> Path:
    """Where a non-chief process keeps its Keras working files (backup, checkpoint)."""
    return out_dir.with_name(f"{out_dir.name}.process{process_index()}")


@functools.cache
def _join_cluster() -> None:
    """keras.distribution.initialize() once per process, before JAX lists its devices."""
    missing = [name for name in MULTI_HOST_VARIABLES if name not in os.environ]
    if missing:
        raise ValueError(
            f"{', '.join(missing)} not set: training on several machines needs all of "
            f"{', '.join(MULTI_HOST_VARIABLES)}"
        )
    count, index = process_count(), process_index()
    if count < 1 or not 0 <= index < count:
        raise ValueError(
            f"KERAS_DISTRIBUTION_PROCESS_ID={index} must be in 0..{count - 1} "
            f"(KERAS_DISTRIBUTION_NUM_PROCESSES={count})"
        )
    keras.distribution.initialize()


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a run trains: ``engine`` is None (one device), a Keras ``DataParallel`` (JAX)
    or a ``tf.distribute.MirroredStrategy`` (TensorFlow). On one machine every method but
    ``scope`` is the identity, so training code reads as single-device code."""

    device_count: int = 1
    engine: object = None

    def scope(self):
        return contextlib.nullcontext() if self.engine is None else self.engine.scope()

    def check_splits(self, splits) -> None:
        """Raise ValueError unless every split's last batch also splits evenly."""
        sizes = {
            f"{name}_size": len(getattr(splits, f"x_{name}")) for name in ("train", "val", "test")
        }
        uneven = {name: size for name, size in sizes.items() if size % self.device_count}
        if uneven:
            raise ValueError(
                f"{', '.join(f'{name}={size}' for name, size in uneven.items())}: with "
                f"{self.device_count} devices every split size must be a multiple of "
                f"{self.device_count}, so that its last batch splits evenly across the devices"
            )

    @property
    def is_chief(self) -> bool:
        return is_chief()

    def local_batch(self, batch_size: int) -> int:
        return batch_size // process_count()

    def agree(self, flag: bool) -> bool:
        return on_every_process(flag)

    def predict(self, model, images, batch_size: int) -> np.ndarray:
        return predict(model, images, batch_size)

    def predictor(self, model) -> Predictor:
        return Predictor(model)

    def work_dir(self, out_dir: Path) -> Path:
        """The run folder for the chief; a process's own working folder for the others."""
        return out_dir if is_chief() else worker_dir(out_dir)

    def finish(self, work_dir: Path) -> None:
        """Remove a non-chief's working folder; wait until the chief has written the run
        folder (fine-tuning loads the head run's model next)."""
        if not is_chief():
            shutil.rmtree(work_dir)
        barrier("run folder written")


def predict(model, images, batch_size: int) -> np.ndarray:
    """``model.predict(images)`` inside a Placement's scope (``batch_size`` global); on
    several machines every process predicts its process_slice and gets all rows back."""
    if process_count() == 1:
        return model.predict(images, batch_size=batch_size, verbose=0)
    # Keras's predict cannot fetch outputs that span other machines' devices, so run
    # the model as one jitted function over the global batch and gather its output.
    import jax
    from jax.experimental import multihost_utils

    def forward(trainable, non_trainable, batch):
        return model.stateless_call(trainable, non_trainable, batch, training=False)[0]

    forward = jax.jit(forward)
    trainable = [variable.value for variable in model.trainable_variables]
    non_trainable = [variable.value for variable in model.non_trainable_variables]
    local_images, local_batch_size = process_slice(images), batch_size // process_count()
    parts = []
    for start in range(0, len(local_images), local_batch_size):
        local_batch = local_images[start : start + local_batch_size]
        layout = keras.distribution.distribution().get_data_layout(local_batch.shape).backend_layout
        batch = jax.make_array_from_process_local_data(layout, local_batch)
        outputs = multihost_utils.process_allgather(
            forward(trainable, non_trainable, batch), tiled=True
        )
        # The global batch is process 0's local batch, then process 1's, ...
        parts.append(outputs.reshape(process_count(), -1, *outputs.shape[1:]))
    return _interleave(np.concatenate(parts, axis=1))


class Predictor:
    """``model`` with ``predict`` as above, for code that calls ``model.predict`` (TTA)."""

    def __init__(self, model):
        self.model = model

    def predict(self, images, batch_size: int, verbose: int = 0) -> np.ndarray:
        return predict(self.model, images, batch_size)


def _device_count(devices, available: list[str]) -> int:
    if str(devices) == "all":
        return len(available)
    try:
        count = int(str(devices))
    except ValueError:
        raise ValueError(f"devices must be 'all' or a whole number, got {devices!r}") from None
    if count < 1:
        raise ValueError(f"devices must be at least 1, got {count}")
    if count > len(available):
        raise ValueError(
            f"devices={count}, but only {len(available)} device(s) are available: "
            f"{', '.join(available)}"
        )
    return count


def setup(devices, batch_size: int) -> Placement:
    """Check ``devices`` (None or 1: one device, N, or "all") against ``batch_size`` (global)
    and return the Placement to train under; raise ValueError before any training."""
    backend = keras.backend.backend()
    if any(name in os.environ for name in MULTI_HOST_VARIABLES):
        if backend != "jax":
            raise ValueError(
                f"{', '.join(MULTI_HOST_VARIABLES)} set: training on several machines "
                f"needs KERAS_BACKEND=jax, not {backend}"
            )
        if str(devices) != "all":
            raise ValueError(
                f"devices={devices!r}: on several machines use devices='all' "
                "(every device of every machine)"
            )
        _join_cluster()
    elif devices in (None, 1, "1"):
        return Placement()
    elif backend not in ("jax", "tensorflow"):
        raise ValueError(
            f"devices={devices!r}: data-parallel training needs "
            f"KERAS_BACKEND=jax or tensorflow, not {backend}"
        )
    available = hardware.list_devices()
    count = _device_count(devices, available)
    if batch_size % count:
        raise ValueError(
            f"batch_size={batch_size} does not split evenly across {count} devices; "
            f"use a multiple of {count} (batch_size is the global batch)"
        )
    if count == 1:
        return Placement()
    if backend == "jax":
        # No auto-sharding: with NumPy arrays each process feeds its own process_slice.
        engine = keras.distribution.DataParallel(
            devices=available[:count], auto_shard_dataset=False
        )
        return Placement(count, engine)
    return Placement(count, _mirrored_strategy(available[0].split(":")[0].upper(), count))


@functools.cache
def _mirrored_strategy(device_type: str, count: int):
    """One MirroredStrategy per device set and process: a second one over the same devices
    starts from the same collective keys, and its all-reduces clash with the first's."""
    import tensorflow as tf  # TensorFlow only here: JAX-only machines need not install it

    names = [device.name for device in tf.config.list_logical_devices(device_type)[:count]]
    return tf.distribute.MirroredStrategy(devices=names)
