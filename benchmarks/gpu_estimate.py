"""Minutes per notebook on a Colab T4, estimated until the GPU suite measures them.

No GPU runs in this project's CI, so the README's Colab table needs an estimate for the
GPU profiles. This script counts the floating-point work each notebook does under a profile
(multiply-adds of every Conv2D, DepthwiseConv2D and Dense layer of our own models, times the
images and epochs the profile trains and evaluates) and divides it by a T4's effective rate.

The rate is calibrated on one published figure rather than the T4's peak: NVIDIA's ResNet-50
v1.5 mixed-precision inference throughput on a T4, 1,198 images/s at batch 256
(NVIDIA/DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/README.md), times
the FLOPs this script counts for our ResNet-50 at 224 px. A training step counts as three
forward passes (forward, then gradients of activations and of weights). Not counted: loading
the data, compiling, start-up, and the input pipeline, so a real run takes longer; the
depthwise convolutions of EfficientNet-Lite also run further below the rate than ResNet's.
Notebooks 01 and 05 train nothing: their estimate is the quick profile's measured CPU time.

    python benchmarks/gpu_estimate.py   # writes benchmarks/results/gpu_estimate-t4.json
"""

from __future__ import annotations

import argparse
import math

import common
import keras

from cifar10_transfer import config, hardware, models, runs
from cifar10_transfer.publish import reports

REFERENCE_IMAGES_PER_S = 1198  # ResNet-50 @224 px, mixed precision, batch 256, one T4
REFERENCE_SOURCE = (
    "NVIDIA/DeepLearningExamples PyTorch/Classification/ConvNets/resnet50v1.5/README.md, "
    "'Inference performance: NVIDIA T4', mixed precision, batch 256"
)
GPU_PROFILES = [name for name, profile in config.PROFILES.items() if profile.needs_accelerator]
UNTRAINED_NOTEBOOKS = ("01_eda.ipynb", "05_compare_and_errors.ipynb")


def forward_flops(model: keras.Model) -> int:
    """FLOPs (2 per multiply-add) of one image through ``model``'s Conv2D, DepthwiseConv2D and
    Dense layers, nested models included; pooling, normalisation and activations are ignored."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += forward_flops(layer)
            continue
        if not isinstance(
            layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
        ):
            continue
        out_shape, in_channels = layer.output.shape, layer.input.shape[-1]
        positions = math.prod(out_shape[1:-1])  # output pixels (1 for a Dense on vectors)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            per_position = math.prod(layer.kernel_size) * out_shape[-1]
        elif isinstance(layer, keras.layers.Conv2D):
            groups = getattr(layer, "groups", 1)
            per_position = math.prod(layer.kernel_size) * in_channels // groups * out_shape[-1]
        else:
            per_position = in_channels * out_shape[-1]
        total += 2 * positions * per_position
    return total


def notebook_flops(profile: config.Profile) -> dict:
    """Total FLOPs of notebooks 02-04 under ``profile``: the FLOPs of each model's forward
    pass times the forward passes its stage makes (``hardware.forward_passes``)."""
    passes = hardware.forward_passes(profile)
    transfer = models.build_transfer_model(config.profile(profile, weights=None))
    backbone, whole = forward_flops(transfer.get_layer("backbone")), forward_flops(transfer)
    baselines = sum(
        forward_flops(getattr(models, name)())
        for name in ("baseline_cnn", "two_layer_fc", "three_layer_cnn")
    )
    return {
        "02_baseline_cnn.ipynb": baselines * passes["baseline"],
        # Features once per image, then the head alone trains on them.
        "03_transfer_head.ipynb": backbone * passes["head"]
        + (whole - backbone) * passes["head_training"],
        "04_finetune.ipynb": whole * passes["finetune"],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    reference = models.build_transfer_model(
        config.profile("paper", backbone="resnet50", image_size=224, weights=None)
    )
    reference_flops = forward_flops(reference.get_layer("backbone"))
    flops_per_s = reference_flops * REFERENCE_IMAGES_PER_S
    cpu_seconds = reports.reproduce_timings(config.COMMITTED_RESULTS / "quick")[0]["seconds"]
    profiles = {}
    for name in GPU_PROFILES:
        profile = config.profile(name)
        flops = notebook_flops(profile)
        seconds = {nb: cpu_seconds[nb] for nb in UNTRAINED_NOTEBOOKS}
        seconds.update({nb: work / flops_per_s for nb, work in flops.items()})
        profiles[name] = {
            "backbone": profile.backbone,
            "image_size": profile.image_size,
            "flops": flops,
            "seconds": {nb: round(seconds[nb], 1) for nb in config.NOTEBOOKS},
        }
        print(f"{name}: " + ", ".join(f"{nb[:2]} {s / 60:.1f} min" for nb, s in seconds.items()))
    result = {
        "benchmark": "gpu_estimate",
        "device": "estimate for one NVIDIA T4 (Colab's GPU), mixed precision",
        "reference_images_per_s": REFERENCE_IMAGES_PER_S,
        "reference_source": REFERENCE_SOURCE,
        "reference_flops_per_image": reference_flops,
        "effective_tflops": flops_per_s / 1e12,
        "training_passes": hardware.TRAINING_PASSES,
        "untrained_notebooks_from": "results/quick/notebooks/timings.json (measured, CPU)",
        "not_counted": "data loading, compilation, start-up, input pipeline",
        "profiles": profiles,
        "computed_on": runs.environment(),  # the FLOPs are counted here, on a CPU
        "command": common.command_line(),
    }
    common.write_result(result, args.out or common.RESULTS_DIR / "gpu_estimate-t4.json")


if __name__ == "__main__":
    common.run(main)
