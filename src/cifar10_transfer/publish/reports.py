"""From published runs to results: error figures, summary tables, the README.

``write_summary`` turns every published run into ``summary.json`` and ``results.md``.
``eda_summary`` and ``error_analysis`` are what notebooks 01 and 05 write to ``eda.json`` and
``error_analysis.json``, which the slide deck reads. Nothing here re-runs a model: figures and
tables come from the stored predictions, and no Keras backend is imported, so the deck and the
benchmark summary use this module without one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cifar10_transfer import config, data, evaluation, fileio, plots, runs


def stage_boundary(history: pd.DataFrame) -> int | None:
    """Number of head-stage epochs in a fine-tuning history (where the curves' line goes)."""
    if "stage" not in history or history["stage"].nunique() < 2:
        return None
    return int((history["stage"] == "head").sum())


def curve_notes(history: pd.DataFrame, stage) -> str:
    """What a fine-tuning run's curves show, as Markdown bullets computed from its history
    (head epochs, then ``stage``'s): the accuracies across the stage line and what the
    learning rate did."""
    finetune = history[history["stage"] == "finetune"]
    head = history[history["stage"] == "head"]
    notes = []
    if len(head) and len(finetune):
        before, after = head.iloc[-1], finetune.iloc[0]
        notes.append(
            f"Across the stage line validation accuracy goes from {before['val_accuracy']:.1%} "
            f"to {after['val_accuracy']:.1%} and training accuracy from "
            f"{before['accuracy']:.1%} to {after['accuracy']:.1%}. "
            + (
                "Training accuracy falls because fine-tuning trains on augmented images "
                "(flips, shifts, zoom, rotation, brightness, contrast), which are harder than "
                "the head stage's unaugmented cached features; validation images are not "
                "augmented."
                if after["accuracy"] < before["accuracy"]
                else "Training accuracy does not fall although fine-tuning trains on "
                "augmented images."
            )
        )
    rates = finetune["learning_rate"].to_numpy() if "learning_rate" in finetune else []
    epochs = len(finetune)
    if stage.schedule == "plateau" and len(rates):
        cuts = [i for i in range(1, len(rates)) if rates[i] < rates[i - 1]]
        if cuts:
            notes.append(
                "ReduceLROnPlateau cut the learning rate after fine-tuning epoch"
                f"{'s' if len(cuts) > 1 else ''} {', '.join(str(i) for i in cuts)} (from "
                f"{rates[0]:.2g} to {rates[-1]:.2g}): validation loss had stalled."
            )
        else:
            notes.append(
                f"The learning rate stayed at {rates[0]:.2g} for all {epochs} fine-tuning "
                "epochs: validation loss never stalled long enough, so ReduceLROnPlateau "
                "did not fire."
            )
    elif stage.schedule == "cosine":
        notes.append("The learning rate follows the warm-up and cosine decay, step by step.")
    last = finetune.iloc[-1] if epochs else None
    if last is not None and epochs >= 2:
        rising = finetune["val_accuracy"].iloc[-1] > finetune["val_accuracy"].iloc[-2]
        notes.append(
            f"Validation accuracy ends at {last['val_accuracy']:.1%}, "
            + ("still rising at the last epoch." if rising else "no longer rising.")
        )
    return "\n".join(f"- {note}" for note in notes)


CORRUPTIONS_FILE = "corruptions.json"  # results/<profile>/: per model, evaluation's numbers


CORRUPTION_EXPERIMENTS = ("baseline_cnn", "head", "finetune")  # the models notebook 05 compares
CORRUPTION_TEST_SIZE = 1_000  # test images (100 per class): 7 passes of each model in a minute
# CIFAR-10-C's moderate severity, the same for every model (``cifar10-transfer evaluate
# --corruptions`` measures the harshest, 5, as well: twice the time in notebook 05).
CORRUPTION_SEVERITIES = (3,)


def measure_corruptions(profile_name: str, splits, results_dir) -> dict | None:
    """``evaluation.corruption_accuracies`` of the compared models trained on this machine
    (runs/<profile>/), on ``CORRUPTION_TEST_SIZE`` stratified test images, written with its
    provenance to ``results_dir/corruptions.json`` and returned; None when a model is
    missing here."""
    folders = {name: runs.run_dir(profile_name, name) for name in CORRUPTION_EXPERIMENTS}
    if not all((folder / "model.keras").exists() for folder in folders.values()):
        return None
    size = min(CORRUPTION_TEST_SIZE, len(splits.y_test))  # a smoke run has 200
    keep = data.stratified_indices(splits.y_test, size, seed=0)
    images, labels = splits.x_test[keep], splits.y_test[keep]
    measured = {}
    for name, folder in folders.items():
        model = runs.load_model(folder)
        print(f"{name}: clean and {len(evaluation.CORRUPTIONS)} corruptions", flush=True)
        accuracies = evaluation.corruption_accuracies(
            model, images, labels, severities=CORRUPTION_SEVERITIES
        )
        label = runs.experiment_label(fileio.read_json(folder / "metrics.json"))
        measured[name] = {"label": label, **accuracies}
    results = {"profile": profile_name, "models": measured, "data": splits.source,
               **runs.environment()}  # fmt: skip
    fileio.write_json(Path(results_dir) / CORRUPTIONS_FILE, results)
    return results


def corruption_table(results: dict, severity: str = "3") -> pd.DataFrame:
    """Accuracy per corruption at ``severity`` (rows, "clean" first) and model (columns, their
    labels), from ``corruptions.json``'s dict (experiment -> {"label", and
    ``evaluation.corruption_accuracies``'})."""
    columns = {}
    for entry in results["models"].values():
        measured = entry["severities"][severity]["corruptions"]
        column = {"clean": entry["clean"]}
        column.update({name: value["accuracy"] for name, value in measured.items()})
        columns[entry["label"]] = column
    return pd.DataFrame(columns)


def corruption_note(results: dict) -> str:
    """One sentence, computed, on what the corruption results mean for a user of the demo:
    the best clean model's mean share kept at each severity and its worst corruption."""
    best = max(results["models"].values(), key=lambda entry: entry["clean"])
    kept = ", ".join(
        f"{measured['mean_ratio']:.2f}× at severity {severity}"
        for severity, measured in best["severities"].items()
    )
    severity = max(best["severities"], key=int)  # the harshest measured
    corruptions = best["severities"][severity]["corruptions"]
    worst, value = min(corruptions.items(), key=lambda item: item[1]["accuracy"])
    return (
        f"{best['label']} is right on {best['clean']:.1%} of clean test images and keeps "
        f"on average {kept} of that under these corruptions; at severity {severity} it is "
        f"right on only {value['accuracy']:.1%} of {worst.replace('_', ' ')} images. For the "
        "demo: a sharp, well-lit photo gets about the accuracy of the tables above, a "
        f"{CORRUPTED_UPLOAD[worst]} one far less, however confident the demo looks."
    )


# How a user would call an upload with each corruption.
CORRUPTED_UPLOAD = {
    "gaussian_noise": "noisy",
    "gaussian_blur": "blurred",
    "low_contrast": "low-contrast",
    "brightness": "over-exposed",
    "jpeg": "heavily compressed",
    "pixelate": "pixelated",
}


def corruptions_markdown(results_dir: str | os.PathLike) -> str:
    """The README's corruption table: each model's accuracy clean and under each corruption
    at each severity measured, with the share of its clean accuracy it keeps, from
    ``results_dir/corruptions.json``."""
    results = fileio.read_json(Path(results_dir) / CORRUPTIONS_FILE)
    rows = []
    for entry in results["models"].values():
        for severity, measured in entry["severities"].items():
            row = {"model": entry["label"], "severity": severity,
                   "clean": evaluation.percent(entry["clean"])}  # fmt: skip
            for name, value in measured["corruptions"].items():
                row[name.replace("_", " ")] = (
                    f"{evaluation.percent(value['accuracy'])} ({value['ratio']:.2f}×)"
                )
            row["mean kept"] = f"{measured['mean_ratio']:.3f}×"
            rows.append(row)
    first = next(iter(results["models"].values()))
    return (
        pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)
        + "\n\nCIFAR-10-C's corruptions made in code (`evaluation.corrupt`) with that "
        f"paper's parameters at severities {' and '.join(first['severities'])} of 5, on "
        f"{first['test_images']:,} test images (stratified, seed {first['seed']}); in brackets "
        "the share of the model's clean accuracy it keeps. Generated from "
        f"`results/{Path(results_dir).name}/{CORRUPTIONS_FILE}` (code "
        f"{results.get('git_commit') or NO_COMMIT}"
        f"{' with uncommitted changes' if results.get('git_dirty') else ''})."
    )


def reliability_note(bins: pd.DataFrame, ece: float, label_smoothing: float = 0.0) -> str:
    """What a reliability diagram (``evaluation.reliability_diagram_data``) shows, computed
    from its bins: which way the bars fall, weighted by the images in each bin."""
    gap = bins["confidence"] - bins["accuracy"]
    counts = bins["count"].where(bins["count"] > 0, 0)
    total = max(int(counts.sum()), 1)
    over, under = counts[gap > 0].sum() / total, counts[gap < 0].sum() / total
    if under > over:
        verdict = (
            f"**underconfident**: in bins holding {under:.0%} of the test images the bars rise "
            "above the diagonal, so the model is right more often than its confidence says"
        )
        if label_smoothing:
            verdict += (
                f" (label smoothing {label_smoothing:g} trains it never to put all the "
                "probability on one class)"
            )
    else:
        verdict = (
            f"**overconfident**: in bins holding {over:.0%} of the test images the bars stay "
            "under the diagonal, so the model is right less often than its confidence says"
        )
    return f"This model is {verdict}. On average its confidence is off by {ece:.1%} (ECE)."


def error_figures(
    images,
    y_true,
    probabilities,
    out_dir,
    class_names=config.CLASS_NAMES,
    prefix: str = "",
    model: str = "",
) -> list[Path]:
    """Confusion matrix (titled with ``model``), per-class accuracy, misclassified examples,
    reliability diagram."""
    out_dir = Path(out_dir)
    y_pred = probabilities.argmax(axis=1)
    counts = evaluation.confusion_matrix(y_true, y_pred, num_classes=len(class_names))
    paths = {
        name: out_dir / f"{prefix}{name}.png"
        for name in ("confusion_matrix", "per_class_accuracy", "misclassified", "reliability")
    }
    plots.confusion_matrix_heatmap(counts, class_names, model, path=paths["confusion_matrix"])
    plots.per_class_accuracy_bars(
        evaluation.per_class_accuracy(y_true, y_pred, class_names), path=paths["per_class_accuracy"]
    )
    plots.misclassified_grid(
        images,
        y_true,
        y_pred,
        probabilities.max(axis=1),
        class_names=class_names,
        path=paths["misclassified"],
    )
    plots.reliability_diagram(
        evaluation.reliability_diagram_data(y_true, probabilities),
        evaluation.expected_calibration_error(y_true, probabilities),
        path=paths["reliability"],
    )
    return list(paths.values())


SEEDS_DIR = "seeds"  # results/<profile>/seeds/<seed>/<experiment>/: runs of the extra seeds


# Settings that do not change what a run computes, left out when recipes are compared.
NOT_RECIPE = ("seed", "allow_cpu", "needs_accelerator")


def recipe_differences(recorded: dict, profile: config.Profile) -> list[str]:
    """The settings in which a run's recorded profile (metrics.json's "profile") differs from
    ``profile``, as "name=there→here" strings; the seed aside."""
    wanted = profile.to_dict()
    return [
        f"{name}={recorded.get(name)!r}→{value!r}"
        for name, value in wanted.items()
        if name not in NOT_RECIPE and recorded.get(name) != value
    ]


def published_metrics(results_dir: str | os.PathLike) -> list[dict]:
    """metrics.json of every run published under ``results_dir``: ``<experiment>/`` (the
    notebooks' seed) and ``seeds/<seed>/<experiment>/`` (``make reproduce SEEDS=N``)."""
    results_dir = Path(results_dir)
    paths = sorted(results_dir.glob("*/metrics.json"))
    paths += sorted(results_dir.glob(f"{SEEDS_DIR}/*/*/metrics.json"))
    return [fileio.read_json(path) for path in paths]


NO_COMMIT = "none (not a git checkout)"


def summary_table(results_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per experiment published under ``results_dir``, in experiment order, with
    the mean and sample standard deviation over its seeds (std is NaN for one seed)."""
    rows = []
    for metrics in published_metrics(results_dir):
        data = metrics.get("data", {})
        rows.append(
            {
                "experiment": metrics["experiment"],
                "model": runs.experiment_label(metrics),
                "test_accuracy": metrics["test_accuracy"],
                "tta_test_accuracy": metrics.get("tta_test_accuracy"),
                "test_loss": metrics["test_loss"],
                "ece": metrics.get("ece"),
                "image_size": metrics.get("image_size"),
                "train_size": data.get("train_size"),
                "test_size": data.get("test_size"),
                "data_source": data.get("source"),
                "epochs": metrics.get("epochs"),
                "wall_time_s": metrics.get("wall_time_s"),
                "device": metrics.get("device"),
                "backend": metrics.get("backend"),
                "seed": metrics.get("seed"),
                # None: the code ran from an installed copy, not a git checkout
                "git_commit": metrics.get("git_commit") or NO_COMMIT,
            }
        )
    if not rows:
        raise FileNotFoundError(f"{results_dir}: no */metrics.json to summarise")
    per_run = pd.DataFrame(rows)
    first = per_run.groupby("experiment", sort=False).first()
    grouped = per_run.groupby("experiment", sort=False)
    means = grouped[["test_accuracy", "tta_test_accuracy", "test_loss", "ece", "wall_time_s"]]
    table = first.assign(
        **means.mean(),
        test_accuracy_std=grouped["test_accuracy"].std(),
        tta_test_accuracy_std=grouped["tta_test_accuracy"].std(),
        seeds=grouped["seed"].count(),
        seed=grouped["seed"].agg(lambda seeds: ",".join(str(seed) for seed in sorted(seeds))),
        git_commit=grouped["git_commit"].agg(lambda commits: ",".join(sorted(set(commits)))),
    ).reset_index()
    order = {name: index for index, name in enumerate(config.EXPERIMENTS)}
    return table.sort_values("experiment", key=lambda column: column.map(order)).reset_index(
        drop=True
    )


def comparison_labels(table: pd.DataFrame) -> list[str]:
    """Each row's model with its setting (input size, training images, device), as the
    comparison chart names our bars beside the prior results' settings."""
    return [
        f"{row.model}: {row.image_size} px, {row.train_size / 1000:g}k images, "
        f"{str(row.device).split()[0].upper()}"
        for row in table.itertuples()
    ]


# Our experiment that stands for each stage of a prior result.
LIKE_EXPERIMENTS = {"baseline": "baseline_cnn", "head": "head", "finetune": "finetune"}


def _same_setting(row, prior: config.PriorResult) -> bool:
    """Our run is on the prior result's setting: its stage and training images (within 5%:
    "all 50k" is 48k here, 2k held out for validation). The input size is each one's choice,
    as the backbone is (a lever, not the data), and the tables show both."""
    return (
        prior.train_images is not None
        and row.experiment == LIKE_EXPERIMENTS[prior.stage]
        and abs(row.train_size - prior.train_images) <= 0.05 * prior.train_images
    )


# The README's like-with-like figure, beside its table (notebook 05 draws each run's own
# in images/<profile>/).
LIKE_WITH_LIKE_FIGURE = Path("images") / "like_with_like.png"


def like_with_like(results_roots=None) -> pd.DataFrame:
    """Each of ``config.PRIOR_RESULTS`` beside our best result on its own setting
    (``_same_setting``) among the profiles with published runs in ``results_roots`` (default:
    this root's results/, then the checkout's committed ones, first found per profile);
    our columns are empty where no profile has run that setting."""
    roots = results_roots or dict.fromkeys((config.RESULTS_DIR, config.COMMITTED_RESULTS))
    tables = {}
    for root in map(Path, roots):
        for profile in config.PROFILES:
            if profile not in tables and published_metrics(root / profile):
                tables[profile] = summary_table(root / profile)
    rows = []
    for prior in config.PRIOR_RESULTS:
        matches = [
            (profile, row)
            for profile, table in tables.items()
            for row in table.itertuples()
            if _same_setting(row, prior)
        ]
        profile, ours = max(matches, key=lambda match: match[1].test_accuracy, default=(None, None))
        rows.append(
            {
                "prior": prior.label,
                "prior_accuracy": prior.accuracy,
                "train_images": prior.train_images,
                "image_size": prior.image_size,
                "device": prior.device,
                "profile": profile,
                "model": None if ours is None else ours.model,
                "accuracy": np.nan if ours is None else ours.test_accuracy,
                "accuracy_std": np.nan if ours is None else ours.test_accuracy_std,
                "seeds": 0 if ours is None else ours.seeds,
                "our_device": None if ours is None else str(ours.device).split()[0].upper(),
                "our_image_size": None if ours is None else ours.image_size,
            }
        )
    return pd.DataFrame(rows)


def like_with_like_markdown(table: pd.DataFrame) -> str:
    """The README's table of ``like_with_like``: each prior result, its setting, and ours."""

    def setting(row) -> str:
        if pd.isna(row.train_images):
            return "not recorded here"
        device = f", {row.device}" if row.device else ""
        return f"{int(row.train_images):,} training images, {int(row.image_size)} px{device}"

    def ours(row) -> str:
        if pd.isna(row.profile):
            return "– (no run of ours on this setting)"
        seeds = "1 seed" if row.seeds == 1 else f"mean of {row.seeds} seeds"
        return (
            f"{_mean_std(row.accuracy, row.accuracy_std)}: `{row.profile}`, {row.model}, "
            f"{int(row.our_image_size)} px, {row.our_device}, {seeds}"
        )

    def verdict(row) -> str:
        if pd.isna(row.profile):
            return "–"
        points = 100 * (row.accuracy - row.prior_accuracy)
        return f"{points:+.1f} points: {'ours higher' if points > 0 else 'prior higher'}"

    cells = pd.DataFrame(
        {
            "prior result": [
                f"{row.prior}: {evaluation.percent(row.prior_accuracy)}"
                for row in table.itertuples()
            ],
            "its setting": [setting(row) for row in table.itertuples()],
            "ours on that setting": [ours(row) for row in table.itertuples()],
            "ours − prior": [verdict(row) for row in table.itertuples()],
        }
    )
    return (
        cells.to_markdown(index=False, disable_numparse=True)
        + "\n\nSame setting: the same stage (from scratch, head on a frozen backbone, "
        "fine-tuned) and number of training images (within 5%), on the full test set; the "
        "backbone, the input size and the device may differ, as the columns say. Our best "
        "profile on each setting, "
        "generated from `results/<profile>/` (`reports.like_with_like`)."
    )


def _mean_std(mean, std) -> str:
    """ "85.12% ± 0.31" (points), or "85.12%" for one seed; "–" for no value."""
    if pd.isna(mean):
        return evaluation.percent(mean, 2)
    text = evaluation.percent(mean, 2)
    return text if pd.isna(std) else f"{text} ± {100 * std:.2f}"


def data_description(source: str | None) -> str:
    """What a run's data source was, for table footers: the official dataset, the JPEG copy,
    or the file or folder name."""
    name = Path(str(source or "unknown")).name
    if name.startswith(("cifar-10-python", "cifar-10-batches-py")):
        return f"the official CIFAR-10 (`{name}`)"
    if "jpeg" in name.lower():
        return f"the JPEG copy of CIFAR-10 (`{name}`)"
    return f"CIFAR-10 from `{name}`"


def results_markdown(table: pd.DataFrame, profile: str) -> str:
    """The README's results table, generated from ``summary_table``: mean ± std (points)
    over the seeds each experiment ran with."""
    cells = pd.DataFrame(
        {
            "model": table["model"],
            "test accuracy": [
                _mean_std(mean, std)
                for mean, std in zip(
                    table["test_accuracy"], table["test_accuracy_std"], strict=True
                )
            ],
            "with flip TTA": [
                _mean_std(mean, std)
                for mean, std in zip(
                    table["tta_test_accuracy"], table["tta_test_accuracy_std"], strict=True
                )
            ],
            "seeds": table["seeds"].map(str),
            "ECE": table["ece"].map("{:.3f}".format),
            "input": table["image_size"].map("{} px".format),
            "train images": table["train_size"].map("{:,}".format),
            "epochs": table["epochs"].map(str),
            "wall time": table["wall_time_s"].map(lambda seconds: f"{seconds / 60:.1f} min"),
        }
    )
    first = table.iloc[0]
    seeds = sorted({seed for text in table["seed"] for seed in str(text).split(",")}, key=int)
    if len(seeds) == 1:
        over = f"one seed ({seeds[0]}), so no spread; wall time is per run"
        sources = f"`results/{profile}/*/metrics.json`"
    else:
        over = (
            f"mean ± standard deviation (percentage points) over the seeds run "
            f"({', '.join(seeds)}); wall time is the mean per run"
        )
        sources = (
            f"`results/{profile}/*/metrics.json` and `results/{profile}/seeds/*/*/metrics.json`"
        )
    return (
        # disable_numparse: the cells are already formatted text; tabulate would reformat "3".
        cells.to_markdown(index=False, colalign=["left"] + ["right"] * 8, disable_numparse=True)
        + "\n\n"
        + f"Profile `{profile}`; {over}. Test set: {first.test_size:,} images of "
        f"{data_description(first.data_source)}; device: {first.device}; backend: "
        f"{first.backend}; code {first.git_commit}. Generated from {sources}."
    )


def write_summary(results_dir: str | os.PathLike, profile: str) -> pd.DataFrame:
    """Write ``summary.json`` and ``results.md`` into ``results_dir``; return the table."""
    results_dir = Path(results_dir)
    table = summary_table(results_dir)
    # Missing values (no TTA for baselines) as null: NaN is not valid JSON.
    runs = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    fileio.write_json(results_dir / "summary.json", {"profile": profile, "runs": runs})
    fileio.write_text(results_dir / "results.md", results_markdown(table, profile) + "\n")
    return table


TRIALS_DIR = "quick-trials"  # results/quick-trials/<trial>/: runs made to choose the quick recipe


def trials_markdown(trials_dir: str | os.PathLike) -> str:
    """The README's table of recipe trials, from ``trials_dir/*/metrics.json``: what each
    trial changed (read from the profile it recorded) and what it reached."""
    rows = []
    for path in sorted(Path(trials_dir).glob("*/metrics.json")):
        metrics = fileio.read_json(path)
        settings = metrics["profile"]
        spec = config.experiment(metrics["experiment"])
        # Each stage's own settings: the head trains on cached, unaugmented features.
        epochs, rate, batch, trains, augmented, ema = {
            "baseline": ("baseline_epochs", "baseline_learning_rate", "baseline_batch_size",
                         "all layers", settings["baseline_augment"] and spec.augments, False),
            "head": ("head_epochs", "head_learning_rate", "batch_size",
                     "head (cached features)", False, False),
            "finetune": ("finetune_epochs", "finetune_learning_rate", "batch_size",
                         settings["unfreeze"], settings["augment"], settings.get("use_ema")),
        }[spec.stage]  # fmt: skip
        rows.append(
            {
                "trial": path.parent.name,
                "model": runs.experiment_label(metrics),
                "input": f"{metrics['image_size']} px",
                "trains": trains,
                "epochs": str(settings[epochs]),
                "batch": str(settings[batch]),
                "learning rate": f"{settings[rate]:g}",
                "schedule": settings["lr_schedule"],
                "EMA": "yes" if ema else "no",
                "augmented": "yes" if augmented else "no",
                "test accuracy": evaluation.percent(metrics["test_accuracy"], 2),
                "with flip TTA": evaluation.percent(metrics.get("tta_test_accuracy"), 2),
                "wall time": f"{metrics['wall_time_s'] / 60:.1f} min",
                "code": metrics.get("git_commit") or "?",
            }
        )
    if not rows:
        raise FileNotFoundError(f"{trials_dir}: no */metrics.json to tabulate")
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def seed_groups_markdown(trials_dir: str | os.PathLike) -> str:
    """The README's table of trials repeated over seeds (folders named ``<arm>-seed<N>...``):
    for each arm, model and schedule the mean ± sample standard deviation over its seeds."""
    rows = []
    for path in sorted(Path(trials_dir).glob("*/metrics.json")):
        if not re.search(r"-seed\d+", path.parent.name):
            continue
        metrics = fileio.read_json(path)
        rows.append(
            {
                "arm": re.sub(r"-seed\d+", "", path.parent.name),
                "model": runs.experiment_label(metrics),
                "schedule": metrics["profile"]["lr_schedule"],
                "seed": metrics["seed"],
                "test_accuracy": metrics["test_accuracy"],
                "tta": metrics.get("tta_test_accuracy"),
                "code": metrics.get("git_commit") or "?",
            }
        )
    if not rows:
        raise FileNotFoundError(f"{trials_dir}: no */metrics.json of a trial over seeds")
    grouped = pd.DataFrame(rows).groupby(["arm", "model", "schedule"], sort=True)
    table = pd.DataFrame(
        {
            "seeds": grouped["seed"].agg(lambda seeds: ", ".join(map(str, sorted(seeds)))),
            "test accuracy": [
                _mean_std(group["test_accuracy"].mean(), group["test_accuracy"].std())
                for _, group in grouped
            ],
            "with flip TTA": [
                _mean_std(group["tta"].astype(float).mean(), group["tta"].astype(float).std())
                for _, group in grouped
            ],
            "code": grouped["code"].agg(lambda commits: ",".join(sorted(set(commits)))),
        }
    ).reset_index()
    return table.to_markdown(index=False, disable_numparse=True)


def _recipe(profile: config.Profile) -> str:
    parts = [
        profile.optimizer + (f" wd {profile.weight_decay:g}" if profile.weight_decay else ""),
        f"lr {profile.finetune_learning_rate:g}",
        profile.lr_schedule
        + (f" ({profile.warmup_epochs:g} warm-up)" if profile.warmup_epochs else ""),
        "BN trained" if profile.train_bn else "BN frozen",
    ]
    parts += ["EMA"] if profile.use_ema else []
    parts += [profile.mixing] if profile.mixing != "none" else []
    parts += ["RandAugment"] if profile.randaugment else []
    if profile.stochastic_depth:
        parts.append(f"stochastic depth {profile.stochastic_depth:g}")
    return ", ".join(parts)


def profiles_markdown(results_root=None) -> str:
    """The README's table of profiles: settings from ``config.PROFILES``, and where a
    ``make reproduce`` of the profile was published, its measured wall time and fine-tuned
    accuracy (mean ± std over its seeds)."""
    results_root = Path(results_root or config.RESULTS_DIR)
    rows = []
    for name, profile in config.PROFILES.items():
        folder = results_root / name
        timings = folder / "notebooks" / "timings.json"
        finetune = folder / "finetune" / "metrics.json"
        measured_time, accuracy = "not measured", "not measured"
        # Results of an earlier recipe than the profile's say so, and how it differed.
        recorded = fileio.read_json(finetune).get("profile") if finetune.exists() else None
        differences = recipe_differences(recorded, profile) if recorded else []
        earlier = f"; an earlier recipe: {', '.join(differences)}" if differences else ""
        if timings.exists():
            seconds = fileio.read_json(timings)["seconds"]
            one_seed = sum(value for key, value in seconds.items() if key.endswith(".ipynb"))
            run = "one seed; an earlier recipe" if differences else "one seed"
            measured_time = f"{one_seed / 60:.1f} min (notebooks 01-05, {run})"
        if published_metrics(folder):
            table = summary_table(folder).set_index("experiment")
            if "finetune" in table.index:
                row = table.loc["finetune"]
                seeds = "1 seed" if row.seeds == 1 else f"{row.seeds} seeds"
                mean = _mean_std(row.test_accuracy, row.test_accuracy_std)
                accuracy = f"{mean} ({seeds}{earlier})"
        rows.append(
            {
                "profile": f"`{name}`",
                "for": config.PURPOSES.get(name, ""),
                "train images": "all 48,000"
                if profile.train_size is None
                else f"{profile.train_size:,}",
                "model": f"{profile.backbone} at {profile.image_size} px",
                "epochs: head / fine-tune / baselines": (
                    f"{profile.head_epochs} / {profile.finetune_epochs} / {profile.baseline_epochs}"
                ),
                "batch": str(profile.batch_size),
                "fine-tuning": f"{profile.unfreeze}; {_recipe(profile)}",
                "measured time": measured_time,
                "fine-tuned accuracy": accuracy,
            }
        )
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def reproduce_timings(results_dir: Path) -> tuple[dict, dict]:
    """What the ``make reproduce`` behind ``results/<profile>/`` recorded: notebooks/
    timings.json (``seconds`` of each step, the machine's ``machine`` reading, a ``note``) and
    its fine-tuning run's metrics (device, commit, ...). OSError or ValueError when it has
    not run there."""
    recorded = fileio.read_json(results_dir / "notebooks" / "timings.json")
    return recorded, fileio.read_json(results_dir / "finetune" / "metrics.json")


def _short_duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def gpu_estimate(results_root: Path, profile_name: str) -> dict | None:
    """The estimated seconds per notebook of GPU profile ``profile_name`` on a T4
    (config.GPU_ESTIMATE beside ``results_root``), or None where there is none."""
    try:
        estimate = fileio.read_json(Path(results_root).parent / config.GPU_ESTIMATE)
        return estimate["profiles"][profile_name]["seconds"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def notebook_times_markdown(results_root=None) -> str:
    """The README's minutes per notebook and profile, from each profile's committed
    ``make reproduce`` (results/<profile>/notebooks/timings.json) and its device; a GPU
    profile not measured yet shows its T4 estimate (``gpu_estimate``), marked as one."""
    results_root = Path(results_root or config.RESULTS_DIR)
    columns = {}
    for name, profile in config.PROFILES.items():
        try:
            recorded, finetune = reproduce_timings(results_root / name)
            seconds, device = recorded["seconds"], finetune["device"]
        except (OSError, ValueError, KeyError, TypeError):
            estimate = gpu_estimate(results_root, name) if profile.needs_accelerator else None
            if estimate:
                # Counted compute only (no data loading or compiling): a lower bound.
                columns[f"`{name}` (T4, estimate)"] = {
                    nb: f"≥ {_short_duration(estimate[nb])} (estimate)" for nb in config.NOTEBOOKS
                }
                continue
            where = "a GPU" if profile.needs_accelerator else "a CPU"
            columns[f"`{name}`"] = {nb: f"not measured yet ({where})" for nb in config.NOTEBOOKS}
            continue
        columns[f"`{name}` ({device})"] = {
            nb: f"{seconds[nb] / 60:.1f} min" if nb in seconds else "–" for nb in config.NOTEBOOKS
        }
    return pd.DataFrame(columns).rename_axis("notebook").reset_index().to_markdown(index=False)


def documents(readme=None) -> list[Path]:
    """What users read that holds generated tables: the README and docs/*.md beside it."""
    readme = Path(readme or config.ROOT / "README.md")
    return [
        path for path in (readme, *sorted((readme.parent / "docs").glob("*.md"))) if path.exists()
    ]


def update_document(markdown: str, marker: str, readme=None) -> Path | None:
    """Write ``markdown`` between the ``marker`` lines of whichever of ``documents`` holds
    them (None when none does); links in it are relative to the checkout, so a document in
    docs/ gets them one folder up."""
    for document in documents(readme):
        if f"<!-- {marker}:start -->" in document.read_text(encoding="utf-8"):
            if document.parent != Path(readme or config.ROOT / "README.md").parent:
                markdown = re.sub(r"\]\((?!https?:|#|\.\./)([^)\s]+)\)", r"](../\1)", markdown)
            update_readme(markdown, document, marker=marker)
            return document
    return None


def quickstart_time_markdown(results_root=None) -> str:
    """How long the committed ``make reproduce`` of ``quick`` took, from its timings.json."""
    results_root = Path(results_root or config.RESULTS_DIR)
    try:
        recorded, finetune = reproduce_timings(results_root / "quick")
        timings = recorded["seconds"]
    except (OSError, ValueError, KeyError):
        return "`make reproduce` of the quick profile has no measured time yet."
    one_seed = sum(timings[name] for name in config.NOTEBOOKS)
    text = (
        f"Measured in the committed `make reproduce` of `quick` (commit "
        f"{finetune.get('git_commit') or NO_COMMIT}, {finetune['device']}): the five notebooks "
        f"took {one_seed / 60:.1f} min"
    )
    if timings.get("extra seeds"):
        text += f", and the two extra seeds of `SEEDS=3` {timings['extra seeds'] / 60:.1f} min more"
    text += " (`results/quick/notebooks/timings.json`)."
    if recorded.get("note"):
        text += f" Note: {recorded['note']}."
    machine = recorded.get("machine")
    if machine:
        ratio = machine["images_per_second"] / machine["reference_images_per_second"]
        text += (
            f" That machine read {machine['images_per_second']:.1f} images/s on "
            f"`{machine['command']}`; at the reference reading of "
            f"{machine['reference_images_per_second']:g} images/s the five notebooks would take "
            f"about {one_seed * ratio / 60:.1f} min (scaled by the ratio of the readings)."
        )
    else:
        text += " That run did not read its machine's speed."
    return text


def refresh_tables(results_root=None, readme=None) -> list[str]:
    """Regenerate every results table from its files: ``summary.json``/``results.md`` of each
    ``results/<profile>/`` with runs, and the tables between their markers in the README and
    docs/ (``documents``) where they have them. Returns what it regenerated. For results
    copied in from elsewhere, such as the GPU suite's."""
    results_root = Path(results_root or config.RESULTS_DIR)
    readme = Path(readme or config.ROOT / "README.md")
    done = []
    for folder in sorted(path for path in results_root.iterdir() if path.is_dir()):
        if folder.name in config.PROFILES and published_metrics(folder):
            table = write_summary(folder, folder.name)
            done.append(f"{folder.name} ({len(table)} models)")
            update_document(results_markdown(table, folder.name), f"results-{folder.name}", readme)
            if (folder / CORRUPTIONS_FILE).exists():
                markdown = corruptions_markdown(folder)
                if update_document(markdown, f"corruptions-{folder.name}", readme):
                    done.append(f"corruptions-{folder.name}")
    tables = {
        "like-with-like": lambda: like_with_like_markdown(like_with_like([results_root])),
        "profiles": lambda: profiles_markdown(results_root),
        "notebook-times": lambda: notebook_times_markdown(results_root),
        "quickstart-time": lambda: quickstart_time_markdown(results_root),
    }
    trials = results_root / TRIALS_DIR
    if trials.is_dir():
        tables["trials-quick"] = lambda: trials_markdown(trials)
        tables["seed-trials-quick"] = lambda: seed_groups_markdown(trials)
    text = "".join(document.read_text(encoding="utf-8") for document in documents(readme))
    for marker, markdown in tables.items():
        if f"<!-- {marker}:start -->" in text:
            update_document(markdown(), marker, readme)
            done.append(marker)
    if "like-with-like" in done:  # the README's figure shows the table's numbers
        table = like_with_like([results_root])
        if table["profile"].notna().any():
            plots.like_with_like_bars(table, path=readme.parent / LIKE_WITH_LIKE_FIGURE)
            done.append(LIKE_WITH_LIKE_FIGURE.as_posix())
    return done


def update_readme(
    markdown: str, readme: str | os.PathLike | None = None, marker: str = "results"
) -> None:
    """Replace the text between ``<!-- {marker}:start -->`` and ``<!-- {marker}:end -->``
    (the README's results tables, benchmarks/README.md's benchmark tables)."""
    readme = Path(readme or config.ROOT / "README.md")
    text = readme.read_text(encoding="utf-8")
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"{readme}: expected the markers {start} and {end}, once each, in order")
    before, rest = text.split(start)
    after = rest.split(end)[1]
    fileio.write_text(readme, f"{before}{start}\n{markdown}\n{end}{after}")


def eda_summary(dataset: data.CIFAR10) -> dict:
    """``eda.json`` (notebook 01; the deck's data slide): ``data.summary`` plus the mean and
    standard deviation of each colour channel over the training pixels (0-255, 2 decimals)."""
    pixels = dataset.x_train.reshape(-1, dataset.x_train.shape[-1])
    # float64 accumulators: a float32 sum over 51 million pixels loses precision.
    return {
        **data.summary(dataset),
        "channel_mean": np.round(pixels.mean(axis=0, dtype=np.float64), 2).tolist(),
        "channel_std": np.round(pixels.std(axis=0, dtype=np.float64), 2).tolist(),
    }


def error_analysis(run: runs.Run, class_names=config.CLASS_NAMES, top_k: int = 5) -> dict:
    """``error_analysis.json`` (notebook 05, of the best run; the deck's error and calibration
    slides): the run's test accuracies, its calibration error and its ``top_k`` most confused
    class pairs, both directions added (``evaluation.most_confused_pairs``)."""
    pairs = evaluation.most_confused_pairs(
        run.y_true,
        run.probabilities.argmax(axis=1),
        top_k=top_k,
        class_names=class_names,
        symmetric=True,
    )
    return {
        "best_experiment": run.metrics["experiment"],
        "test_accuracy": run.metrics["test_accuracy"],
        "tta_test_accuracy": run.metrics.get("tta_test_accuracy"),
        "ece": evaluation.expected_calibration_error(run.y_true, run.probabilities),
        "most_confused_pairs": pairs.to_dict(orient="records"),
    }
