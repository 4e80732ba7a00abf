"""Command-line interface: ``cifar10-transfer`` or ``python -m cifar10_transfer``.

Expected failures (bad data, bad arguments, missing weights) print one line
``error: ...`` to stderr and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from cifar10_transfer import __version__, config, fileio


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


# Shortcut flags for the settings changed most often; each is the same as --set KEY=VALUE.
SHORTCUTS = {
    "backbone": "efficientnet_lite0, efficientnet_lite2 or a keras.applications name",
    "weights": "imagenet, none (random init) or a local weights file (offline)",
    "image_size": "px the 32x32 input is resized to inside the model",
    "batch_size": "images per optimizer update (global)",
    "unfreeze": "head | top:N | stage:NAME | all",
    "seed": "random seed",
    "precision": "dtype policy: auto (float32 on a CPU, mixed_float16 on a GPU below compute "
    "capability 8.0 such as a T4, mixed_bfloat16 from 8.0 on), float32, mixed_float16, "
    "mixed_bfloat16",
    "gradient_accumulation_steps": "feed each batch as N micro-batches of batch_size / N and "
    "update once (same effective batch, less GPU memory; N must divide the batch size)",
}


def _add_profile_options(parser: argparse.ArgumentParser) -> None:
    """--profile, --set KEY=VALUE for any Profile setting, and the shortcut flags."""
    parser.add_argument(
        "--profile",
        default="quick",
        choices=["auto", *config.PROFILES],
        help="hyper-parameter set (default: quick, the CPU profile); auto: quick on a CPU, "
        "paper where a GPU is found, as the notebooks choose",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one Profile setting (repeatable), e.g. --set head_epochs=5; none for "
        "None (weights: random init), all for a size",
    )
    for name, help_text in SHORTCUTS.items():
        flag = "--" + name.replace("_", "-")
        choices = config.PRECISIONS if name == "precision" else None
        parser.add_argument(flag, dest=name, choices=choices, help=help_text)
    parser.add_argument(
        "--allow-cpu",
        action="store_true",
        help="train a GPU profile ("
        + ", ".join(name for name, profile in config.PROFILES.items() if profile.needs_accelerator)
        + ") on a CPU anyway, despite the estimated time it prints",
    )


def _profile_name(args: argparse.Namespace) -> str:
    """--profile, with auto resolved as the notebooks resolve it (and said so)."""
    if args.profile != "auto":
        return args.profile
    from cifar10_transfer import hardware

    name, why = hardware.choose_profile("auto")
    print(f"profile {name!r} ({why})", file=sys.stderr, flush=True)
    return name


def _overrides(args: argparse.Namespace) -> dict:
    """The settings the command line changes, each parsed by ``config.parse_setting``."""
    texts = [f"{name}={getattr(args, name)}" for name in SHORTCUTS if getattr(args, name)]
    texts += ["allow_cpu=true"] if args.allow_cpu else []
    return dict(config.parse_setting(text) for text in texts + args.set)


def cmd_train(args: argparse.Namespace) -> int:
    from cifar10_transfer import training

    overrides = _overrides(args)
    stage = config.experiment(args.experiment).stage
    if args.epochs is not None:
        # --epochs sets the epochs of the experiment's own stage.
        overrides[f"{stage}_epochs"] = args.epochs
    if stage == "baseline" and "batch_size" in overrides:
        # The baselines train with baseline_batch_size: --batch-size is that one for them.
        overrides["baseline_batch_size"] = overrides.pop("batch_size")
    profile = config.profile(_profile_name(args), **overrides)
    options = {"data": args.data, "devices": args.devices}
    # Fine-tuning starts from the head run beside it: trained first when there is none.
    training.train_prerequisite(args.experiment, profile, out_dir=args.out, **options)
    metrics = training.run_experiment(
        args.experiment, profile, out_dir=args.out, resume=args.resume, **options
    )
    keys = ("experiment", "test_accuracy", "test_loss", "epochs", "wall_time_s", "device")
    print(json.dumps({key: metrics[key] for key in keys}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cifar10_transfer import data, evaluation, models, runs
    from cifar10_transfer.publish import reports

    if args.image_size is not None:  # before any work: the run's profile, the size's range
        profile = runs.run_profile(args.model)
        config.check(config.profile(profile, image_size=args.image_size))
    model = runs.load_model(args.model)
    if args.image_size is not None:
        model = models.at_image_size(model, profile, args.image_size)
    dataset = data.load_cifar10(args.data)
    images, labels = dataset.x_test, dataset.y_test
    if args.test_size is not None:
        keep = data.stratified_indices(labels, args.test_size, seed=0)
        images, labels = images[keep], labels[keep]
    if args.tta:
        probabilities = evaluation.predict_with_tta(model, images)
    else:
        probabilities = model.predict(images, batch_size=256, verbose=0)
    report = evaluation.evaluate_predictions(labels, probabilities, dataset.class_names)
    if args.corruptions:
        report["corruptions"] = evaluation.corruption_accuracies(model, images, labels)
    if args.figures:
        written = reports.error_figures(
            images, labels, probabilities, args.figures, model=str(args.model)
        )
        print(f"wrote {len(written)} figures to {args.figures}", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"accuracy: {report['accuracy']:.4f}   loss: {report['loss']:.4f}   "
        f"ECE: {report['ece']:.4f}   ({len(labels)} test images)"
    )
    print(
        evaluation.classification_report(labels, probabilities.argmax(axis=1), dataset.class_names)
        .round(3)
        .to_string()
    )
    if args.corruptions:
        measured = report["corruptions"]
        print(
            "\ncommon corruptions (CIFAR-10-C's, at severities "
            f"{' and '.join(measured['severities'])} of 5): accuracy, and the share of the clean "
            f"accuracy kept\n  {'clean':<16}{measured['clean']:.4f}"
        )
        for severity, results in measured["severities"].items():
            print(f"  severity {severity}:")
            for name, value in results["corruptions"].items():
                print(f"  {name:<16}{value['accuracy']:.4f}  {value['ratio']:.3f}x")
            print(f"  {'mean kept':<16}        {results['mean_ratio']:.3f}x")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cifar10_transfer.publish import export

    out_dir = export.export_run(args.run_dir, args.out, data=args.data, force=args.force)
    examples = "with" if args.data else "without (no --data)"
    print(f"wrote {out_dir}/ {examples} example images; run it with: python {out_dir}/app.py")
    return 0


def cmd_presentation(args: argparse.Namespace) -> int:
    from cifar10_transfer.publish import slides

    print(slides.build_deck(args.profile, out=args.out))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import runpy

    from cifar10_transfer.publish import export

    # The demo always serves a fresh export, replacing an earlier one in --out.
    out_dir = export.export_run(args.run_dir, args.out, data=args.data, force=True)
    runpy.run_path(str(out_dir / "app.py"), run_name="__main__")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from cifar10_transfer.publish import reproduce

    if args.extra_seed is not None:
        if args.seeds != 1:
            raise ValueError("--extra-seed trains one seed alone: expected no --seeds with it")
        profile = config.check(config.profile(_profile_name(args), **_overrides(args)))
        reproduce.extra_seed(profile, args.extra_seed, args.data, args.devices)
        return 0
    try:
        reproduce.reproduce(
            _profile_name(args),
            _overrides(args),
            data=args.data,
            devices=args.devices,
            seeds=args.seeds,
        )
    except reproduce.NotebookError as error:  # the failing cell's error, not a wall of JSON
        print(f"error: {fileio.one_line(error, limit=600)}", file=sys.stderr)
        return 2
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from cifar10_transfer import hardware, models

    profile = config.profile(_profile_name(args), **_overrides(args))
    for experiment in config.EXPERIMENTS:  # ranges, backbone, weights file, unfreeze stage
        models.check_experiment(experiment, profile)
    hardware.check_accelerator(profile)  # a GPU profile on a CPU: refused, or a warning
    print(f"profile {profile.name!r}: settings checked for {', '.join(config.EXPERIMENTS)}")
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    from cifar10_transfer.publish import reports

    for table in reports.refresh_tables():
        print(f"regenerated {table}")
    return 0


EXAMPLES = """examples:
  cifar10-transfer data-info --data path/to/cifar-10-python.tar.gz
  cifar10-transfer check --profile hires --backbone resnet50   # settings only, no training
  cifar10-transfer train baseline_cnn --profile quick
  cifar10-transfer train head --profile auto --set head_epochs=5
  cifar10-transfer train finetune --resume            # after Ctrl-C: from its last epoch
  cifar10-transfer evaluate runs/quick/finetune --tta --json
  cifar10-transfer reproduce --profile quick --seeds 3
  cifar10-transfer reproduce --profile hires --extra-seed 43   # one more seed, on its own
  cifar10-transfer demo runs/quick/finetune           # the upload demo on 127.0.0.1:7860
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifar10-transfer",
        description="CIFAR-10: from-scratch baselines against transfer learning (Keras 3).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("data-info", help="load CIFAR-10 and print counts per split/class")
    _add_data_option(info)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(handler=cmd_data_info)

    train = commands.add_parser("train", help="train one experiment and write its run folder")
    train.add_argument("experiment", choices=list(config.EXPERIMENTS))
    _add_profile_options(train)
    _add_data_option(train)
    train.add_argument("--epochs", type=int, help="epochs of this experiment's stage")
    train.add_argument("--out", metavar="DIR", help="run folder (default runs/PROFILE/EXPERIMENT)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --out from its last epoch",
    )
    train.add_argument(
        "--devices",
        default=None,
        help="'all' or N devices of this machine for data-parallel training (default: 1); "
        "the batch size is global and must be a multiple of N; with KERAS_DISTRIBUTION_* "
        "set (several machines, see README) 'all'",
    )
    train.set_defaults(handler=cmd_train, backend=True)

    check = commands.add_parser(
        "check",
        help="check a profile's settings as training would (ranges, the backbone, a weights "
        "file, the unfreeze stage, a GPU profile on a CPU), without loading data or training",
    )
    _add_profile_options(check)
    check.set_defaults(handler=cmd_check, backend=True)

    evaluate = commands.add_parser("evaluate", help="test-set metrics of a saved model.keras")
    evaluate.add_argument("model", help="path to model.keras (or a run folder holding one)")
    _add_data_option(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--figures", metavar="DIR", help="write error-analysis figures here")
    evaluate.add_argument("--tta", action="store_true", help="average with horizontal flips")
    evaluate.add_argument(
        "--image-size",
        type=int,
        help="test a transfer run at this input size (px) instead of its training one (FixRes); "
        "needs its run folder",
    )
    evaluate.add_argument("--test-size", type=int, help="stratified test subset (default: all)")
    evaluate.add_argument(
        "--corruptions",
        action="store_true",
        help="also the accuracy under CIFAR-10-C's common corruptions (noise, blur, low "
        "contrast, brightness, JPEG, pixelation) at severities 3 and 5, and the share of the "
        "clean accuracy each keeps",
    )
    evaluate.set_defaults(handler=cmd_evaluate, backend=True)

    rerun = commands.add_parser(
        "reproduce", help="run notebooks 01-05 with papermill and publish the results table"
    )
    _add_profile_options(rerun)
    _add_data_option(rerun)
    rerun.add_argument("--devices", default=None, help="'all' or N devices (default: 1)")
    rerun.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train the baseline CNN, head and fine-tuning with this many seeds (the profile's "
        "seed, then +1, +2, ...); the table reports mean ± std (default: 1)",
    )
    rerun.add_argument(
        "--extra-seed",
        type=int,
        metavar="SEED",
        help="instead: train the baseline CNN, head and fine-tuning with this seed alone, no "
        "notebooks, and add them to the table beside the notebooks' seed (for profiles whose "
        "seeds do not fit one command's time)",
    )
    rerun.set_defaults(handler=cmd_reproduce)

    tables = commands.add_parser(
        "tables",
        help="regenerate results/<profile>/summary.json and the README's tables from the "
        "results files (e.g. after copying in the GPU suite's results)",
    )
    tables.set_defaults(handler=cmd_tables)

    export_help = "package a run folder as a Gradio demo for Hugging Face Spaces"
    export = commands.add_parser("export", help=export_help)
    export.add_argument("run_dir", help="run folder with model.keras and metrics.json")
    export.add_argument("--out", metavar="DIR", default="deploy", help="default: deploy/")
    export.add_argument(
        "--data",
        metavar="SRC",
        help="CIFAR-10 source for one example test image per class (default: no examples)",
    )
    export.add_argument(
        "--force", action="store_true", help="replace --out if it holds an earlier export"
    )
    export.set_defaults(handler=cmd_export, backend=True)

    demo = commands.add_parser("demo", help="export a run to --out and serve it locally")
    demo.add_argument("run_dir", help="run folder with model.keras and metrics.json")
    demo.add_argument("--out", metavar="DIR", default="deploy", help="default: deploy/")
    demo.add_argument("--data", metavar="SRC", help="CIFAR-10 source for example images")
    demo.set_defaults(handler=cmd_demo, backend=True)

    deck = commands.add_parser(
        "presentation", help="build the PDF slide deck from results/PROFILE and images/PROFILE"
    )
    deck.add_argument("--profile", default="quick", choices=list(config.PROFILES))
    deck.add_argument(
        "--out", metavar="PDF", help="default: presentation/cifar10-transfer-PROFILE.pdf"
    )
    deck.set_defaults(handler=cmd_presentation)
    return parser


def start_backend_quietly() -> None:
    """Import Keras and run one operation with file descriptor 2 pointed at a log: the
    backend's C++ start-up lines, which TF_CPP_MIN_LOG_LEVEL no longer silences, would
    otherwise stand before every error line and progress bar."""
    with fileio.stderr_to(config.cache_dir() / "backend-start.log"):
        import keras

        keras.ops.convert_to_numpy(keras.ops.zeros(()))


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter would bury the one-line errors; real errors still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "backend", False):
            start_backend_quietly()
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    except (ValueError, OSError) as error:
        # DataError and WeightsError subclass ValueError: expected, user-facing failures.
        print(f"error: {fileio.one_line(error, limit=600)}", file=sys.stderr)
        return 2
