"""Data-parallel training on virtual CPU devices: JAX DataParallel and TF MirroredStrategy.

The engine tests run in subprocesses because the device split (XLA_FLAGS for JAX, logical
devices for TensorFlow) and the backend must be set before either library starts.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from test_training import synthetic_splits

from cifar10_transfer import distribute

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent
JAX_FOUR_DEVICES = {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
# Runs before TensorFlow initialises: one physical CPU as two logical devices.
TF_TWO_DEVICES = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


def run_python(environment: dict, *arguments: str) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        **environment,
        "CIFAR10_VERBOSE": "0",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)]),
    }
    return subprocess.run(
        [sys.executable, *arguments], capture_output=True, text=True, env=environment, timeout=600
    )


def last_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# Trains the baseline CNN on one device and on all of them (same data, seed and batches) and
# reports the losses plus what the engine did with the weights and with one global batch.
EQUIVALENCE = """
import json
import numpy as np
from cifar10_transfer import distribute, models, training
from test_training import synthetic_splits

splits = synthetic_splits()
images, targets = splits.x_train[:80], training.one_hot(splits.y_train[:80])


def train(placement):
    training.set_seed(0)
    with placement.scope():
        # No dropout: its random masks are drawn per replica under MirroredStrategy.
        model = models.baseline_cnn(dropout_rate=0.0, seed=0)
        model.compile(**training.compile_arguments(training.Stage("head", learning_rate=1e-3)))
        history = model.fit(images, targets, batch_size=20, epochs=2, shuffle=False, verbose=0)
        return model, history.history["loss"], model.predict(images[:20], verbose=0)


single_model, single_losses, single_predictions = train(distribute.setup(None, 20))
placement = distribute.setup("all", 20)
model, losses, predictions = train(placement)
report = {
    "device_count": placement.device_count,
    "single_losses": single_losses,
    "losses": losses,
    "weight_gap": max(float(np.abs(a - b).max())
                      for a, b in zip(single_model.get_weights(), model.get_weights())),
    "prediction_gap": float(np.abs(single_predictions - predictions).max()),
}
"""

JAX_ENGINE = """
import keras
layout = placement.engine.get_data_layout(images[:20].shape)
batch = keras.distribution.distribute_tensor(images[:20], layout)
report["engine"] = type(placement.engine).__name__
report["weights_replicated"] = all(
    weight.value.sharding.is_fully_replicated and len(weight.value.sharding.device_set) == 4
    for weight in model.weights)
report["batch_slices"] = [list(shard.data.shape) for shard in batch.addressable_shards]
print(json.dumps(report))
"""

TF_ENGINE = """
import tensorflow as tf
strategy = placement.engine
batches = strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices(images).batch(20))
report["engine"] = type(strategy).__name__
report["replicas"] = strategy.num_replicas_in_sync
report["weights_replicated"] = all(
    isinstance(weight.value, tf.distribute.DistributedValues)
    and type(weight.value).__name__ == "MirroredVariable" for weight in model.weights)
report["batch_slices"] = [list(part.shape)
                          for part in strategy.experimental_local_results(next(iter(batches)))]
print(json.dumps(report))
"""


def check_equivalence(report: dict, device_count: int, engine: str) -> None:
    assert report["device_count"] == device_count and report["engine"] == engine
    assert report["weights_replicated"]
    assert report["batch_slices"] == [[20 // device_count, 32, 32, 3]] * device_count
    assert len(report["losses"]) == 2
    assert report["losses"] == pytest.approx(report["single_losses"], rel=1e-4)
    assert report["weight_gap"] < 1e-4 and report["prediction_gap"] < 1e-4


def test_jax_data_parallel_matches_one_device():
    report = last_json(run_python(JAX_FOUR_DEVICES, "-c", EQUIVALENCE + JAX_ENGINE))
    check_equivalence(report, 4, "DataParallel")


def test_tensorflow_mirrored_strategy_matches_one_device():
    report = last_json(
        run_python({"KERAS_BACKEND": "tensorflow"}, "-c", TF_TWO_DEVICES + EQUIVALENCE + TF_ENGINE)
    )
    check_equivalence(report, 2, "MirroredStrategy")
    assert report["replicas"] == 2


# A baseline interrupted and resumed, then the head stage on cached features, all on N devices.
RUNS = """
import json, sys
from pathlib import Path
import keras, numpy as np
from cifar10_transfer import config, training
from test_training import SMALL, InterruptAfter, synthetic_splits

devices, out = int(sys.argv[1]), Path(sys.argv[2])
splits = synthetic_splits()
# A small backbone and no augmentation layers (slow to compile on JAX) keep the test fast.
profile = config.profile("smoke", **{**SMALL, "backbone": "mobilenet_v3_small",
                         "baseline_batch_size": 20, "augment": False,
                         "baseline_augment": False, "early_stopping_patience": 10})
try:
    training.run_experiment("baseline_cnn", profile, out_dir=out / "baseline", splits=splits,
                            devices=devices, callbacks=[InterruptAfter(1)])
except KeyboardInterrupt:
    pass
backup_after_interrupt = (out / "baseline" / "backup").exists()
baseline = training.run_experiment("baseline_cnn", profile, out_dir=out / "baseline",
                                   splits=splits, devices=devices, resume=True)
head = training.run_experiment("head", profile, out_dir=out / "head", splits=splits,
                               devices=devices)
# The saved model's head, on the cached test features, gives the stored test predictions.
caches = list((config.RUNS_DIR / "features").glob("*.npz"))
head_model = keras.saving.load_model(out / "head" / "model.keras", safe_mode=True).get_layer("head")
with np.load(caches[0]) as features, np.load(out / "head" / "predictions.npz") as stored:
    gap = float(np.abs(head_model.predict(features["test"], verbose=0)
                       - stored["probabilities"]).max())
print(json.dumps({
    "backup_after_interrupt": backup_after_interrupt,
    "baseline_history_rows": len((out / "baseline" / "history.csv").read_text().splitlines()) - 1,
    "device_counts": [baseline["device_count"], head["device_count"]],
    "stored_device_counts": [json.loads((out / name / "metrics.json").read_text())["device_count"]
                             for name in ("baseline", "head")],
    "checkpoints": [(out / name / "checkpoint.keras").exists() for name in ("baseline", "head")],
    "feature_caches": len(caches),
    "head_prediction_gap": gap,
}))
"""


def check_runs(report: dict, device_count: int) -> None:
    assert report["backup_after_interrupt"] and report["baseline_history_rows"] == 2
    assert report["device_counts"] == report["stored_device_counts"] == [device_count] * 2
    assert report["checkpoints"] == [True, True] and report["feature_caches"] == 1
    assert report["head_prediction_gap"] < 1e-4


@pytest.mark.slow
def test_jax_runs_resume_and_cache_features_on_four_devices(tmp_path):
    environment = {**JAX_FOUR_DEVICES, "CIFAR10_TRANSFER_ROOT": str(tmp_path)}
    check_runs(last_json(run_python(environment, "-c", RUNS, "4", str(tmp_path / "runs4"))), 4)


@pytest.mark.slow
def test_tensorflow_runs_resume_and_cache_features_on_two_devices(tmp_path):
    environment = {"KERAS_BACKEND": "tensorflow", "CIFAR10_TRANSFER_ROOT": str(tmp_path)}
    result = run_python(environment, "-c", TF_TWO_DEVICES + RUNS, "2", str(tmp_path / "runs2"))
    check_runs(last_json(result), 2)


# One baseline run; prints the training losses seen by this process and the test metrics.
MULTI_HOST_RUN = """
import json, sys
import keras
from cifar10_transfer import config, training
from test_training import SMALL, synthetic_splits


class Losses(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.values = []

    def on_epoch_end(self, epoch, logs=None):
        self.values.append([logs["loss"], logs["val_loss"]])


losses = Losses()
# Cosine decay to zero: two batch orders (one process's, two processes') end near each other;
# at a constant rate two epochs leave them further apart than the accuracy check allows.
profile = config.profile(
    "smoke", **{**SMALL, "baseline_batch_size": 20, "augment": False, "baseline_augment": False,
                "lr_schedule": "cosine"})
metrics = training.run_experiment(
    "baseline_cnn", profile, out_dir=sys.argv[1], splits=synthetic_splits(), devices="all",
    callbacks=[losses])
print(json.dumps({"losses": losses.values, "device_count": metrics["device_count"],
                  **{key: metrics[key] for key in ("test_accuracy", "test_loss", "ece")}}))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_jax_two_processes_train_like_one_process_with_four_devices(tmp_path):
    environment = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{free_port()}",
        "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
        "CIFAR10_VERBOSE": "0",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "CIFAR10_TRANSFER_ROOT": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)]),
    }
    out = tmp_path / "two-processes" / "baseline"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", MULTI_HOST_RUN, str(out)],
            env={**environment, "KERAS_DISTRIBUTION_PROCESS_ID": str(index)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]
    try:
        # A process whose partner died waits for it forever: bound both.
        results = [process.communicate(timeout=600) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr[-4000:]
    chief, worker = (json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in results)
    # Losses are computed over the global batch, so every process sees the same numbers.
    assert chief == worker and chief["device_count"] == 4
    # Only the chief wrote the run folder; the worker's working files are gone.
    assert sorted(path.name for path in out.parent.iterdir()) == ["baseline"]
    assert sorted(path.name for path in out.iterdir()) == [
        "checkpoint.keras",
        "history.csv",
        "metrics.json",
        "model.keras",
        "predictions.npz",
    ]
    assert json.loads((out / "metrics.json").read_text())["device_count"] == 4
    # The gathered predictions are the saved model's, row for row.
    splits = synthetic_splits()
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    with np.load(out / "predictions.npz") as stored:
        np.testing.assert_array_equal(stored["y_true"], splits.y_test)
        np.testing.assert_allclose(
            stored["probabilities"], model.predict(splits.x_test, verbose=0), atol=1e-4
        )

    single = last_json(
        run_python(JAX_FOUR_DEVICES, "-c", MULTI_HOST_RUN, str(tmp_path / "one-process"))
    )
    assert single["device_count"] == 4
    # Same data, seed and initial weights; with shuffling each process draws its own batch
    # order, so the global batches differ from one process's and the losses agree only
    # approximately.
    assert np.array(chief["losses"]) == pytest.approx(np.array(single["losses"]), rel=0.05)
    assert chief["test_accuracy"] == pytest.approx(single["test_accuracy"], abs=0.1)


def test_cli_rejects_an_uneven_global_batch_before_training(tmp_path):
    out = tmp_path / "run"
    result = run_python(
        JAX_FOUR_DEVICES,
        "-m",
        "cifar10_transfer",
        "train",
        "baseline_cnn",
        "--profile",
        "smoke",
        "--devices",
        "3",
        "--out",
        str(out),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: batch_size=50 does not split evenly across 3 devices; use a "
        "multiple of 3 (batch_size is the global batch)"
    ]
    assert not out.exists()


# ---------------------------------------------------------------- in this process


def test_one_device_needs_no_engine():
    for devices in (None, 1, "1"):
        placement = distribute.setup(devices, batch_size=7)
        assert placement.device_count == 1 and placement.engine is None
        with placement.scope():
            assert keras.distribution.distribution() is None


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        (0, "devices must be at least 1, got 0"),
        (-2, "devices must be at least 1"),
        ("two", "devices must be 'all' or a whole number, got 'two'"),
        ("2.5", "whole number"),
        (10_000, "devices=10000, but only"),
    ],
)
def test_bad_device_counts_are_refused(devices, message):
    with pytest.raises(ValueError, match=message):
        distribute.setup(devices, batch_size=20)


def test_multi_host_needs_jax_every_variable_and_all_devices(monkeypatch):
    on_jax = keras.backend.backend() == "jax"
    not_jax = "training on several machines needs KERAS_BACKEND=jax"
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    with pytest.raises(
        ValueError, match="KERAS_DISTRIBUTION_JOB_ADDRESSES, " if on_jax else not_jax
    ):
        distribute.setup("all", batch_size=20)
    # Refused before joining the cluster, which would wait for the other machines.
    monkeypatch.setenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", "127.0.0.1:1")
    monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "1")
    with pytest.raises(ValueError, match="use devices='all'" if on_jax else not_jax):
        distribute.setup(2, batch_size=20)


def test_process_slices_gather_back_in_order(monkeypatch):
    rows = np.arange(12).reshape(6, 2)
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "3")
    slices = []
    for index in range(3):
        monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", str(index))
        assert distribute.is_chief() == (index == 0)
        slices.append(distribute.process_slice(rows))
    assert [part[:, 0].tolist() for part in slices] == [[0, 6], [2, 8], [4, 10]]
    # What process_allgather returns: the slices stacked in process order.
    np.testing.assert_array_equal(distribute._interleave(np.stack(slices)), rows)


def test_split_sizes_must_divide_across_devices():
    splits = synthetic_splits()  # 200 train, 100 val, 100 test
    distribute.Placement(device_count=4).check_splits(splits)
    with pytest.raises(
        ValueError,
        match="train_size=200, val_size=100, test_size=100: with 3 "
        "devices every split size must be a multiple of 3",
    ):
        distribute.Placement(device_count=3).check_splits(splits)
