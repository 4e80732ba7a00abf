"""Write the latest benchmark figures from benchmarks/results/*.json into benchmarks/README.md.

The tables go between the lines ``<!-- bench:start -->`` and ``<!-- bench:end -->``; every
figure comes from a results file, never typed by hand.

    python benchmarks/summarize.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common

from cifar10_transfer import fileio

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
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


def throughput_row(r: dict) -> dict:
    return {
        "Images/s": number(r["images_per_second"]),
        "Median step ms": number(r["step_time_median_ms"]),
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


# benchmark -> (title, its columns of one result)
TABLES = {
    "compare": (
        "Training throughput, images/s: ours and the PyTorch reference, same invocation",
        compare_row,
    ),
    "throughput": ("Training throughput, ours alone", throughput_row),
    "reference_torch": ("Training throughput, PyTorch reference alone", reference_row),
    "feature_cache": (
        "Head stage: cached features against the frozen backbone every epoch",
        feature_cache_row,
    ),
    "time_to_accuracy": ("Time to a test accuracy, full fine-tuning", time_to_accuracy_row),
}


def row(name: str, result: dict, columns) -> dict:
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
        "File": f"[json](results/{name})",
    }


def table(benchmark: str, results: list[tuple[str, dict]]) -> str:
    title, columns = TABLES[benchmark]
    rows = [row(name, result, columns) for name, result in results]
    headers = list(rows[0])
    lines = [f"#### {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cells[header] for header in headers) + " |" for cells in rows]
    return "\n".join(lines)


def summary(results_dir: Path) -> str:
    by_benchmark = {}
    for path in sorted(results_dir.glob("*.json")):
        result = fileio.read_json(path)
        by_benchmark.setdefault(result.get("benchmark"), []).append((path.name, result))
    tables = [table(name, by_benchmark[name]) for name in TABLES if name in by_benchmark]
    return "\n\n".join(tables) if tables else f"No results in {results_dir} yet."


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"{args.readme} must hold one {START} line before one {END} line")
    before, rest = text.split(START)
    after = rest.split(END)[1]
    fileio.write_text(args.readme, f"{before}{START}\n{summary(args.results)}\n{END}{after}")
    print(f"wrote {args.readme}", flush=True)


if __name__ == "__main__":
    common.run(main)
