"""Memory of one training step per micro-batch size: XLA's estimate from compiling, not running.

The step is Keras's own JAX train step (``model.train_step``, jitted with the state donated as
``fit()`` does) of the full profile's transfer model, backbone fully unfrozen, Adam with
gradient accumulation so that every micro-batch size makes the same effective batch
(``--batch-size``, default the full profile's 256). For each micro-batch size the step is
lowered with abstract inputs (shapes only) and compiled; ``memory_analysis()`` of the
compiled step gives the sizes XLA's buffer assignment planned: arguments (weights, optimizer
and metric state, the batch), outputs, outputs aliased to donated arguments, and temporaries
(activations kept for the backward pass, gradients, workspace). Estimated peak = arguments +
outputs - aliased + temporaries. Nothing is executed, so no batch is ever allocated.

On a CPU this is XLA's CPU compiler, whose fusion and layouts differ from the GPU
compiler's: an estimate of the GPU's needs, not a GPU measurement (frameworks also reserve
memory of their own: JAX preallocates 75% of a GPU by default). The CPU compiler computes
float16 and bfloat16 in float32, so its plan for a mixed policy comes out at float32's
size; this script therefore runs mixed precision only where there is an accelerator. On a
GPU machine the same command reports the GPU compiler's plan. Always JAX: the analysis is
XLA's.

    python benchmarks/memory.py --backbone resnet50
    python benchmarks/memory.py --backbone efficientnet_lite0 --micro-batch-sizes 32 64
    python benchmarks/memory.py --backbone resnet50 --precision mixed_float16    # a GPU
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "jax"  # before Keras is imported (by throughput below)

import argparse
import time

import common
import jax
from throughput import build_unfrozen_model

from cifar10_transfer import config, hardware, runs, training


def parse_arguments(argv=None) -> argparse.Namespace:
    full = config.PROFILES["full"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_model_arguments(
        parser,
        weights=None,
        image_size=full.image_size,
        batch_size=full.batch_size,
    )
    parser.add_argument(
        "--micro-batch-sizes",
        type=int,
        nargs="+",
        default=[32, 64, 128, 256],
        help="images per step; each must divide --batch-size (the effective batch)",
    )
    args = parser.parse_args(argv)
    for size in args.micro_batch_sizes:
        if size < 1 or args.batch_size % size:
            parser.error(
                f"--micro-batch-sizes: {size} must be at least 1 and divide --batch-size "
                f"{args.batch_size}"
            )
    return args


def shapes(variables) -> list:
    return [jax.ShapeDtypeStruct(variable.shape, variable.dtype) for variable in variables]


def step_memory(model, micro_batch: int, accumulation: int, learning_rate: float) -> dict:
    """Compile one train step for ``micro_batch`` images and return XLA's memory plan."""
    started = time.perf_counter()
    stage = training.Stage(
        "finetune",
        batch_size=micro_batch * accumulation,
        learning_rate=learning_rate,
        gradient_accumulation_steps=accumulation,
    )
    model.compile(**training.compile_arguments(stage))
    images = jax.ShapeDtypeStruct((micro_batch, *config.IMAGE_SHAPE), "uint8")
    targets = jax.ShapeDtypeStruct((micro_batch, config.NUM_CLASSES), "float32")
    # What fit() does first: create the optimizer's and metrics' variables for these shapes.
    model._symbolic_build(data_batch=(images, targets))
    state = (
        shapes(model.trainable_variables),
        shapes(model.non_trainable_variables),
        shapes(model.optimizer.variables),
        shapes(model.metrics_variables),
    )
    step = jax.jit(model.train_step, donate_argnums=0)
    analysis = step.lower(state, (images, targets)).compile().memory_analysis()
    sizes = {
        "argument_bytes": analysis.argument_size_in_bytes,
        "output_bytes": analysis.output_size_in_bytes,
        "alias_bytes": analysis.alias_size_in_bytes,
        "temp_bytes": analysis.temp_size_in_bytes,
    }
    peak = sizes["argument_bytes"] + sizes["output_bytes"] - sizes["alias_bytes"]
    return {
        "micro_batch_size": micro_batch,
        "gradient_accumulation_steps": accumulation,
        **sizes,
        "peak_bytes": peak + sizes["temp_bytes"],
        "compile_s": time.perf_counter() - started,
    }


def main(argv=None) -> None:
    args = parse_arguments(argv)
    load_before = os.getloadavg()[0]
    profile = common.profile_from(args, "full", **common.REFERENCE_RECIPE)
    training.set_seed(profile.seed)
    precision = hardware.configure_precision(profile.precision)
    if precision != "float32" and not hardware.has_accelerator():
        raise ValueError(
            f"--precision {precision} needs an accelerator: XLA's CPU compiler computes "
            "float16 and bfloat16 in float32, so its plan would show float32's memory"
        )
    model = build_unfrozen_model(profile)
    learning_rate = profile.finetune_learning_rate
    steps = []
    for micro_batch in args.micro_batch_sizes:
        steps.append(step_memory(model, micro_batch, args.batch_size // micro_batch, learning_rate))
        print(
            f"micro-batch {micro_batch}: {steps[-1]['peak_bytes'] / 2**30:.2f} GiB "
            f"(compiled in {steps[-1]['compile_s']:.0f} s)",
            flush=True,
        )
    result = {
        "benchmark": "memory",
        "backbone": args.backbone,
        "weights": args.weights,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "precision": precision,
        "trainable": "all (BatchNormalization frozen, inference mode)",
        "optimizer": "adam, gradient accumulation to batch_size",
        "method": "XLA memory_analysis() of the compiled JAX train step; compiled, not run",
        "steps": steps,
        "load_average": [load_before, os.getloadavg()[0]],
        **runs.environment(),
        "command": common.command_line(),
    }
    out = args.out
    if out is None:
        # One file per precision: the backbone's runs in each precision sit side by side.
        name = f"memory-{args.backbone}-{common.device_slug(result['device'])}-jax-{precision}"
        out = common.RESULTS_DIR / f"{name}.json"
    common.write_result(result, out)


if __name__ == "__main__":
    common.run(main)
