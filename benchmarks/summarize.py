"""Write the latest benchmark figures from benchmarks/results/*.json into benchmarks/README.md.

The tables go between the lines ``<!-- bench:start -->`` and ``<!-- bench:end -->``; the
memory table (benchmarks/memory.py) and the demo-under-load table (benchmarks/demo_load.py)
also go between their markers in the project README (``ROOT_TABLES``). Every figure comes
from a results file, never typed by hand.

    python benchmarks/summarize.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common
import pandas as pd

from cifar10_transfer import fileio
from cifar10_transfer.publish import reports

README = Path(__file__).resolve().parent / "README.md"


def number(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def load(result) -> str:
    before, after = result.get("load_average") or (None, None)
    return "-" if before is None else f"{before:.1f} / {after:.1f}"


def joined(*cells: str) -> str:
    return " / ".join(cells)


def compare_row(r: dict) -> dict:
    reference = r["reference_images_per_second"] or {}
    ratio = r["ratio_ours_over_reference"]
    return {
        "Ours": number(r["ours_images_per_second"]),
        "PyTorch uint8+upsample / float224": joined(
            number(reference.get("uint8_upsample")), number(reference.get("float224"))
        ),
        "Ours / PyTorch uint8+upsample / float224": joined(
            number(ratio.get("uint8_upsample"), 2), number(ratio.get("float224"), 2)
        ),
        "Reference skipped": r["reference_skipped"] or "-",
    }


def backends_row(r: dict) -> dict:
    speed, jit = r["images_per_second"], r["jit_compile"]
    return {
        "TensorFlow / JAX images/s": joined(number(speed["tensorflow"]), number(speed["jax"])),
        "JAX / TensorFlow": number(r["ratio_jax_over_tensorflow"], 2),
        "Goal": f">= {r['goal_ratio']}",
        "Goal met": "yes" if r["goal_met"] else "no",
        "Compiled (jit) TensorFlow / JAX": joined(
            *("yes" if jit[backend] else "no" for backend in ("tensorflow", "jax"))
        ),
        "Runs each": str(r["repeats"]),
    }


def throughput_row(r: dict) -> dict:
    return {
        "Images/s": number(r["images_per_second"]),
        "Median step ms": number(r["step_time_median_ms"]),
    }


def frozen_share_row(r: dict) -> dict:
    return {
        "Unfreeze": r["unfreeze"],
        "Training step ms": number(r["step_time_median_ms"], 0),
        "Frozen part's forward ms": number(r["frozen_forward_median_ms"], 0),
        "Share of the step": percent(r["frozen_share"]),
        "Step speed-up ceiling": number(r["step_speedup_ceiling"], 2) + "x",
    }


def reference_row(r: dict) -> dict:
    return {
        f"{feed} images/s": number(numbers["images_per_second"])
        for feed, numbers in sorted(r["feeds"].items(), reverse=True)
    }


def feature_cache_row(r: dict) -> dict:
    size = r["data"]
    return {
        "Train / val / test": joined(
            *(str(size[k]) for k in ("train_size", "val_size", "test_size"))
        ),
        "Epochs": str(r["epochs"]),
        "Uncached / cold cache / warm cache s": joined(
            *(number(r[run]["wall_s"]) for run in ("uncached", "cold_cache", "warm_cache"))
        ),
        "Speed-up cold / warm / per epoch": joined(
            *(
                number(value) + "x"
                for value in (
                    r["speedup"]["cold_cache"],
                    r["speedup"]["warm_cache"],
                    r["epoch_speedup"],
                )
            )
        ),
        "Test acc. uncached / cold cache": joined(
            percent(r["uncached"]["test_accuracy"]), percent(r["cold_cache"]["test_accuracy"])
        ),
        "Goal met cold / warm": joined(
            *("yes" if r["goal_met"][run] else "no" for run in ("cold_cache", "warm_cache"))
        ),
    }


def time_to_accuracy_row(r: dict) -> dict:
    return {
        "Train images": str(r["data"]["train_size"]),
        "Target": percent(r["target"]),
        "Reached at epoch": str(r["epochs_to_target"] or "not reached"),
        "Time to target s": number(r["time_to_target_s"]),
        "Compile s": number(r["compile_s"]),
        "Best test acc.": percent(r["best_test_accuracy"]),
    }


def memory_row(r: dict) -> dict:
    steps = r["steps"]
    return {
        "Micro-batch x accumulation": joined(
            *(f"{s['micro_batch_size']}x{s['gradient_accumulation_steps']}" for s in steps)
        ),
        "Estimated peak GiB": joined(*(number(s["peak_bytes"] / 2**30, 2) for s in steps)),
        "Of which temporaries GiB": joined(*(number(s["temp_bytes"] / 2**30, 2) for s in steps)),
        "Compile s": joined(*(number(s["compile_s"], 0) for s in steps)),
    }


def demo_load_row(r: dict) -> dict:
    memory = r["server_rss_mb"]
    return {
        "Model": r["backbone"],
        "Device": r["device"],
        "Requests x clients": f"{r['requests']} x {r['clients']}",
        "Uploads": ("one file, all at once" if r["same_file"] else "varied") + f"; {r['upload']}",
        "p50 s": number(r["latency_p50_s"], 2),
        "p95 s": number(r["latency_p95_s"], 2),
        "Errors": f"{r['errors']} of {r['requests']}",
        "Server MB: warm, peak, after": joined(
            *(number(memory[key], 0) for key in ("after_warm_up", "peak", "after_load"))
        ),
        "Commit": r["git_commit"] + ("+" if r.get("git_dirty") else ""),
    }


def minutes_at(run: dict) -> str:
    return f"{run['one_seed_seconds'] / 60:.1f} min ({run['git_commit']})"


def reproduce_ratio_row(r: dict) -> dict:
    new, old = r["new"], r["old"]
    return {
        "Profile": r["profile"],
        "Device": r["device"],
        "One seed, this recipe": minutes_at(new),
        "One seed, replaced recipe": minutes_at(old),
        "Ratio": f"{r['ratio']:.2f}x",
        "Goals (<= 2x, <= 20 min)": "met" if r["goals_met"] else "not met",
        "Fine-tuned test acc.": f"{percent(new['finetune_test_accuracy'])} / "
        f"{percent(old['finetune_test_accuracy'])}",
    }


# benchmark -> (title, its columns of one result)
TABLES = {
    "compare": (
        "Training throughput, images/s: ours and the PyTorch reference, same invocation",
        compare_row,
    ),
    "backends": (
        "Training throughput, images/s: JAX against TensorFlow, same code and invocation",
        backends_row,
    ),
    "throughput": ("Training throughput, ours alone", throughput_row),
    "reference_torch": ("Training throughput, PyTorch reference alone", reference_row),
    "feature_cache": (
        "Head stage: cached features against the frozen backbone every epoch",
        feature_cache_row,
    ),
    "time_to_accuracy": ("Time to a test accuracy, full fine-tuning", time_to_accuracy_row),
    "frozen_share": (
        "Fine-tuning from a stage on: the frozen part's forward pass as a share of a training "
        "step, the most that caching its activations could save",
        frozen_share_row,
    ),
    "reproduce_ratio": (
        "One-seed make reproduce (notebooks 01-05, cold caches) against the recipe it replaced, "
        "run one after the other on the same machine",
        reproduce_ratio_row,
    ),
    "demo_load": (
        "The upload demo under load (benchmarks/demo_load.py): latency per request (upload, "
        "predict, preview download), errors, the server's resident memory",
        demo_load_row,
    ),
    "memory": (
        "Memory of one training step (fully unfrozen, Adam) per micro-batch: XLA's estimate "
        "from compiling the JAX step (arguments + outputs - aliased + temporaries), not a GPU "
        "measurement",
        memory_row,
    ),
}


def row(name: str, result: dict, columns, folder: str = "results") -> dict:
    if columns in (demo_load_row, reproduce_ratio_row):  # not one training set-up
        return {
            **columns(result),
            "Date": (result.get("timestamp") or result["new"]["timestamp"])[:10],
            "File": f"[json]({folder}/{name})",
        }
    return {
        "Backbone": result["backbone"],
        "Device": result["device"],
        "Backend": result["backend"],
        "Precision": result["precision"],
        "px": str(result["image_size"]),
        "Batch": str(result["batch_size"]),
        **columns(result),
        "Load before / after": load(result),
        "Date": result["timestamp"][:10],
        "File": f"[json]({folder}/{name})",
    }


def table(benchmark: str, results: list[tuple[str, dict]], folder: str = "results") -> str:
    """``folder``: the results folder as the README holding the table links to it."""
    title, columns = TABLES[benchmark]
    rows = pd.DataFrame([row(name, result, columns, folder) for name, result in results])
    # disable_numparse: the cells are already formatted text; tabulate would reformat "96".
    return f"#### {title}\n\n" + rows.to_markdown(index=False, disable_numparse=True)


def results_by_benchmark(results_dir: Path) -> dict:
    by_benchmark = {}
    for path in sorted(results_dir.glob("*.json")):
        result = fileio.read_json(path)
        by_benchmark.setdefault(result.get("benchmark"), []).append((path.name, result))
    return by_benchmark


def summary(results_dir: Path) -> str:
    by_benchmark = results_by_benchmark(results_dir)
    tables = [table(name, by_benchmark[name]) for name in TABLES if name in by_benchmark]
    return "\n\n".join(tables) if tables else f"No results in {results_dir} yet."


# The project README shows these tables too, between <!-- marker:start/end --> lines.
ROOT_TABLES = {  # benchmark -> marker
    "memory": "memory",
    "demo_load": "demo-load",
    "reproduce_ratio": "reproduce-time",
}


def root_summary(results_dir: Path, benchmark: str) -> str:
    """The ``benchmark`` table for the project README, linking to benchmarks/results/."""
    results = results_by_benchmark(results_dir).get(benchmark)
    if not results:
        return f"No benchmarks/{benchmark}.py results in {results_dir} yet."
    return table(benchmark, results, folder="benchmarks/results")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument(
        "--memory-readme",
        type=Path,
        default=None,
        help="also write the memory and demo-load tables between their markers here "
        "(default: the project README, only when --results is the committed benchmarks/results/)",
    )
    args = parser.parse_args(argv)
    reports.update_readme(summary(args.results), args.readme, marker="bench")
    print(f"wrote {args.readme}", flush=True)
    memory_readme = args.memory_readme
    if memory_readme is not None:
        for benchmark, marker in ROOT_TABLES.items():
            reports.update_readme(root_summary(args.results, benchmark), memory_readme, marker)
        print(f"wrote {memory_readme}", flush=True)
    elif args.results.resolve() == common.RESULTS_DIR.resolve():
        # The project's documents (README, docs/) hold these tables where they have markers.
        for benchmark, marker in ROOT_TABLES.items():
            document = reports.update_document(root_summary(args.results, benchmark), marker)
            if document is not None:
                print(f"wrote {document}", flush=True)


if __name__ == "__main__":
    common.run(main)
