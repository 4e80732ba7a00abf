#!/usr/bin/env bash
# The GPU suite on a GPU machine without network (Python 3.12, JAX, PyTorch, no
# TensorFlow). Here first: make gpu-bundle, then copy .whl and .devdata beside the code.
# There, in the repository root:
#   RESULTS_ROOT=<folder> bash benchmarks/gpu_suite.sh [gpu_suite.py options]
# Results go to RESULTS_ROOT (results/, benchmarks/results/) as each step finishes.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD/src" KERAS_BACKEND=jax
nvidia-smi --query-gpu=name,compute_cap,memory.total --format=csv
python3 benchmarks/gpu_suite.py --data .devdata/cifar10-jpeg.tar.gz --root "${RESULTS_ROOT:?set RESULTS_ROOT to the folder results go to}" "$@"
