"""The family's second domain: Python source read from wheels the project pins (requirements.txt), so the text is
the same on every machine, with no download.

A document is one source file; the held-out files are chosen by a hash of their text (precompute.demo.text's
rule, so the same files are held out everywhere). The corpus files hold one document per line, so a file is
written (and trained on) as its non-blank lines, each a document of its own: the end-of-text separator between
them stands for the line break, and each line keeps its indentation (tabs as 4 spaces).
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterator

from core.package_data import package_path
from precompute.demo import text as text_sources

logger = logging.getLogger(__name__)

# (import name, distribution, pinned version): the sources, read in this order, files sorted by path.
CODE_PACKAGES = (("sae_lens", "sae-lens", "6.54.12"), ("tqdm", "tqdm", "4.70.1"), ("umap", "umap-learn", "0.5.12"),
                 ("transformer_lens", "transformer-lens", "3.9.0"))
MAX_FILE_BYTES = 200_000  # a generated table, not code someone wrote


def code_versions() -> dict[str, str]:
    """The installed version of each source distribution; a version other than the pin is logged (the text, and so
    the family build, would then differ from other machines')."""
    versions = {}
    for _, dist, pinned in CODE_PACKAGES:
        versions[dist] = importlib.metadata.version(dist)
        if versions[dist] != pinned:
            logger.warning("%s %s is installed where requirements.txt pins %s: the code domain's text differs",
                           dist, versions[dist], pinned)
    return versions


def iter_code_files() -> Iterator[str]:
    """The text of every .py file of the CODE_PACKAGES, package by package, sorted by path."""
    for module, dist, pinned in CODE_PACKAGES:
        root = package_path(module, ".", f"pip install {dist}=={pinned}")
        for path in sorted(root.rglob("*.py")):
            if path.stat().st_size <= MAX_FILE_BYTES:
                text = path.read_text(encoding="utf-8", errors="replace")
                if text.strip():
                    yield text


def code_lines(files: list[str]) -> list[str]:
    """Each file's non-blank lines in order, right-stripped, tabs as 4 spaces: the corpus's one-document-per-line
    layout (module docstring)."""
    return [line.rstrip().replace("\t", "    ") for text in files for line in text.splitlines() if line.strip()]


def split_code(heldout_share: float) -> text_sources.DomainSplit:
    """Train and held-out code, split by file (deduplicated), each part already as lines."""
    files = text_sources.split_domain(iter_code_files(), heldout_share)
    return text_sources.DomainSplit(code_lines(files.train), code_lines(files.heldout))
