"""Data-parallel training over several devices, with Keras's own engines.

``setup(devices, batch_size)`` returns a ``Placement``; models are built, compiled, fitted
and used for prediction inside ``placement.scope()``. With one device nothing changes. With
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
change ``batch_size`` itself, follow the linear scaling rule (Goyal et al., 2017) and
multiply the learning rates by new/old batch size: ``scaled_learning_rates(profile,
batch_size)`` does this and is opt-in, since for Adam the rule is a starting point, not a
guarantee.

One machine only: Keras's multi-host engine (``keras.distribution.initialize`` and the
``KERAS_DISTRIBUTION_*`` variables) needs every process to feed its own slice of the data
and to gather predictions across hosts, which the NumPy-array training loop here does not,
so ``setup`` refuses to start when those variables are set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os

import keras

from cifar10_transfer import config

# The variables keras.distribution.initialize() reads to join a multi-host cluster.
MULTI_HOST_VARIABLES = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a run trains: ``engine`` is None (one device), a Keras ``DataParallel`` (JAX)
    or a ``tf.distribute.MirroredStrategy`` (TensorFlow)."""

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
    if devices in (None, 1, "1"):
        return Placement()
    if backend not in ("jax", "tensorflow"):
        raise ValueError(
            f"devices={devices!r}: data-parallel training needs "
            f"KERAS_BACKEND=jax or tensorflow, not {backend}"
        )
    multi_host = [name for name in MULTI_HOST_VARIABLES if name in os.environ]
    if multi_host:
        raise ValueError(
            f"{', '.join(multi_host)} set: training on several machines is not "
            "supported; use the devices of one machine (unset these variables)"
        )
    available = keras.distribution.list_devices()
    count = _device_count(devices, available)
    if batch_size % count:
        raise ValueError(
            f"batch_size={batch_size} does not split evenly across {count} devices; "
            f"use a multiple of {count} (batch_size is the global batch)"
        )
    if count == 1:
        return Placement()
    if backend == "jax":
        return Placement(count, keras.distribution.DataParallel(devices=available[:count]))
    return Placement(count, _mirrored_strategy(available[0].split(":")[0].upper(), count))


@functools.cache
def _mirrored_strategy(device_type: str, count: int):
    """One MirroredStrategy per device set and process: a second one over the same devices
    starts from the same collective keys, and its all-reduces clash with the first's."""
    import tensorflow as tf  # TensorFlow only here: JAX-only machines need not install it

    names = [device.name for device in tf.config.list_logical_devices(device_type)[:count]]
    return tf.distribute.MirroredStrategy(devices=names)


def scaled_learning_rates(profile: config.Profile, batch_size: int) -> config.Profile:
    """``profile`` with global ``batch_size`` and its transfer learning rates scaled by
    ``batch_size / profile.batch_size`` (linear scaling rule; baselines keep theirs)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    factor = batch_size / profile.batch_size
    return dataclasses.replace(
        profile,
        batch_size=batch_size,
        head_learning_rate=profile.head_learning_rate * factor,
        finetune_learning_rate=profile.finetune_learning_rate * factor,
    )
