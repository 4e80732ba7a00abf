"""``make reproduce``: run notebooks 01-05 with papermill, then publish the results table.

With ``seeds`` > 1 the baseline CNN, the head stage and fine-tuning are trained again with the
next seeds (profile seed + 1, + 2, ...) between notebooks 04 and 05, and published to
``results/<profile>/seeds/<seed>/``; notebook 05 and the table then report mean ± std.
Executed notebooks, and the seconds each step took (``timings.json``), are saved to
``results/<profile>/notebooks/``; the summary goes to
``results/<profile>/summary.json`` and ``results.md``, and into the README between the
``<!-- results-<profile>:start/end -->`` markers when the README has them. The progress
lines it prints are kept in ``results/<profile>/reproduce.log`` (an extra seed's in
``results/<profile>/seeds/<seed>/reproduce.log``), under a header that says what ran, at which
commit, and which caches were already there.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cifar10_transfer import config, fileio, runs
from cifar10_transfer import data as datasets
from cifar10_transfer.publish import reports


class NotebookError(RuntimeError):
    """A notebook cell raised; the message names the notebook, the cell and the error."""


# What the extra seeds train: the models the results table and the slides compare.
SEED_EXPERIMENTS = ("baseline_cnn", "head", "finetune")
# The kernels' environment: one line per epoch instead of a progress bar (kilobytes, not
# megabytes, of executed notebook), and no TensorFlow start-up chatter (CUDA probing, oneDNN);
# Python errors still surface.
KERNEL_ENVIRONMENT = {"CIFAR10_VERBOSE": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
LOG_NAME = "reproduce.log"
_log = None  # (open file, parameters) of the reproduce.log being written, while a run lasts


def say(text: str) -> None:
    """Print a progress line (or lines) and keep it in the run's reproduce.log, if one is
    being written, with this machine's folders taken out as in the executed notebooks."""
    print(text, flush=True)
    if _log is not None:
        file, parameters = _log
        file.write(portable_paths(text, parameters) + "\n")
        file.flush()


@contextlib.contextmanager
def progress_log(path: Path, profile: config.Profile, parameters: dict, extra_seed=None):
    """Keep what ``say`` prints in ``path``, under a header: the command, the commit, the
    caches already there (warm caches shorten a run's time). It is written to
    ``reproduce.partial.log`` beside ``path`` and becomes ``path`` when the run ends; a run
    that fails leaves ``reproduce.failed.log``, its last line the error, and ``path`` as it
    was."""
    global _log
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name("reproduce.partial.log")
    with open(partial, "w", encoding="utf-8") as file:
        _log = (file, parameters)
        try:
            for line in log_header(profile, parameters, extra_seed):
                file.write(portable_paths(line, parameters) + "\n")
            yield
        except BaseException as error:
            file.write(f"failed: {fileio.one_line(error, limit=600)}\n")
            file.close()
            os.replace(partial, path.with_name("reproduce.failed.log"))
            raise
        finally:
            _log = None
    os.replace(partial, path)


def log_header(profile: config.Profile, parameters: dict, extra_seed=None) -> list[str]:
    """What reproduce.log says before the progress lines: the command that reproduces the run
    (``--set`` for each setting that differs from the named profile), the commit, and the
    caches already there."""
    command = ["cifar10-transfer", "reproduce", "--profile", profile.name]
    named = config.profile(profile.name)
    for name in config.SETTINGS:
        value = getattr(profile, name)
        if name != "name" and value != getattr(named, name):
            command += ["--set", config.setting_text(name, value)]
    if parameters.get("data"):
        command += ["--data", f"path/to/{Path(parameters['data']).name}"]
    if parameters.get("devices"):
        command += ["--devices", str(parameters["devices"])]
    command += ["--seeds", str(parameters.get("seeds", 1))]
    if extra_seed is not None:
        command += ["--extra-seed", str(extra_seed)]
    decoded, features = (
        len(list(pattern.parent.glob(pattern.name)))
        for pattern in (
            datasets.cache_file("*"),
            runs.features_file(profile.backbone, profile.image_size, "*"),
        )
    )
    return [
        shlex.join(command),
        f"started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {runs.code_version()}",
        f"caches at the start: {decoded} decoded CIFAR-10 file(s) in <keras cache>/datasets, "
        f"{features} feature file(s) of {profile.backbone} at {profile.image_size} px in "
        "runs/features",
    ]


def run_notebooks(parameters: dict, output_dir: Path, notebooks=None, timings=None) -> dict:
    """Execute ``notebooks`` (paths; default: 01-05) in order; stop at the first failing cell.
    Each executed copy replaces the one in ``output_dir`` only when its notebook succeeded;
    a failed one is kept beside it as ``<name>.failed.ipynb``. Returns ``timings`` (a dict)
    with the seconds of each notebook added."""
    import papermill

    output_dir.mkdir(parents=True, exist_ok=True)
    timings = {} if timings is None else timings
    notebooks = [
        Path(path)
        for path in notebooks or [config.NOTEBOOKS_DIR / name for name in config.NOTEBOOKS]
    ]
    for source in notebooks:
        name, target = source.name, output_dir / source.name
        if not source.exists():
            raise FileNotFoundError(f"{source}: notebook not found")
        say(f"[{name}] ...")
        notebook_started = time.perf_counter()
        partial, failed = target.with_suffix(".partial.ipynb"), target.with_suffix(".failed.ipynb")
        log = target.with_suffix(".kernel.log")
        with tempfile.TemporaryDirectory() as sockets, open(log, "w") as kernel_output:
            kernel = _kernel_manager(sockets, kernel_output)
            try:
                papermill.execute_notebook(
                    str(source),
                    str(partial),
                    parameters=parameters,
                    cwd=str(config.NOTEBOOKS_DIR),
                    progress_bar=False,
                    kernel_name="python3",
                    km=kernel,
                    # What the kernel's libraries write to its file descriptors (TensorFlow's
                    # C++ start-up logs, which no setting silences) goes to the log, not
                    # into the notebook; Python's warnings and errors still show in the cells.
                    extra_arguments=["--IPKernelApp.capture_fd_output=False"],
                )
            except papermill.PapermillExecutionError as error:
                os.replace(partial, failed)
                raise NotebookError(
                    f"{name} failed in cell {error.exec_count}: {error.ename}: {error.evalue} "
                    f"(executed notebook: {failed})"
                ) from None
            finally:
                # papermill leaves a kernel it was handed running: each would keep its
                # models and data in memory until make reproduce ends.
                if kernel.has_kernel:
                    kernel.shutdown_kernel(now=True)
        fileio.write_text(target, portable_paths(partial.read_text(encoding="utf-8"), parameters))
        partial.unlink()
        elapsed = time.perf_counter() - notebook_started
        timings[name] = round(elapsed, 1)
        total = sum(timings.values())  # earlier notebooks and extra seeds of this run too
        say(f"[{name}] done in {elapsed:.0f} s (total {total / 60:.1f} min)")
    return timings


def portable_paths(text: str, parameters: dict) -> str:
    """An executed notebook's text with this machine's folders taken out of its paths: the
    project's (``notebooks/...``, ``runs/...``) become relative, and the data file keeps only
    its name, so a committed copy reads the same on every machine."""
    folders = [f"{config.ROOT}/", f"{config.CHECKOUT}/"]
    data = parameters.get("data")
    if data and Path(data).is_file():
        folders += [f"{Path(data).resolve().parent}/", f"{Path(data).parent}/"]
    for folder in sorted(set(folders), key=len, reverse=True):  # the longest first
        if folder not in ("/", "./"):
            text = text.replace(folder, "")
    return text


def _kernel_manager(sockets: str, output):
    """A local python3 kernel on IPC sockets in ``sockets`` (not TCP: the kernel is local, and
    ipykernel warns about plain TCP), its process's stdout and stderr going to ``output``."""
    from jupyter_client.manager import KernelManager

    class LoggedKernelManager(KernelManager):
        def start_kernel(self, **kw):
            return super().start_kernel(stdout=output, stderr=output, **kw)

    transport = {"transport": "ipc", "ip": f"{sockets}/kernel"} if os.name == "posix" else {}
    return LoggedKernelManager(kernel_name="python3", **transport)


def train_seeds(profile: config.Profile, seeds, data=None, devices=None) -> Path:
    """Train ``SEED_EXPERIMENTS`` once per seed in ``seeds``; publish each run to
    ``results/<profile>/seeds/<seed>/``. Returns that seeds folder."""
    from cifar10_transfer import training

    results = config.RESULTS_DIR / profile.name / reports.SEEDS_DIR
    for seed in seeds:
        folders = {name: runs.run_dir(profile.name, name, seed=seed) for name in SEED_EXPERIMENTS}
        seeded = config.profile(profile, seed=seed)
        for experiment, folder in folders.items():
            say(f"[seed {seed}] {experiment} ...")
            metrics = training.run_experiment(
                experiment, seeded, data=data, out_dir=folder, devices=devices
            )
            runs.publish_run(folder, results / str(seed), predictions=False)
            say(
                f"[seed {seed}] {experiment}: test accuracy "
                f"{metrics['test_accuracy']:.2%} in {metrics['wall_time_s'] / 60:.1f} min "
                f"({metrics['epochs']} epoch{'' if metrics['epochs'] == 1 else 's'})"
            )
    return results


def extra_seed(profile: config.Profile, seed: int, data=None, devices=None) -> Path:
    """``make reproduce SEED=N``: train ``SEED_EXPERIMENTS`` with seed ``seed`` alone (no
    notebooks), beside the runs of an earlier or later one-seed ``make reproduce`` in the
    table, for profiles whose extra seeds do not fit one command's time. Its progress lines
    go to ``results/<profile>/seeds/<seed>/reproduce.log``. Returns results.md."""
    if seed == profile.seed:
        raise ValueError(
            f"seed={seed} is the notebooks' own seed: expected another one (make reproduce "
            f"PROFILE={profile.name} trains {seed})"
        )
    drop_other_recipes(profile)  # first: it may delete this seed's own folder
    results = config.RESULTS_DIR / profile.name
    parameters = {"data": data, "devices": devices, "seeds": 1}
    log = results / reports.SEEDS_DIR / str(seed) / LOG_NAME
    with progress_log(log, profile, parameters, extra_seed=seed):
        train_seeds(profile, [seed], data, devices)
        for table in reports.refresh_tables():
            say(f"regenerated {table}")
        say((results / "results.md").read_text(encoding="utf-8").rstrip("\n"))
    return results / "results.md"


def drop_other_recipes(profile: config.Profile) -> None:
    """Delete the extra seeds in results/<profile>/seeds/ that ran another recipe than
    ``profile`` (any setting but the seed differs): they must not mix into its table."""
    for folder in sorted((config.RESULTS_DIR / profile.name / reports.SEEDS_DIR).glob("*")):
        recipes = [fileio.read_json(path)["profile"] for path in folder.glob("*/metrics.json")]
        if any(reports.recipe_differences(recipe, profile) for recipe in recipes):
            say(f"dropping {folder} (another recipe than this one)")
            shutil.rmtree(folder)


def find_results(profile: config.Profile, data=None, devices=None) -> tuple[Path, str]:
    """The results notebook 05 compares, and a sentence saying which they are. In order:
    results/<profile>/ under this root (runs made here: notebooks 02-04 or make reproduce),
    else the checkout's committed results/<profile>/, else none: then ``SEED_EXPERIMENTS``
    are trained here, now, at ``profile`` (printing so) and published."""
    from cifar10_transfer import training

    for folder in dict.fromkeys((config.RESULTS_DIR, config.COMMITTED_RESULTS)):
        found = reports.published_metrics(folder / profile.name)
        if found:
            commits = sorted({metrics.get("git_commit") or reports.NO_COMMIT for metrics in found})
            return folder / profile.name, (
                f"{len(found)} published runs in {folder / profile.name}, made by commit(s) "
                f"{', '.join(commits)}"
            )
    print(
        f"no results of profile {profile.name!r} in {config.RESULTS_DIR} or committed: "
        f"training {', '.join(SEED_EXPERIMENTS)} now",
        flush=True,
    )
    results = config.RESULTS_DIR / profile.name
    for experiment in SEED_EXPERIMENTS:
        training.run_experiment(experiment, profile, data=data, devices=devices)
        runs.publish_run(runs.run_dir(profile.name, experiment), results)
    return results, f"runs trained just now by this notebook, in {results}"


def _recipe_note(recorded: dict, profile: config.Profile) -> str:
    differences = reports.recipe_differences(recorded, profile)
    if not differences:
        return "the same recipe as this run"
    return f"another recipe than this run's ({', '.join(differences)})"


def expected_time(profile: config.Profile, notebook: str) -> str:
    """What ``notebook`` took in the committed ``make reproduce`` of ``profile``'s name
    (results/<profile>/notebooks/timings.json), and whether that ran this recipe, as a
    sentence."""
    name = profile.name
    try:
        recorded, finetune = reports.reproduce_timings(config.COMMITTED_RESULTS / name)
        seconds, device = recorded["seconds"][notebook], finetune["device"]
        recipe = _recipe_note(finetune.get("profile", {}), profile)
    except (OSError, ValueError, KeyError, TypeError):
        estimate = reports.gpu_estimate(config.COMMITTED_RESULTS, name)
        if estimate and notebook in estimate:
            return (
                f"{notebook} has no measured time for profile {name!r} yet; at "
                f"least {estimate[notebook] / 60:.1f} min on a T4 is the estimate from its "
                "counted FLOPs, before start-up and compilation (benchmarks/gpu_estimate.py)"
            )
        return (
            f"{notebook} has no measured time for profile {name!r} yet "
            f"(make reproduce PROFILE={name} measures it)"
        )
    return (
        f"{notebook} took {seconds / 60:.1f} min in the committed make reproduce of "
        f"{name!r} on {device}, {recipe}"
    )


def expected_result(profile: config.Profile, experiment: str) -> str:
    """What ``experiment`` reached in the committed ``make reproduce`` of ``profile``'s name
    (results/<profile>/*/metrics.json and seeds/), and whether that ran this recipe, as a
    sentence for a notebook to print."""
    folder = config.COMMITTED_RESULTS / profile.name
    try:
        table = reports.summary_table(folder)
        row = table.set_index("experiment").loc[experiment]
        recorded = fileio.read_json(folder / experiment / "metrics.json").get("profile", {})
    except (OSError, ValueError, KeyError):
        return (
            f"no committed result of {experiment} for profile {profile.name!r} yet "
            f"(make reproduce PROFILE={profile.name} makes one)"
        )
    spread = "" if row["seeds"] < 2 else f" ± {100 * row['test_accuracy_std']:.2f}"
    where = (
        f"{row['model']} in the committed make reproduce of {profile.name!r} (mean over "
        f"{row['seeds']} seed(s), {row['device']}, {row['backend']}, commit {row['git_commit']})"
    )
    if reports.recipe_differences(recorded, profile):
        return (
            f"the committed result comes from {_recipe_note(recorded, profile)}, so it is no "
            f"promise for this one: {100 * row['test_accuracy']:.2f}%{spread} test accuracy, "
            f"{where}"
        )
    return f"expect about {100 * row['test_accuracy']:.2f}%{spread} test accuracy: {where}"


# The machine's speed, read before the notebooks (about 30 s): training images/s of
# benchmarks/throughput.py with these arguments. Machines differ by up to 2x from day to day;
# a time goal holds at REFERENCE_READING, and a run elsewhere is scaled by the readings' ratio.
READING_ARGUMENTS = (
    "--backbone", "efficientnet_lite2", "--weights", "none", "--image-size", "96",
    "--batch-size", "64", "--precision", "float32", "--steps", "8", "--warmup", "3",
)  # fmt: skip
REFERENCE_READING = 124.8  # images/s, on 2026-12-02: the machine the time goals were set on
READING_FILE = "machine_reading.json"


def machine_reading(notebooks_dir: Path) -> dict | None:
    """Run the reading command and keep its result in ``notebooks_dir``; what timings.json
    records of it, or None (with a line saying why) where the checkout has no benchmarks/."""
    script = config.CHECKOUT / "benchmarks" / "throughput.py"
    if not script.exists():
        say(f"no {script}: this run's speed is not read")
        return None
    out = notebooks_dir / READING_FILE
    command = [sys.executable, str(script), *READING_ARGUMENTS, "--out", str(out)]
    say("reading this machine's speed (benchmarks/throughput.py, about 30 s)")
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise RuntimeError(f"benchmarks/throughput.py failed: {done.stderr.strip()[-500:]}")
    reading = fileio.read_json(out)["images_per_second"]
    say(f"this machine: {reading:.1f} images/s (reference {REFERENCE_READING})")
    return {
        "images_per_second": round(reading, 1),
        "reference_images_per_second": REFERENCE_READING,
        "command": "python benchmarks/throughput.py " + " ".join(READING_ARGUMENTS),
        "file": READING_FILE,
    }


def check_settings(profile_name: str, overrides: dict) -> str:
    """A ValueError, before any notebook, for a setting the notebooks would refuse only once
    they reach it: a misspelt backbone, a missing weights file, an unknown ``unfreeze`` stage,
    a GPU profile on a CPU. ``cifar10-transfer check`` runs the training's own checks in a
    process of its own: they need Keras, which this process does not start (the kernels
    train). Returns what it printed (what it checked; a warning such as ``allow_cpu``'s)."""
    command = [sys.executable, "-m", "cifar10_transfer", "check", "--profile", profile_name]
    for name, value in overrides.items():
        command += ["--set", config.setting_text(name, value)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise ValueError(f"profile {profile_name!r}: {lines[-1].removeprefix('error: ')}")
    return done.stdout.rstrip("\n")


def reproduce(
    profile_name: str = "quick",
    overrides: dict | None = None,
    data=None,
    devices=None,
    seeds: int = 1,
) -> Path:
    """Run the five notebooks with profile ``profile_name`` changed by ``overrides`` (any
    Profile settings), and with ``seeds`` > 1 the extra seeds; write the summary and update
    the README; return results.md."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    overrides = dict(overrides or {})
    # Unknown settings and values of the wrong type or out of range fail here at once.
    profile = config.check(config.profile(profile_name, **overrides))
    # Notebooks run in notebooks/, not the caller's folder.
    if data is not None:
        data = str(Path(data).resolve())
    if overrides.get("weights") not in (None, "imagenet"):
        overrides["weights"] = str(Path(overrides["weights"]).resolve())
    checked = check_settings(profile_name, overrides)  # before notebook 01, not in 03 after 02
    parameters = {
        "profile_name": profile_name,
        "overrides": overrides,
        "data": data,
        "devices": devices,
    }
    results_dir = config.RESULTS_DIR / profile_name
    notebooks_dir = results_dir / "notebooks"
    for variable, value in KERNEL_ENVIRONMENT.items():
        os.environ.setdefault(variable, value)  # the kernels inherit it
    notebooks_dir.mkdir(parents=True, exist_ok=True)
    with progress_log(results_dir / LOG_NAME, profile, {**parameters, "seeds": seeds}):
        if checked:
            say(checked)
        reading = machine_reading(notebooks_dir)  # before the notebooks, not in their time
        started = time.perf_counter()
        paths = [config.NOTEBOOKS_DIR / name for name in config.NOTEBOOKS]
        timings = run_notebooks(parameters, notebooks_dir, paths[:-1])
        if seeds > 1:  # earlier extra-seed results would mix into the table: replace them
            shutil.rmtree(results_dir / reports.SEEDS_DIR, ignore_errors=True)
        else:  # those of --extra-seed stay where they ran this recipe
            drop_other_recipes(profile)
        if seeds > 1:
            seeds_started = time.perf_counter()
            # These train in this process: what TensorFlow's C++ code writes to stderr (its
            # start-up logs) goes to a log beside the notebooks' kernel logs, as theirs does.
            with fileio.stderr_to(notebooks_dir / "seeds.kernel.log"):
                seeds_run = range(profile.seed + 1, profile.seed + seeds)
                train_seeds(profile, seeds_run, data, devices)
            timings["extra seeds"] = round(time.perf_counter() - seeds_started, 1)
        run_notebooks(parameters, notebooks_dir, paths[-1:], timings)
        timings["total"] = round(time.perf_counter() - started, 1)
        fileio.write_json(
            notebooks_dir / "timings.json",
            {"seconds": timings, "seeds": seeds, "machine": reading},
        )
        # The README's tables (this profile's results, the profiles' measured times) follow.
        for table in reports.refresh_tables():
            say(f"regenerated {table}")
        say((results_dir / "results.md").read_text(encoding="utf-8").rstrip("\n"))
    return results_dir / "results.md"
