"""Atomic writes: write to a temporary file beside the target, then rename. And error
messages as one line.

An interrupted or failed run never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    ``suffix`` keeps a file extension that a writer insists on (Keras wants ``.keras``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp"
    )
    os.close(handle)
    try:
        yield Path(temporary)
        # mkstemp creates 0600 files; give the result the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes, read 1 MiB at a time (archives, weights files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


_COLOUR_CODES = re.compile(r"\x1b\[[0-9;]*m")
_IN_MEMORY_FILE = re.compile(r"<_io\.BytesIO object at 0x[0-9a-f]+>")  # says nothing to a reader


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """``error``'s message as one line: whitespace collapsed, colour codes and in-memory file
    names dropped, cut at ``limit`` characters; the exception's type where it has no message."""
    text = _IN_MEMORY_FILE.sub("the data", _COLOUR_CODES.sub("", str(error)))
    text = " ".join(text.split())
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


@contextlib.contextmanager
def stderr_to(path: str | os.PathLike) -> Iterator[None]:
    """Point this process's file descriptor 2 (and so sys.stderr) at ``path`` for a while:
    what a library's C++ code writes there (TensorFlow's start-up logs) goes to the file."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as log:
            os.dup2(log.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
