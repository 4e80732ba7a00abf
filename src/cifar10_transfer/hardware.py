"""What this machine has, and what follows from it: the devices Keras sees, the GPU's
compute capability, the dtype policy "auto" picks, and the guard that stops a GPU profile
from quietly spending hours on a CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import re
import subprocess
from pathlib import Path

from cifar10_transfer import config, fileio


def list_devices() -> list[str]:
    """``keras.distribution.list_devices()``, also on the torch backend, for which Keras has no
    distribution library (the call fails there): one "gpu:N" per CUDA device, else ["cpu:0"]."""
    import keras  # here, not at the top: make reproduce of a CPU profile never starts TF

    if keras.backend.backend() != "torch":
        return keras.distribution.list_devices()
    import torch  # torch backend only: Keras offers no device listing for it

    count = torch.cuda.device_count()
    return [f"gpu:{index}" for index in range(count)] if count else ["cpu:0"]


# NVIDIA GPUs have bfloat16 tensor cores from compute capability 8.0 (Ampere: A100) on. Below
# that (a T4 is 7.5, a V100 7.0) bfloat16 runs at float32 speed with extra casts, while
# float16 has tensor cores; float16's narrow range needs loss scaling, which Keras adds
# itself (LossScaleOptimizer) when a model is compiled under "mixed_float16".
BFLOAT16_MIN_CAPABILITY = (8, 0)


@functools.cache
def gpu_info() -> dict | None:
    """Name and compute capability of the first NVIDIA GPU (from nvidia-smi, whatever the
    backend); None when Keras sees no GPU. The capability is None when nvidia-smi is missing."""
    if not any(d.startswith("gpu") for d in list_devices()):
        return None
    try:
        name, capability = (part.strip() for part in _nvidia_smi("name,compute_cap").split(","))
        major, minor = capability.split(".")
        return {"name": name, "compute_capability": (int(major), int(minor))}
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return {"name": "gpu", "compute_capability": None}


def _nvidia_smi(query: str) -> str:
    """nvidia-smi's answer to ``--query-gpu=query`` for the first GPU (CSV, no header or
    units); OSError or SubprocessError without one."""
    result = subprocess.run(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return result.stdout.splitlines()[0]


def auto_precision(gpu: dict | None) -> tuple[str, str]:
    """The dtype policy "auto" picks for ``gpu`` (``gpu_info()``), and why."""
    if gpu is None:
        return "float32", "no GPU: mixed precision does not speed up a CPU"
    capability = gpu["compute_capability"]
    if capability is None:
        return "mixed_float16", f"{gpu['name']}: compute capability unknown, float16 runs on all"
    shown = ".".join(map(str, capability))
    if tuple(capability) >= BFLOAT16_MIN_CAPABILITY:
        return "mixed_bfloat16", f"{gpu['name']}: compute capability {shown} has bfloat16 units"
    return (
        "mixed_float16",
        f"{gpu['name']}: compute capability {shown} < 8.0 has no bfloat16 units; "
        "float16 with loss scaling",
    )


def configure_precision(precision: str = "auto") -> str:
    """Set the global dtype policy and return it; "auto" follows ``auto_precision``."""
    if precision not in config.PRECISIONS:
        choices = ", ".join(config.PRECISIONS)
        raise ValueError(f"precision must be one of {choices}, got {precision!r}")
    if precision == "auto":
        precision, reason = auto_precision(gpu_info())
        print(f"precision: {precision} (auto; {reason})", flush=True)
    import keras

    keras.config.set_dtype_policy(precision)
    return precision


def device_name() -> str:
    gpu = gpu_info()
    if gpu is not None:
        return gpu["name"]
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


# ---------------------------------------------------------------- CPU guard

# Where the CPU cost model of check_accelerator finds its measured throughput.
CPU_MEASUREMENTS = config.CHECKOUT / "benchmarks" / "results"
# A training step costs about three forward passes (forward, then the gradients of the
# activations and of the weights), so a forward pass about a third of a step.
TRAINING_PASSES = 3
FORWARD_COST = 1 / TRAINING_PASSES


def forward_passes(profile: config.Profile) -> dict:
    """Images through a model per stage of ``profile``, in forward passes (a training step
    counts TRAINING_PASSES), every epoch run (no early stop). ``baseline``: each from-scratch
    model trains and validates every epoch, then predicts the test set; ``head``: the frozen
    backbone once per image (cached features); ``head_training``: the head alone on those
    features; ``finetune``: trains and validates every epoch, then predicts the test images
    twice (flip TTA)."""
    val = profile.val_size
    train = profile.train_size or config.TRAIN_IMAGES - val
    test = profile.test_size or config.TEST_IMAGES
    return {
        "baseline": profile.baseline_epochs * (TRAINING_PASSES * train + val) + test,
        "head": train + val + test,
        "head_training": profile.head_epochs * (TRAINING_PASSES * train + val),
        "finetune": profile.finetune_epochs * (TRAINING_PASSES * train + val) + 2 * test,
    }


def has_accelerator() -> bool:
    return any(not device.startswith("cpu") for device in list_devices())


AUTO_PROFILES = {"cpu": "quick", "gpu": "paper"}  # profile="auto": the design's on a GPU


def choose_profile(name: str = "auto") -> tuple[str, str]:
    """``auto``: ``quick`` on a CPU, ``paper`` (the design's ResNet-50 on a 10k subset) where
    a GPU is found; any other profile name as it is. Returns (profile name, why)."""
    if name != "auto":
        config.profile(name)  # an unknown name fails here, with the known ones
        return name, "chosen by name"
    if has_accelerator():
        return AUTO_PROFILES["gpu"], f"auto: a GPU was found ({device_name()})"
    return AUTO_PROFILES["cpu"], "auto: no GPU found, so the CPU profile"


def cpu_throughput(backbone: str, results_dir: Path = CPU_MEASUREMENTS) -> dict | None:
    """The fastest CPU training throughput of ``backbone`` that benchmarks/throughput.py (alone
    or within compare.py) wrote to ``results_dir``; None without one.

    Fastest per pixel, because other work on a CPU only ever slows a measurement down.
    """
    best = None
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            result = fileio.read_json(path)
        except (OSError, ValueError):
            continue
        if result.get("benchmark") == "compare":
            result = result.get("ours") or {}
        if (
            result.get("benchmark") != "throughput"
            or result.get("backbone") != backbone
            or not str(result.get("device", "")).startswith("cpu")
        ):
            continue
        pixels_per_second = result["images_per_second"] * result["image_size"] ** 2
        if best is None or pixels_per_second > best["pixels_per_second"]:
            cores = re.search(r"(\d+) cores", result["device"])
            best = {
                "images_per_second": result["images_per_second"],
                "image_size": result["image_size"],
                "pixels_per_second": pixels_per_second,
                "device": result["device"],
                "cores": int(cores.group(1)) if cores else None,
                "file": path.name,
            }
    return best


def cpu_seconds_estimate(profile: config.Profile, measurement: dict) -> float:
    """Estimated CPU seconds of ``profile``'s head and fine-tuning stages (a cost model, not a
    measurement).

    Work, in training-step images: the head stage's backbone pass and fine-tuning's
    ``forward_passes`` (the head's own epochs are negligible), a forward pass counting
    FORWARD_COST of a step, every layer training. Cost per image: 1 / the measured images/s,
    times (image_size / measured size)^2 since a convolutional network's work grows with its
    input's pixels, times measured cores / this machine's cores.
    """
    passes = forward_passes(profile)
    steps = (passes["head"] + passes["finetune"]) * FORWARD_COST
    seconds_per_image = 1 / measurement["images_per_second"]
    seconds_per_image *= (profile.image_size / measurement["image_size"]) ** 2
    if measurement["cores"]:
        seconds_per_image *= measurement["cores"] / (os.cpu_count() or 1)
    return steps * seconds_per_image


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:,.0f} hours" if seconds >= 7200 else f"{seconds / 60:,.0f} minutes"


def check_accelerator(profile: config.Profile, results_dir: Path = CPU_MEASUREMENTS) -> None:
    """Refuse to start a GPU profile (``needs_accelerator``) on a CPU, saying how long it would
    take there; with ``allow_cpu`` print that as a warning and go on."""
    if not profile.needs_accelerator or has_accelerator():
        return
    measurement = cpu_throughput(profile.backbone, results_dir)
    if measurement is None:
        estimate = (
            f"an unknown time (no CPU throughput of {profile.backbone} in {results_dir} to "
            "estimate it from: benchmarks/throughput.py measures one)"
        )
    else:
        estimate = (
            f"about {_duration(cpu_seconds_estimate(profile, measurement))} (an estimate from "
            f"{measurement['images_per_second']:.1f} images/s of {profile.backbone} at "
            f"{measurement['image_size']} px measured on {measurement['device']}, "
            f"{measurement['file']}, scaled to {profile.image_size} px"
            + (f" and {os.cpu_count()} cores)" if measurement["cores"] else ")")
        )
    situation = (
        f"profile {profile.name!r} needs a GPU (needs_accelerator=True) and no GPU was found; "
        f"on this CPU its head and fine-tuning stages would take {estimate}"
    )
    if profile.allow_cpu:
        print(f"warning: {situation}; training on the CPU anyway (allow_cpu)", flush=True)
        return
    raise ValueError(
        f"{situation}. Train on a GPU (make GPU=1 installs the CUDA builds), or pass "
        "--allow-cpu (allow_cpu=True) to train on the CPU anyway"
    )


# ---------------------------------------------------------------- a micro-batch that fits

# benchmarks/memory.py's estimates of one training step per micro-batch (committed with the
# project; beside the results when it is installed from a clone, as in Colab).
MEMORY_ESTIMATES = config.COMMITTED_RESULTS.parent / "benchmarks" / "results"
MEMORY_HEADROOM = 0.8  # use at most this share of the GPU's memory (the rest: the framework)


def gpu_memory_bytes() -> int | None:
    """Total memory of the first NVIDIA GPU (nvidia-smi, whatever the backend); None without."""
    try:
        return int(float(_nvidia_smi("memory.total"))) * 2**20  # MiB
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None


def step_memory_model(backbone: str, results_dir: Path = MEMORY_ESTIMATES) -> dict | None:
    """Bytes of one training step as fixed + per_image x micro-batch, fitted to the largest
    and smallest micro-batch of ``backbone``'s committed memory estimate (float32, every
    layer training, at the estimate's image size); None without one."""
    for path in sorted(Path(results_dir).glob(f"memory-{backbone}-*.json")):
        try:
            result = fileio.read_json(path)
            steps = sorted(result["steps"], key=lambda step: step["micro_batch_size"])
            small, large = steps[0], steps[-1]
            per_image = (large["peak_bytes"] - small["peak_bytes"]) / (
                large["micro_batch_size"] - small["micro_batch_size"]
            )
            fixed = small["peak_bytes"] - per_image * small["micro_batch_size"]
        except (OSError, ValueError, KeyError, TypeError, IndexError, ZeroDivisionError):
            continue
        return {
            "fixed": fixed,
            "per_image": per_image,
            "image_size": result["image_size"],
            "file": path.name,
        }
    return None


def fit_micro_batch(profile: config.Profile, memory_bytes: int | None = None) -> config.Profile:
    """``profile`` with the fewest ``gradient_accumulation_steps`` whose micro-batch fits the
    GPU's memory (``memory_bytes``, default: nvidia-smi's), the effective batch unchanged, and
    a line saying so. Unchanged on a CPU, when the profile sets its own steps, or without a
    memory estimate of its backbone. Activations grow with the input's pixels, so the
    estimate's per-image bytes scale by (image_size / its image size)^2."""
    if profile.gradient_accumulation_steps != 1 or not has_accelerator():
        return profile
    memory_bytes = memory_bytes or gpu_memory_bytes()
    model = step_memory_model(profile.backbone)
    if memory_bytes is None or model is None:
        return profile
    per_image = model["per_image"] * (profile.image_size / model["image_size"]) ** 2
    budget = MEMORY_HEADROOM * memory_bytes

    def needed(steps: int) -> float:
        return model["fixed"] + per_image * profile.batch_size / steps

    steps = 1
    while needed(steps) > budget and profile.batch_size % (steps * 2) == 0:
        steps *= 2
    if steps == 1:
        return profile
    print(
        f"micro-batch: a batch of {profile.batch_size} needs about {needed(1) / 2**30:.1f} GiB "
        f"for one training step ({model['file']}, scaled to {profile.image_size} px) and this "
        f"GPU has {memory_bytes / 2**30:.1f} GiB; training {steps} micro-batches of "
        f"{profile.batch_size // steps} per update (gradient_accumulation_steps={steps}, about "
        f"{needed(steps) / 2**30:.1f} GiB), the same effective batch",
        flush=True,
    )
    return dataclasses.replace(profile, gradient_accumulation_steps=steps)
