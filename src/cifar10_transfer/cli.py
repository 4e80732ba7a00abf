"""Command-line interface: ``cifar10-transfer`` or ``python -m cifar10_transfer``.

Expected failures (bad data, bad arguments, missing weights) print one line
``error: ...`` to stderr and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from cifar10_transfer import config


def _add_data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        metavar="SRC",
        default=None,
        help="CIFAR-10 source: official cifar-10-python.tar.gz, an extracted cifar-10-batches-py/ "
        "folder, or an image-folder tree (folder or .tar.gz). Default: $CIFAR10_DATA, else "
        "download through Keras.",
    )


def cmd_data_info(args: argparse.Namespace) -> int:
    from cifar10_transfer import data

    start = time.perf_counter()
    dataset = data.load_cifar10(args.data)
    summary = data.summary(dataset)
    summary["load_time_s"] = round(time.perf_counter() - start, 3)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"source:    {summary['source']}")
    print(f"verified:  {summary['verified']} ({summary['verification']})")
    print(f"shape:     {summary['image_shape']} {summary['dtype']}")
    print(f"load time: {summary['load_time_s']:.2f} s")
    for split in ("train", "test"):
        counts = summary[split]
        print(f"{split}: {sum(counts.values())} images")
        for name, count in counts.items():
            print(f"  {name:<11} {count}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifar10-transfer",
        description="CIFAR-10: from-scratch baselines against transfer learning (Keras 3).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("data-info", help="load CIFAR-10 and print counts per split/class")
    _add_data_option(info)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(handler=cmd_data_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError) as error:
        # DataError and WeightsError subclass ValueError: expected, user-facing failures.
        print(f"error: {error}", file=sys.stderr)
        return 2
