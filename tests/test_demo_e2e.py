"""End to end: an exported demo served on localhost and driven by headless Chromium.

Needs Debian's chromium (/usr/bin/chromium) and the playwright package. In CI (CI=true) a
missing chromium is installed with apt-get, and failing that the tests fail; elsewhere they skip.

Run as a script to (re)take the README screenshot with a trained run:

    python tests/test_demo_e2e.py runs/quick/finetune --data ../shared/data/cifar10-jpeg.tar.gz
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_demo import make_image_tree, make_run_folder

from cifar10_transfer import config
from cifar10_transfer.publish import export

IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",  # the app is on localhost; never route it through a proxy
]
VIEWPORT = {"width": 1280, "height": 860}
SERVER_START_S = 180  # importing TensorFlow and Gradio on a busy 2-core machine is slow
RESULT_TIMEOUT_MS = 30_000


def require_browser() -> None:
    """Install Debian's chromium in CI when missing; skip (outside CI) or fail without it."""
    if not CHROMIUM.exists() and IN_CI:
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            subprocess.run(command, env=environment, capture_output=True, check=False)
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install -y chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package (pip install -r requirements.txt)")
    if not missing:
        return
    message = "browser tests need " + " and ".join(missing)
    if IN_CI:
        pytest.fail(message + "; CI must run them")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve(folder: Path):
    """Run ``python app.py`` in ``folder`` on a free localhost port; yield its URL."""
    port = free_port()
    environment = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    log_path = folder.parent / f"server-{port}.log"
    url = f"http://127.0.0.1:{port}/"
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "app.py"], cwd=folder, env=environment, stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + SERVER_START_S
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"app.py exited early:\n{log_path.read_text()[-3000:]}")
                try:
                    no_proxy.open(url, timeout=2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"app.py did not answer on {url} in time") from None
                    time.sleep(0.5)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_demo(browser, url: str):
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(url)
    page.wait_for_selector("#upload input[type=file]", state="attached")
    return page


def wait_for_status(page, text: str) -> str:
    page.wait_for_function(
        "text => document.querySelector('#status').innerText.includes(text)",
        arg=text,
        timeout=RESULT_TIMEOUT_MS,
    )
    page.wait_for_timeout(500)  # let the output components finish their fade-in
    return page.locator("#status").inner_text()


def shown_top3(page) -> list[tuple[str, float]]:
    """The (class, probability) rows of the gr.Label, as displayed."""
    text = page.locator("#label").inner_text()
    rows = re.findall(r"^(\w+)\n(\d+(?:\.\d+)?)%$", text, flags=re.MULTILINE)
    return [(name, float(percent) / 100) for name, percent in rows]


def screenshot(run_dir, data, out_path, example: str = "ship") -> Path:
    """Export ``run_dir`` with examples, click the ``example`` class's image, save a PNG."""
    with tempfile.TemporaryDirectory() as temporary:
        folder = export.export_run(run_dir, Path(temporary) / "deploy", data=data)
        with serve(folder) as url, chromium() as browser:
            page = open_demo(browser, url)
            page.locator(f"#examples img[src$='/{example}.png']").click()
            wait_for_status(page, "Best guess")
            out_path = Path(out_path)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out_path), full_page=True)
    return out_path


# ---------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    require_browser()
    base = tmp_path_factory.mktemp("e2e")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_HOME", str(base / "keras_home"))  # the data module's cache
        folder = export.export_run(
            make_run_folder(base / "run"), base / "deploy", make_image_tree(base / "tree")
        )
    with serve(folder) as url:
        yield url


@pytest.fixture(scope="module")
def browser(demo_url):
    with chromium() as browser:
        yield browser


def test_upload_shows_top3_classes_and_model_input(browser, demo_url, tmp_path):
    photo = tmp_path / "photo.png"
    Image.effect_mandelbrot((400, 300), (-2, -1, 1, 1), 60).convert("RGB").save(photo)
    page = open_demo(browser, demo_url)
    page.locator("#upload input[type=file]").set_input_files(str(photo))
    status = wait_for_status(page, "Best guess")
    top3 = shown_top3(page)
    assert len(top3) == 3
    assert all(name in config.CLASS_NAMES and 0 <= p <= 1 for name, p in top3), top3
    assert [p for _, p in top3] == sorted((p for _, p in top3), reverse=True)
    assert f"Best guess: {top3[0][0]}" in status
    assert page.locator("#preview img").is_visible()
    page.screenshot(path=str(tmp_path / "prediction.png"), full_page=True)
    assert (tmp_path / "prediction.png").stat().st_size > 10_000


def test_clicking_an_example_classifies_it(browser, demo_url):
    page = open_demo(browser, demo_url)
    page.locator("#examples img[src$='/cat.png']").click()
    wait_for_status(page, "Best guess")
    assert len(shown_top3(page)) == 3


def test_non_image_upload_shows_a_readable_error(browser, demo_url, tmp_path):
    fake = tmp_path / "holiday.jpg"
    fake.write_text("not really a JPEG")
    page = open_demo(browser, demo_url)
    page.locator("#upload input[type=file]").set_input_files(str(fake))
    status = wait_for_status(page, "Could not classify")
    assert "not an image" in status
    assert shown_top3(page) == []
    page.screenshot(path=str(tmp_path / "error.png"), full_page=True)


def test_oversized_upload_is_refused_by_the_server_limit(browser, demo_url, tmp_path):
    big = tmp_path / "huge.png"
    big.write_bytes(np.random.default_rng(0).bytes(11 * 2**20))  # over launch(max_file_size)
    page = open_demo(browser, demo_url)
    page.locator("#upload input[type=file]").set_input_files(str(big))
    page.get_by_text("exceed the maximum allowed size").wait_for(timeout=RESULT_TIMEOUT_MS)
    assert "Upload an image" in page.locator("#status").inner_text()  # predict never ran


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Screenshot the demo for the README.")
    parser.add_argument("run_dir", help="run folder with model.keras and metrics.json")
    parser.add_argument("--data", required=True, help="CIFAR-10 source for the example images")
    parser.add_argument("--example", default="ship", choices=config.CLASS_NAMES)
    parser.add_argument("--out", default=str(config.IMAGES_DIR / "demo.png"))
    args = parser.parse_args()
    print(screenshot(args.run_dir, args.data, args.out, args.example))
