"""``make reproduce``: run notebooks 01-05 with papermill, then publish the results table.

Executed notebooks, and the seconds each took (``timings.json``), are saved to
``results/<profile>/notebooks/``; the summary goes to
``results/<profile>/summary.json`` and ``results.md``, and into the README between the
``<!-- results-<profile>:start/end -->`` markers when the README has them.
"""

from __future__ import annotations

import time
from pathlib import Path

from cifar10_transfer import config, fileio, reports

NOTEBOOKS = (
    "01_eda.ipynb",
    "02_baseline_cnn.ipynb",
    "03_transfer_head.ipynb",
    "04_finetune.ipynb",
    "05_compare_and_errors.ipynb",
)


class NotebookError(RuntimeError):
    """A notebook cell raised; the message names the notebook, the cell and the error."""


def run_notebooks(parameters: dict, output_dir: Path, notebooks=None) -> list[Path]:
    """Execute ``notebooks`` (paths; default: 01-05) in order; stop at the first failing cell."""
    import papermill

    output_dir.mkdir(parents=True, exist_ok=True)
    executed, timings = [], {}
    started = time.perf_counter()
    notebooks = [
        Path(path) for path in notebooks or [config.NOTEBOOKS_DIR / name for name in NOTEBOOKS]
    ]
    for index, source in enumerate(notebooks, start=1):
        name, target = source.name, output_dir / source.name
        if not source.exists():
            raise FileNotFoundError(f"{source}: notebook not found")
        print(f"[{index}/{len(notebooks)}] {name} ...", flush=True)
        notebook_started = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(source),
                str(target),
                parameters=parameters,
                cwd=str(config.NOTEBOOKS_DIR),
                progress_bar=False,
                kernel_name="python3",
            )
        except papermill.PapermillExecutionError as error:
            raise NotebookError(
                f"{name} failed in cell {error.exec_count}: {error.ename}: {error.evalue} "
                f"(executed notebook: {target})"
            ) from None
        elapsed = time.perf_counter() - notebook_started
        total = time.perf_counter() - started
        print(
            f"[{index}/{len(notebooks)}] {name} done in {elapsed:.0f} s "
            f"(total {total / 60:.1f} min)",
            flush=True,
        )
        executed.append(target)
        timings[name] = round(elapsed, 1)
    timings["total"] = round(time.perf_counter() - started, 1)
    fileio.write_json(output_dir / "timings.json", {"seconds": timings})
    return executed


def reproduce(
    profile_name: str = "quick", overrides: dict | None = None, data=None, devices=None
) -> Path:
    """Run the five notebooks with profile ``profile_name`` changed by ``overrides`` (any
    Profile settings), write the summary and update the README; return results.md."""
    overrides = dict(overrides or {})
    profile = config.profile(profile_name, **overrides)  # unknown settings fail here
    # A GPU profile on a CPU stops here, before notebook 01, not in notebook 02.
    from cifar10_transfer import hardware

    hardware.check_accelerator(profile)
    # Notebooks run in notebooks/, not the caller's folder.
    if data is not None:
        data = str(Path(data).resolve())
    if overrides.get("weights") not in (None, "imagenet"):
        overrides["weights"] = str(Path(overrides["weights"]).resolve())
    parameters = {
        "profile_name": profile_name,
        "overrides": overrides,
        "data": data,
        "devices": devices,
    }
    results_dir = config.RESULTS_DIR / profile_name
    run_notebooks(parameters, results_dir / "notebooks")
    table = reports.summary_table(results_dir)  # written by notebook 05
    markdown = reports.results_markdown(table, profile_name)
    readme = config.ROOT / "README.md"
    marker = f"results-{profile_name}"
    if readme.exists() and f"<!-- {marker}:start -->" in readme.read_text(encoding="utf-8"):
        reports.update_readme(markdown, readme, marker=marker)
        print(f"updated the results table in {readme}")
    print(markdown)
    return results_dir / "results.md"
