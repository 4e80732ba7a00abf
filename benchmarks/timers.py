"""Timing training: a Keras callback that records every step's and epoch's end, and one timed
fine-tuning epoch (throughput.py, frozen_share.py)."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from cifar10_transfer import training


class StepTimer(keras.callbacks.Callback):
    """Records ``time.perf_counter()`` at the start of training and at each step's end."""

    def on_train_begin(self, logs=None):
        self.train_begin = time.perf_counter()
        self.step_ends = []
        self.epoch_ends = []

    def on_train_batch_end(self, batch, logs=None):
        # Reading the loss waits for the step to finish (JAX and GPUs dispatch asynchronously).
        float(logs["loss"])
        self.step_ends.append(time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends.append(time.perf_counter())

    def require_steps(self, steps: int) -> None:
        """A ValueError unless ``steps`` steps ran: a non-finite loss stops training early
        (TerminateOnNaN), and a timing of the steps that ran would be read as of them all."""
        if len(self.step_ends) < steps:
            raise ValueError(
                f"training stopped after {len(self.step_ends)} of {steps} steps (a non-finite "
                "loss ends it): no timing; expected a finite loss, e.g. a lower learning rate"
            )

    def first_step_s(self) -> float:
        """Start of training to the end of step 1: compilation plus one step."""
        return self.step_ends[0] - self.train_begin

    def median_step_s(self, warmup: int = 1) -> float:
        """Median duration of the steps after the first ``warmup`` (>= 1) steps."""
        return float(np.median(np.diff(self.step_ends[warmup - 1 :])))

    def median_epoch_s(self) -> float:
        """Median duration of the epochs after the first (which includes compilation)."""
        return float(np.median(np.diff(self.epoch_ends)))

    def compile_s(self) -> float:
        """First step's overhead over a typical step: the time spent compiling."""
        return max(self.first_step_s() - self.median_step_s(), 0.0)


def time_fine_tuning(model, profile, images, labels, steps: int) -> StepTimer:
    """Fit ``model`` for one epoch of ``profile``'s fine-tuning stage over ``images`` (a
    constant rate), timing every step; validation (one batch) and checkpointing come after
    the timing. A ValueError unless all ``steps`` steps ran."""
    timer = StepTimer()
    stage = training.Stage.of(profile, "finetune")
    stage = dataclasses.replace(stage, epochs=1, schedule="constant", patience=1)
    model.compile(**training.compile_arguments(stage, training.steps_per_epoch(len(images), stage)))
    with tempfile.TemporaryDirectory() as out_dir:
        training.fit(
            model,
            images,
            labels,
            images[: stage.batch_size],
            labels[: stage.batch_size],
            stage,
            training.Job(Path(out_dir), callbacks=(timer,)),
        )
    timer.require_steps(steps)
    return timer
