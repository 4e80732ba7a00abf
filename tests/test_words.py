"""The project speaks of CIFAR-10, Keras and its users, not of how the repository was built:
no build words, and no data path that exists only beside one checkout, in what users read."""

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_WORDS = re.compile(
    r"\blent\b|\bsession\b|\bsessions\b|\bcarried\b|\$OUT\b|\bborrowed\b|\.\./shared|"
    r"\b(?:reliability|models) issue\b|\bissue \d+\b|seed write-ups?|\bseed CNN\b|"
    r"\bseed project\b|\bthe seeds' setup\b",
    re.IGNORECASE,
)


def _documents():
    paths = [ROOT / "README.md", ROOT / "benchmarks" / "README.md"]
    paths += sorted((ROOT / "docs").rglob("*.md")) + sorted((ROOT / "results").glob("*/README.md"))
    # The code and the benchmarks too: their comments and messages are read as well.
    for folder in ("src", "benchmarks"):
        for pattern in ("*.py", "*.sh", "*.md", "*.txt"):
            paths += sorted((ROOT / folder).rglob(pattern))
    for path in paths:
        yield path.relative_to(ROOT), path.read_text(encoding="utf-8")
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
            yield f"{path.relative_to(ROOT)} cell {index}", cell.source


@pytest.mark.parametrize(("where", "text"), list(_documents()), ids=lambda value: str(value)[:60])
def test_what_users_read_has_no_build_words(where, text):
    found = sorted({match.group(0) for match in BUILD_WORDS.finditer(text)})
    assert not found, f"{where}: {found}"
