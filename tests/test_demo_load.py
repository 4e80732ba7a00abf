"""benchmarks/demo_load.py: the exported demo served on localhost under concurrent uploads."""

import json
import subprocess
import sys
from pathlib import Path

from test_demo import make_run_folder

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "demo_load.py"


def run_script(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, timeout=600
    )


def test_identical_uploads_at_the_same_moment_all_succeed(tmp_path, real_data_path):
    # Gradio's output cache raced here (about 1 in 10 requests failed): six clients upload one
    # file at the same moment, four times, and each downloads its preview.
    run = make_run_folder(tmp_path / "run")
    out = tmp_path / "load.json"
    done = run_script(
        str(run), "--requests", "24", "--clients", "6", "--same-file",
        "--cache-max-age", "5", "--data", str(real_data_path), "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["errors"] == 0, result["error_examples"]
    assert (result["requests"], result["clients"], result["same_file"]) == (24, 6, True)
    assert 0 < result["latency_p50_s"] <= result["latency_p95_s"] <= result["latency_max_s"]
    memory = result["server_rss_mb"]
    assert 0 < memory["after_warm_up"] <= memory["peak"]
    files = result["cache_files"]
    assert files["after_load"] >= 2  # uploads and previews, in Gradio's cache
    assert files["after_10_s_idle"] == 0  # swept: the app kept them --cache-max-age 5 s
    assert result["git_commit"] and result["device"]


def test_bad_settings_fail_before_the_server_starts(tmp_path):
    done = run_script(str(tmp_path), "--clients", "0")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --clients: expected 1 to 64, got 0"
    done = run_script(str(tmp_path / "missing"))
    assert done.returncode == 2
    # One error line, after whatever TensorFlow logs while Keras is imported; no traceback.
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: run folder ") and "missing" in last
    assert "Traceback" not in done.stderr
