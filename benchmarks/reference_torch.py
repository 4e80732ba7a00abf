"""Plain-PyTorch reference for throughput.py: the same training step, hand-written.

The same architecture (benchmarks/torch_lite0.py, or torchvision's resnet50), the same head
(Dense 256, ReLU, dropout 0.5, 10 classes) and label smoothing, Adam, BatchNorm frozen in
inference mode as in ours, channels-last, eager mode, bfloat16 autocast with
``--precision mixed_bfloat16``, float16 autocast with loss scaling with ``mixed_float16``.
Two input feeds, each timed on its own:

- ``float224``: float32 batches already at the image size on the host, copied per step (what a
  DataLoader of pre-resized images hands a hand-written loop);
- ``uint8_upsample``: uint8 32x32 batches copied per step and upsampled on the device with
  ``F.interpolate`` (the same work as ours, which resizes inside the model).

No augmentation (ours augments at 32x32 inside the model): ours does slightly more work.

    python benchmarks/reference_torch.py --image-size 96 --batch-size 16 --steps 10   # CPU
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import common
import numpy as np

# On a shared CPU, OpenMP's spin-waiting threads stall each other: the default ("active") made
# steps up to 10x slower on a loaded 2-core machine. Set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
try:
    import torch
    import torch.nn.functional as F
    import torch_lite0
    from torch import nn
except ImportError:
    print(
        "error: the PyTorch reference needs torch: pip install -r benchmarks/requirements.txt",
        file=sys.stderr,
    )
    sys.exit(2)

FEEDS = ("float224", "uint8_upsample")
HEAD_UNITS = 256  # as config's profiles
DROPOUT_RATE = 0.5
LABEL_SMOOTHING = 0.1
LEARNING_RATE = common.REFERENCE_RECIPE["finetune_learning_rate"]  # Adam, as ours
NUM_CLASSES = 10
HOST_BATCHES = 2  # distinct host batches, cycled


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_model_arguments(parser, weights=None)
    common.add_timing_arguments(parser)
    parser.add_argument("--feed", choices=(*FEEDS, "both"), default="both")
    args = parser.parse_args(argv)
    if args.weights is not None:
        parser.error("--weights: the reference trains from random weights (speed only); use none")
    return args


def build_backbone(backbone: str) -> tuple[nn.Module, int]:
    """(backbone to pooled features, feature count)."""
    if backbone == "efficientnet_lite0":
        return torch_lite0.efficientnet_lite0(), torch_lite0.FEATURES
    if backbone == "resnet50":
        try:
            import torchvision
        except ImportError:
            raise ValueError(
                "the resnet50 reference needs torchvision, which is not "
                "installed (skipped; efficientnet_lite0 needs only torch)"
            ) from None
        model = torchvision.models.resnet50(weights=None)
        features = model.fc.in_features
        model.fc = nn.Identity()
        return model, features
    raise ValueError(f"backbone must be efficientnet_lite0 or resnet50, got {backbone!r}")


def build_model(backbone: str, device: torch.device) -> nn.Module:
    body, features = build_backbone(backbone)
    head = nn.Sequential(
        nn.Linear(features, HEAD_UNITS),
        nn.ReLU(inplace=True),
        nn.Dropout(DROPOUT_RATE),
        nn.Linear(HEAD_UNITS, NUM_CLASSES),
    )
    model = nn.Sequential(body, head).to(device, memory_format=torch.channels_last)
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()  # as ours: BatchNorm in inference mode, its weights frozen
            module.requires_grad_(False)
    return model


def host_batches(feed: str, batch_size: int, image_size: int, device: torch.device):
    """Random host batches for ``feed``, pinned for fast copies to a GPU."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(HOST_BATCHES):
        if feed == "float224":
            batch = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
        else:
            batch = torch.randint(
                0, 256, (batch_size, 32, 32, 3), dtype=torch.uint8, generator=generator
            )
        labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)
        if device.type == "cuda":
            batch, labels = batch.pin_memory(), labels.pin_memory()
        batches.append((batch, labels))
    return batches


def to_device(feed: str, batch: torch.Tensor, image_size: int, device: torch.device):
    if feed == "float224":
        return batch.to(device, non_blocking=True, memory_format=torch.channels_last)
    images = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    images = F.interpolate(
        images, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    # Lite0's pixel scaling, (pixel - 127.5) / 128; the same cost for any backbone.
    return ((images - 127.5) / 128.0).contiguous(memory_format=torch.channels_last)


AUTOCAST = {"float32": None, "mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}


def time_feed(feed: str, args, device: torch.device, precision: str) -> dict:
    torch.manual_seed(args.seed)
    model = build_model(args.backbone, device)
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE
    )
    batches = host_batches(feed, args.batch_size, args.image_size, device)
    autocast = AUTOCAST[precision]
    # float16's narrow range needs loss scaling, as Keras adds under mixed_float16.
    scaler = torch.amp.GradScaler(device.type, enabled=autocast is torch.float16)
    step_ends = []
    for step in range(args.warmup + args.steps):
        batch, labels = batches[step % HOST_BATCHES]
        images = to_device(feed, batch, args.image_size, device)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=LABEL_SMOOTHING)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss.item()  # waits for the step, as ours does when Keras reads the loss
        step_ends.append(time.perf_counter())
    timed = step_ends[args.warmup - 1 :]
    return {
        "images_per_second": args.steps * args.batch_size / (timed[-1] - timed[0]),
        "step_time_median_ms": 1000 * float(np.median(np.diff(timed))),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    # Same wording as runs.environment(), so results files pair up by device.
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def main(argv=None) -> None:
    args = parse_arguments(argv)
    load_before = os.getloadavg()[0]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.precision
    if precision == "auto":  # the rule of hardware.auto_precision, without Keras
        precision = "float32"
        if device.type == "cuda":
            bfloat16 = torch.cuda.get_device_capability(device) >= (8, 0)
            precision = "mixed_bfloat16" if bfloat16 else "mixed_float16"
    build_backbone(args.backbone)  # fail early, before any timing, if it is unavailable
    feeds = FEEDS if args.feed == "both" else (args.feed,)
    results = {feed: time_feed(feed, args, device, precision) for feed in feeds}
    result = {
        "benchmark": "reference_torch",
        "framework": "torch",
        "backbone": args.backbone,
        "weights": None,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "precision": precision,
        "autocast": str(AUTOCAST[precision]).removeprefix("torch.")
        if AUTOCAST[precision]
        else None,
        "steps": args.steps,
        "warmup": args.warmup,
        "mode": "eager, channels-last",
        "augmentation": False,
        "trainable": "all (BatchNorm frozen, inference mode)",
        "optimizer": "adam",
        "feeds": results,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "load_average": [load_before, os.getloadavg()[0]],
        "backend": "torch",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "device": device_name(device),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": common.command_line(),
    }
    common.write_result(result, args.out)
    for feed, numbers in results.items():
        print(f"{feed}: {numbers['images_per_second']:.1f} images/s", flush=True)


if __name__ == "__main__":
    common.run(main)
