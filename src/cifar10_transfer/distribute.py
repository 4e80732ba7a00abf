"""Device placement for training: one device, or data-parallel over several."""

from __future__ import annotations

import contextlib
import dataclasses


@dataclasses.dataclass
class SingleDevice:
    device_count: int = 1

    def scope(self):
        return contextlib.nullcontext()


def setup(devices=None, batch_size: int | None = None):
    """Return an object with ``scope()`` and ``device_count`` for ``devices`` (None/1)."""
    if devices not in (None, 1, "1"):
        raise ValueError(f"devices={devices!r}: only single-device training is available")
    return SingleDevice()
