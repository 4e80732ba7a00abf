"""The benchmark scripts run end to end at tiny sizes and write complete, sane JSON.

Timing goals live in benchmarks/, never here. Each script runs in a subprocess, as
``python benchmarks/<name>.py``; the PyTorch reference runs where torch is importable.
"""

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
HAS_TORCH = importlib.util.find_spec("torch") is not None
TINY = [
    "--backbone",
    "efficientnet_lite0",
    "--image-size",
    "32",
    "--batch-size",
    "4",
    "--seed",
    "0",
]
FIELDS = (
    "benchmark",
    "backbone",
    "device",
    "backend",
    "versions",
    "batch_size",
    "image_size",
    "precision",
    "command",
    "timestamp",
)


def run_benchmark(script: str, *args, out: Path) -> dict:
    # Keep the caller's PYTHONPATH: torch may live there.
    python_path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "PYTHONPATH": python_path, "CIFAR10_VERBOSE": "0"}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args, "--out", str(out)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    stored = json.loads(out.read_text())
    for field in FIELDS:
        assert field in stored, field
    # memory.py sets KERAS_BACKEND=jax itself, and the command records the backend it ran.
    assert re.match(r"(KERAS_BACKEND=\w+ )?python ", stored["command"])
    assert script in stored["command"]
    return stored


def load_module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """compare.py at a tiny size: throughput.py, then reference_torch.py where torch exists."""
    out = tmp_path_factory.mktemp("bench") / "compare.json"
    return run_benchmark(
        "compare.py", *TINY, "--weights", "none", "--steps", "2", "--warmup", "1", out=out
    ), out


@pytest.mark.slow
def test_throughput_reports_positive_images_per_second(compared):
    ours = compared[0]["ours"]
    assert ours["benchmark"] == "throughput" and ours["framework"] == "keras"
    assert (ours["batch_size"], ours["image_size"], ours["steps"]) == (4, 32, 2)
    assert ours["precision"] in ("float32", "mixed_bfloat16")
    assert ours["backend"] in ("tensorflow", "jax")
    assert ours["images_per_second"] > 0 and ours["step_time_median_ms"] > 0
    assert ours["first_step_s"] > 0 and len(ours["load_average"]) == 2


@pytest.mark.slow
def test_compare_reports_the_ratio_or_why_the_reference_was_skipped(compared):
    result = compared[0]
    assert result["ours_images_per_second"] == result["ours"]["images_per_second"]
    if not HAS_TORCH:
        assert "torch" in result["reference_skipped"] and result["ratio_ours_over_reference"] == {}
        return
    reference = result["reference"]
    assert reference["backend"] == "torch" and reference["augmentation"] is False
    assert set(reference["feeds"]) == {"float224", "uint8_upsample"}
    for feed, numbers in reference["feeds"].items():
        assert numbers["images_per_second"] > 0
        ratio = result["ours_images_per_second"] / numbers["images_per_second"]
        assert result["ratio_ours_over_reference"][feed] == pytest.approx(ratio)


@pytest.mark.slow
def test_backends_reports_both_backends_and_their_ratio_in_a_table(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    result = run_benchmark(
        "backends.py",
        *TINY,
        "--weights",
        "none",
        "--steps",
        "2",
        "--warmup",
        "1",
        out=results / "backends.json",
    )
    assert result["backend"] == "jax-vs-tensorflow" and result["order"] == ["tensorflow", "jax"]
    for backend in ("tensorflow", "jax"):
        (run,) = result["runs"][backend]
        assert run["backend"] == backend and backend in result["versions"]
        assert (run["batch_size"], run["image_size"], run["steps"]) == (4, 32, 2)
        assert result["images_per_second"][backend] == run["images_per_second"] > 0
    assert result["jit_compile"]["jax"] is True  # the augmenting model compiles on JAX
    speed = result["images_per_second"]
    ratio = result["ratio_jax_over_tensorflow"]
    assert ratio == pytest.approx(speed["jax"] / speed["tensorflow"])
    assert result["goal_met"] == (ratio >= result["goal_ratio"])

    readme = tmp_path / "README.md"
    readme.write_text("<!-- bench:start -->\n<!-- bench:end -->\n")
    summarize = [sys.executable, str(BENCHMARKS / "summarize.py"), "--results", str(results)]
    subprocess.run([*summarize, "--readme", str(readme)], check=True, capture_output=True)
    text = readme.read_text()
    assert "JAX against TensorFlow" in text and f" {ratio:,.2f} " in text


@pytest.mark.slow
def test_summarize_writes_generated_tables_between_the_markers(compared, tmp_path):
    result, path = compared
    results = tmp_path / "results"
    results.mkdir()
    (results / path.name).write_text(path.read_text())
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold table\n<!-- bench:end -->\noutro\n")
    summarize = [
        sys.executable,
        str(BENCHMARKS / "summarize.py"),
        "--results",
        str(results),
        "--readme",
        str(readme),
    ]
    subprocess.run(summarize, check=True, capture_output=True)
    text = readme.read_text()
    assert text.startswith("intro\n<!-- bench:start -->\n") and text.endswith(
        "<!-- bench:end -->\noutro\n"
    )
    assert "old table" not in text
    assert f"{result['ours_images_per_second']:,.1f}" in text
    assert f"[json](results/{path.name})" in text
    subprocess.run(summarize, check=True, capture_output=True)
    assert readme.read_text() == text  # idempotent

    readme.write_text("no markers\n")
    failed = subprocess.run(summarize, capture_output=True, text=True)
    assert failed.returncode == 2 and failed.stderr.startswith("error:")


def test_frozen_share_times_the_step_and_the_frozen_part(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # summarize.py imports common.py beside it
    out = tmp_path / "frozen_share.json"
    stored = run_benchmark(
        "frozen_share.py", *TINY, "--set", "unfreeze=stage:block6", "--steps", "2", out=out
    )
    assert stored["benchmark"] == "frozen_share" and stored["unfreeze"] == "stage:block6"
    assert stored["step_time_median_ms"] > 0 and stored["frozen_forward_median_ms"] > 0
    share = stored["frozen_forward_median_ms"] / stored["step_time_median_ms"]
    assert stored["frozen_share"] == pytest.approx(share)
    # What block6a reads at 32 px: block5's 2x2 output, 112 channels in Lite0.
    assert stored["frozen_output_shape"] == [2, 2, 112]
    assert "Frozen part's forward ms" in load_module("summarize").table(
        "frozen_share", [(out.name, stored)]
    )


@pytest.mark.parametrize("unfreeze", ["all", "head"])
def test_frozen_share_refuses_a_setting_that_leaves_nothing_frozen(tmp_path, unfreeze):
    failed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "frozen_share.py"), *TINY, "--set",
         f"unfreeze={unfreeze}", "--out", str(tmp_path / "x.json")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1] == (
        f"error: unfreeze={unfreeze!r}: expected stage:NAME or top:N, which leave the layers "
        "before them frozen"
    )
    assert not (tmp_path / "x.json").exists()


def test_a_timing_refuses_a_training_that_stopped_early():
    # TerminateOnNaN ends training at a non-finite loss: the steps that ran are not the steps
    # asked for, and their timing must not be reported as if they were.
    timer = load_module("timers").StepTimer()
    timer.on_train_begin()
    for _ in range(4):
        timer.on_train_batch_end(0, {"loss": float("nan")})
    with pytest.raises(ValueError, match="training stopped after 4 of 8 steps"):
        timer.require_steps(8)
    timer.require_steps(4)


def test_result_files_are_named_by_benchmark_backbone_device_and_backend():
    common = load_module("common")
    assert common.device_slug("cpu (x86_64, 2 cores)") == "cpu"
    assert common.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert common.size_argument("all") is None and common.size_argument("1000") == 1000
    assert common.weights_argument("none") is None
    assert common.count_argument("3") == 3
    for text in ("0", "-1", "2.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected a whole number >= 1"):
            common.count_argument(text)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (benchmarks/requirements.txt)")
def test_torch_lite0_has_the_keras_lite0_architecture():
    # In a subprocess: torch and TensorFlow stay out of the test process together.
    script = (
        "import json, torch_lite0\n"
        "from cifar10_transfer import efficientnet_lite\n"
        "keras_model = efficientnet_lite.EfficientNetLite0(include_top=False, weights=None,"
        " input_shape=(64, 64, 3))\n"
        "torch_model = torch_lite0.efficientnet_lite0()\n"
        "tensors = list(torch_model.parameters()) + [b for n, b in torch_model.named_buffers()"
        " if not n.endswith('num_batches_tracked')]\n"
        "print(json.dumps({'blocks': torch_lite0.BLOCKS == efficientnet_lite.BLOCKS,"
        " 'keras': keras_model.count_params(), 'torch': sum(t.numel() for t in tensors)}))\n"
    )
    python_path = os.pathsep.join(
        filter(None, [str(BENCHMARKS), str(ROOT / "src"), os.environ.get("PYTHONPATH")])
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": python_path},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["blocks"] is True
    assert report["torch"] == report["keras"] > 3_000_000


@pytest.mark.slow
@pytest.mark.realdata
def test_feature_cache_reports_both_runs(real_data_path, tmp_path):
    result = run_benchmark(
        "feature_cache.py",
        *TINY,
        "--weights",
        "none",
        "--batch-size",
        "20",
        "--data",
        str(real_data_path),
        "--train-size",
        "100",
        "--val-size",
        "20",
        "--test-size",
        "50",
        "--epochs",
        "2",
        out=tmp_path / "feature_cache.json",
    )
    assert result["data"] == {
        "source": result["data"]["source"],
        "train_size": 100,
        "val_size": 20,
        "test_size": 50,
    }
    runs = {name: result[name] for name in ("cold_cache", "uncached", "warm_cache")}
    for run in runs.values():
        assert run["wall_s"] > 0 and run["epoch_median_s"] > 0 and run["epochs"] == 2
        assert 0.0 <= run["test_accuracy"] <= 1.0
    # Only the cold run extracts features before training.
    assert runs["cold_cache"]["before_training_s"] > runs["warm_cache"]["before_training_s"]
    for name in ("cold_cache", "warm_cache"):
        assert result["speedup"][name] == pytest.approx(
            runs["uncached"]["wall_s"] / runs[name]["wall_s"]
        )
    assert set(result["goal_met"]) == {"cold_cache", "warm_cache"}


@pytest.mark.slow
@pytest.mark.realdata
def test_time_to_accuracy_stops_at_the_target(real_data_path, tmp_path):
    result = run_benchmark(
        "time_to_accuracy.py",
        *TINY,
        "--weights",
        "none",
        "--data",
        str(real_data_path),
        "--train-size",
        "40",
        "--val-size",
        "20",
        "--test-size",
        "20",
        "--target",
        "0",
        "--max-epochs",
        "3",
        out=tmp_path / "time_to_accuracy.json",
    )
    # Any accuracy reaches 0%: the callback stops after the first epoch.
    assert result["target_reached"] is True and result["epochs_to_target"] == 1
    assert len(result["epochs"]) == 1
    assert result["time_to_target_s"] > 0 and result["compile_s"] >= 0
    assert result["time_to_target_s"] == result["epochs"][0]["training_s"]
    assert result["data"]["train_size"] == 40 and result["data"]["test_size"] == 20


@pytest.mark.slow
def test_memory_reports_xla_sizes_per_micro_batch_and_renders_a_table(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    result = run_benchmark(
        "memory.py",
        *TINY,
        "--weights",
        "none",
        "--micro-batch-sizes",
        "2",
        "4",
        out=results / "memory.json",
    )
    assert result["backend"] == "jax" and result["precision"] == "float32"
    assert result["command"].startswith("KERAS_BACKEND=jax python ")
    steps = result["steps"]
    assert [(s["micro_batch_size"], s["gradient_accumulation_steps"]) for s in steps] == [
        (2, 2),
        (4, 1),
    ]
    for step in steps:
        assert step["temp_bytes"] > 0 and step["compile_s"] > 0
        assert step["peak_bytes"] == (
            step["argument_bytes"] + step["output_bytes"] - step["alias_bytes"] + step["temp_bytes"]
        )
    # Accumulation keeps one float32 accumulator per trainable weight among the arguments.
    assert steps[0]["argument_bytes"] > steps[1]["argument_bytes"]

    readme, memory_readme = tmp_path / "README.md", tmp_path / "ROOT.md"
    readme.write_text("<!-- bench:start -->\n<!-- bench:end -->\n")
    memory_readme.write_text(
        "gpu\n<!-- memory:start -->\n<!-- memory:end -->\n"
        "demo\n<!-- demo-load:start -->\n<!-- demo-load:end -->\n"
        "time\n<!-- reproduce-time:start -->\n<!-- reproduce-time:end -->\n"
    )
    subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "summarize.py"),
            "--results",
            str(results),
            "--readme",
            str(readme),
            "--memory-readme",
            str(memory_readme),
        ],
        check=True,
        capture_output=True,
    )
    peaks = " / ".join(f"{s['peak_bytes'] / 2**30:,.2f}" for s in steps)
    for text in (readme.read_text(), memory_readme.read_text()):
        assert "XLA's estimate" in text and "2x2 / 4x1" in text and peaks in text
    assert "[json](benchmarks/results/memory.json)" in memory_readme.read_text()
