"""One-seed ``make reproduce`` time against the recipe it replaced, on the same machine.

Reads the ``timings.json`` that ``make reproduce`` wrote under two output roots (the
current commit's and the older commit's, each run into its own ``CIFAR10_TRANSFER_ROOT``,
one after the other) and records the one-seed time of each (notebooks 01-05; extra seeds
excluded), their ratio and the goals: at most 2x the older recipe's time, and at most 20
minutes on a 2-core machine. ``make reproduce-ratio BASE=<commit>`` makes both runs and
calls this script.

    python benchmarks/reproduce_ratio.py --new /tmp/new --old /tmp/old
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import common

from cifar10_transfer import config
from cifar10_transfer.publish import reports

GOAL_RATIO = 2.0  # the recipe issue: at most 2x the time of the recipe it replaced
GOAL_SECONDS = 20 * 60  # and at most 20 minutes on a 2-core machine like CI's


def one_seed(root: Path, profile: str) -> dict:
    """The notebooks' seconds, commit and device of the make reproduce under ``root``."""
    results = root / "results" / profile
    recorded, metrics = reports.reproduce_timings(results)
    timings = recorded["seconds"]
    missing = [name for name in config.NOTEBOOKS if name not in timings]
    if missing:
        raise ValueError(f"{results / 'notebooks' / 'timings.json'}: no time for {missing}")
    return {
        "root": str(root),
        "notebook_seconds": {name: timings[name] for name in config.NOTEBOOKS},
        "one_seed_seconds": round(sum(timings[name] for name in config.NOTEBOOKS), 1),
        "git_commit": metrics.get("git_commit"),
        "git_dirty": metrics.get("git_dirty"),
        "device": metrics["device"],
        "backend": metrics["backend"],
        "backbone": metrics["backbone"],
        "finetune_test_accuracy": metrics["test_accuracy"],
        "timestamp": metrics["timestamp"],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=Path, required=True, help="the current commit's root")
    parser.add_argument("--old", type=Path, required=True, help="the replaced recipe's root")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    new, old = one_seed(args.new, args.profile), one_seed(args.old, args.profile)
    if new["device"] != old["device"]:
        raise ValueError(f"the runs used different machines: {new['device']} and {old['device']}")
    ratio = new["one_seed_seconds"] / old["one_seed_seconds"]
    result = {
        "benchmark": "reproduce_ratio",
        "profile": args.profile,
        "new": new,
        "old": old,
        "ratio": ratio,
        "goal_ratio": GOAL_RATIO,
        "goal_seconds": GOAL_SECONDS,
        "goals_met": ratio <= GOAL_RATIO and new["one_seed_seconds"] <= GOAL_SECONDS,
        "device": new["device"],
        "cpu_count": os.cpu_count(),
        "command": common.command_line(),
    }
    out = args.out or common.RESULTS_DIR / f"reproduce_ratio-{args.profile}-cpu.json"
    common.write_result(result, out)
    print(
        f"one seed: {new['one_seed_seconds'] / 60:.1f} min ({new['git_commit']}) against "
        f"{old['one_seed_seconds'] / 60:.1f} min ({old['git_commit']}): {ratio:.2f}x",
        flush=True,
    )


if __name__ == "__main__":
    common.run(main)
