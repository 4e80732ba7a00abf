"""CIFAR-10 image classifier: a Gradio demo for Hugging Face Spaces or a local run.

Self-contained on purpose: it needs only keras, one Keras backend, gradio, pillow and numpy,
never the training package. It serves the files ``cifar10-transfer export`` writes next to it:
model.keras, class_names.json, metrics.json (optional) and examples/*.png (optional).

Environment: CIFAR10_MODEL (model path, default ./model.keras), CIFAR10_CACHE_MAX_AGE_S
(seconds an upload or preview stays in Gradio's cache, default 3600), GRADIO_SERVER_NAME
(default 127.0.0.1; Spaces sets 0.0.0.0) and GRADIO_SERVER_PORT (default 7860).
"""

from __future__ import annotations

import collections
import functools
import json
import os
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import gradio as gr
import keras
import numpy as np
from PIL import Image, ImageFile

HERE = Path(__file__).resolve().parent
# imaging.py beside this file (export copies it): the image conversion the training data
# used, so uploads become RGB exactly as the training images did.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import imaging  # noqa: E402, I001

MODEL_PATH = Path(os.environ.get("CIFAR10_MODEL", HERE / "model.keras"))
IMAGE_SIZE = imaging.IMAGE_SIZE  # the model's input side, px: CIFAR-10's resolution
PREVIEW_SCALE = 7  # 32 px shown as 224 px
# Gradio keeps every upload and preview in its cache folder; files older than this are swept
# (checked every quarter of it), so a long-running Space does not fill its disk.
CACHE_MAX_AGE_S = int(os.environ.get("CIFAR10_CACHE_MAX_AGE_S", "3600"))
if not 1 <= CACHE_MAX_AGE_S <= 7 * 24 * 3600:
    raise SystemExit(f"error: CIFAR10_CACHE_MAX_AGE_S={CACHE_MAX_AGE_S}: expected 1 to 604800 s")
PREVIEWS_KEPT = 64  # preview files kept in PREVIEW_DIR; Gradio copies each as its request ends
PREVIEW_DIR = Path(tempfile.mkdtemp(prefix="cifar10-previews-"))

# The upload decoding the notebooks use too (imaging.load_image), and its limits.
ImageRejected, load_image = imaging.ImageRejected, imaging.load_image
MAX_FILE_BYTES = imaging.MAX_FILE_BYTES  # also given to Gradio
# Pillow's decompression-bomb guard: warn above MAX_IMAGE_PIXELS, raise above twice that. Make
# the warning an error too, so a small file can never decode into gigabytes of pixels.
Image.MAX_IMAGE_PIXELS = imaging.MAX_IMAGE_PIXELS
warnings.simplefilter("error", Image.DecompressionBombWarning)
# Pillow's default, set explicitly: a truncated file must fail instead of being padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@functools.cache
def load_classifier() -> tuple[keras.Model, list[str]]:
    """The model (safe_mode: no arbitrary code from the file) and its class names, loaded once."""
    if not MODEL_PATH.is_file():
        raise FileNotFoundError(f"model file {MODEL_PATH} not found (set CIFAR10_MODEL)")
    model = keras.saving.load_model(MODEL_PATH, safe_mode=True)
    model.predict_on_batch(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))  # compiles it
    class_names = json.loads((HERE / "class_names.json").read_text())
    return model, class_names


_previews: collections.deque[Path] = collections.deque()
_previews_lock = threading.Lock()


def save_preview(pixels: np.ndarray) -> str:
    """The 32x32 input enlarged with nearest neighbour (every pixel a visible block), as a PNG
    under a name no other request uses; returns its path.

    Returned as an array instead, Gradio would write it to a file named by its content, in
    place: two identical uploads at the same moment rewrite the file one of them is
    downloading ("Too little data for declared Content-Length"). A path is copied into the
    cache under a temporary name and renamed, and an existing copy is reused, never rewritten.
    """
    preview = pixels.repeat(PREVIEW_SCALE, axis=0).repeat(PREVIEW_SCALE, axis=1)
    handle, name = tempfile.mkstemp(suffix=".png", dir=PREVIEW_DIR)
    with os.fdopen(handle, "wb") as file:
        Image.fromarray(preview).save(file, format="png")
    with _previews_lock:
        _previews.append(Path(name))
        # Gradio has copied the older ones already: at most PREVIEWS_KEPT requests run at once.
        while len(_previews) > PREVIEWS_KEPT:
            _previews.popleft().unlink(missing_ok=True)
    return name


def predict(path: str | None) -> tuple[dict[str, float] | None, str | None, str]:
    """(class -> probability, the preview's path (save_preview), status message)."""
    if path is None:
        return None, None, "Upload an image or click an example."
    try:
        pixels = load_image(path)
    except ImageRejected as error:
        return None, None, f"**Could not classify this file.** {error}"
    model, class_names = load_classifier()
    start = time.perf_counter()
    # predict_on_batch runs a compiled graph: ~10x faster than an eager model(...) call on CPU.
    probabilities = model.predict_on_batch(pixels[None])[0]
    elapsed_ms = (time.perf_counter() - start) * 1000
    scores = {name: float(p) for name, p in zip(class_names, probabilities, strict=True)}
    best = max(scores, key=scores.get)
    message = (
        f"Best guess: **{best}** ({scores[best]:.0%}), computed in {elapsed_ms:.0f} ms. "
        "The model always answers with one of the 10 classes, even for images showing none."
    )
    return scores, save_preview(pixels), message


def classify_upload(upload: dict | None):
    """The upload event's handler: Gradio's file record (the event runs with preprocess=False).

    gr.Image's own preprocessing would open the file with Pillow before predict runs, so a
    non-image, an empty file or a decompression bomb would fail inside Gradio with a bare "Error".
    Skipping it (Gradio still moves the upload into its cache and checks the path) lets
    load_image validate the raw file and say what is wrong.
    """
    return predict(upload.get("path") if upload else None)


def _headline() -> str:
    metrics_path = HERE / "metrics.json"
    if not metrics_path.is_file():
        return ""
    metrics = json.loads(metrics_path.read_text())
    if metrics.get("backbone"):
        model = f"{metrics['backbone']} (ImageNet transfer, {metrics.get('image_size')} px)"
    else:
        model = f"{metrics.get('experiment', 'CNN')} (trained from scratch)"
    test_size = metrics.get("data", {}).get("test_size")
    images = f"{test_size:,} CIFAR-10 test images" if test_size else "the CIFAR-10 test set"
    return f" Model: {model}, **{metrics['test_accuracy']:.1%}** accurate on {images}."


def build_demo() -> gr.Blocks:
    _, class_names = load_classifier()
    sweep = (max(1, CACHE_MAX_AGE_S // 4), CACHE_MAX_AGE_S)  # (every, older than), s
    with gr.Blocks(title="CIFAR-10 classifier", delete_cache=sweep) as demo:
        gr.Markdown(
            "# CIFAR-10 image classifier\n"
            f"Recognises {len(class_names)} classes: {', '.join(class_names)}.{_headline()}\n\n"
            "It was trained on tiny **32x32 pixel** images, so your photo is cropped to a square "
            "and shrunk to 32x32 first: the right-hand picture shows what the model actually "
            "sees. It has no 'none of these' answer, and can be confidently wrong on anything "
            "that is not one of these classes."
        )
        with gr.Row(equal_height=False):
            with gr.Column():
                upload = gr.Image(
                    type="filepath",
                    label="Your image",
                    sources=["upload", "clipboard"],
                    height=300,
                    elem_id="upload",
                )
                examples = sorted((HERE / "examples").glob("*.png"))
                if examples:
                    gr.Examples(
                        [[str(path)] for path in examples],
                        inputs=upload,
                        examples_per_page=len(examples),
                        cache_examples=False,  # clicking sets the upload, which runs predict
                        label="Examples from the CIFAR-10 test set",
                        elem_id="examples",
                    )
            with gr.Column():
                label = gr.Label(num_top_classes=3, label="Top 3 classes", elem_id="label")
                preview = gr.Image(
                    label="What the model sees (32x32, enlarged)",
                    format="png",  # lossless: webp would blur the pixel blocks
                    interactive=False,
                    height=240,
                    elem_id="preview",
                )
                status = gr.Markdown("Upload an image or click an example.", elem_id="status")
        upload.change(
            classify_upload,
            inputs=upload,
            outputs=[label, preview, status],
            preprocess=False,
            # One prediction at a time (Gradio's default, stated here): the model's threads
            # already use every core, and save_preview keeps the last PREVIEWS_KEPT files.
            concurrency_limit=1,
        )
    return demo


def main() -> None:
    demo = build_demo()  # loads the model now, not on the first request
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_file_size=MAX_FILE_BYTES,
        theme=gr.themes.Soft(),
    )


if __name__ == "__main__":
    main()
