"""CIFAR-10 image classifier: a Gradio demo for Hugging Face Spaces or a local run.

Self-contained on purpose: it needs only keras, one Keras backend, gradio, pillow and numpy,
never the training package. It serves the files ``cifar10-transfer export`` writes next to it:
model.keras, class_names.json, metrics.json (optional) and examples/*.png (optional).

Environment: CIFAR10_MODEL (model path, default ./model.keras), GRADIO_SERVER_NAME (default
127.0.0.1; Spaces sets 0.0.0.0) and GRADIO_SERVER_PORT (default 7860).
"""

from __future__ import annotations

import functools
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path

import gradio as gr
import keras
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

HERE = Path(__file__).resolve().parent
# imaging.py beside this file (export copies it): the image conversion the training data
# used, so uploads become RGB exactly as the training images did.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import imaging  # noqa: E402, I001

MODEL_PATH = Path(os.environ.get("CIFAR10_MODEL", HERE / "model.keras"))
IMAGE_SIZE = 32  # the model's input side, px: CIFAR-10's resolution
PREVIEW_SCALE = 7  # 32 px shown as 224 px
MAX_FILE_BYTES = 10 * 1024 * 1024  # uploads above this are refused (also given to Gradio)
MAX_IMAGE_PIXELS = 40_000_000  # decoded size limit; a phone photo is ~12 MP

# Pillow's decompression-bomb guard: warn above MAX_IMAGE_PIXELS, raise above twice that. Make
# the warning an error too, so a small file can never decode into gigabytes of pixels.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
warnings.simplefilter("error", Image.DecompressionBombWarning)
# Pillow's default, set explicitly: a truncated file must fail instead of being padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageRejected(ValueError):
    """An upload that cannot be classified; the message is shown to the user as is."""


def _check_size(size: int) -> None:
    if size > MAX_FILE_BYTES:
        raise ImageRejected(
            f"The file is {size / 2**20:.1f} MB; the limit is {MAX_FILE_BYTES / 2**20:.0f} MB."
        )


def _read_upload(source: str | os.PathLike | bytes) -> bytes:
    if not isinstance(source, bytes):
        _check_size(os.path.getsize(source))  # before reading: never load an oversized file
    raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    if not raw:
        raise ImageRejected("The file is empty (0 bytes). Please upload an image.")
    _check_size(len(raw))
    return raw


def load_image(source: str | os.PathLike | bytes) -> np.ndarray:
    """Decode an uploaded file (path or bytes) into the uint8 (32, 32, 3) array the model takes.

    Raises ImageRejected with a user-readable message for anything that is not a usable image.
    """
    raw = _read_upload(source)
    try:
        with Image.open(io.BytesIO(raw), formats=imaging.DEMO_FORMATS) as image:
            # Image.open only reads the header; the pixel limit is checked again here because
            # the warning filter above is process-wide state that a host (pytest) may reset.
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(f"{image.width}x{image.height} pixels")
            # JPEG only: decode at 1/2, 1/4 or 1/8 scale in the DCT (fast, and itself an
            # antialiased downsample), keeping at least 8x the model's side for the resize below.
            image.draft(None, (8 * IMAGE_SIZE, 8 * IMAGE_SIZE))
            image.load()  # decode everything now, so truncation raises here
            image = ImageOps.exif_transpose(image)  # phone photos: honour the Orientation tag
            image = imaging.to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(
            f"The image is too large to decode safely ({error}); "
            f"the limit is {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels."
        ) from error
    except UnidentifiedImageError as error:
        raise ImageRejected(
            "This file is not an image Pillow can read. Please upload a PNG, JPEG, WebP, GIF, "
            "BMP or TIFF file."
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageRejected(f"The image file is damaged or truncated ({error}).") from error

    # Center-crop to a square first: CIFAR-10 images are square with the object in the middle,
    # and squashing a wide photo into 32x32 would distort shapes the model never saw distorted.
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    # CIFAR-10 images are antialiased downsamples of larger photos, so shrink the same way:
    # Lanczos over the full crop (reducing_gap first box-averages big images, cheaply). The
    # model then resizes 32 px to its backbone's size internally, exactly as in training.
    small = image.resize(
        (IMAGE_SIZE, IMAGE_SIZE),
        Image.Resampling.LANCZOS,
        box=(left, top, left + side, top + side),
        reducing_gap=3.0,
    )
    return np.asarray(small, dtype=np.uint8)


@functools.cache
def load_classifier() -> tuple[keras.Model, list[str]]:
    """The model (safe_mode: no arbitrary code from the file) and its class names, loaded once."""
    if not MODEL_PATH.is_file():
        raise FileNotFoundError(f"model file {MODEL_PATH} not found (set CIFAR10_MODEL)")
    model = keras.saving.load_model(MODEL_PATH, safe_mode=True)
    model.predict_on_batch(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))  # compiles it
    class_names = json.loads((HERE / "class_names.json").read_text())
    return model, class_names


def predict(path: str | None) -> tuple[dict[str, float] | None, np.ndarray | None, str]:
    """(class -> probability, the 32x32 input enlarged with nearest neighbour, status message)."""
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
    # Nearest neighbour keeps every one of the 32x32 pixels visible as a block.
    preview = pixels.repeat(PREVIEW_SCALE, axis=0).repeat(PREVIEW_SCALE, axis=1)
    message = (
        f"Best guess: **{best}** ({scores[best]:.0%}), computed in {elapsed_ms:.0f} ms. "
        "The model always answers with one of the 10 classes, even for images showing none."
    )
    return scores, preview, message


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
    with gr.Blocks(title="CIFAR-10 classifier") as demo:
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
            classify_upload, inputs=upload, outputs=[label, preview, status], preprocess=False
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
