"""The study's token corpus: text from local files or a streamed hub dataset, packed into BOS-led rows.

Every row is `[BOS] + context_size - 1` tokens of the stream "doc <eos> doc <eos> …", the layout GPT-2 and its
SAEs were trained with. BOS is the plain-text one `core.models.sources.use_plain_text_bos` sets: an instruct
tokenizer's chat-turn opener gives way to its plain end-of-text token. A `text_files` corpus takes an equal share of rows from each file (the demo: general
and medical held-out text, half each), so one long file cannot crowd out the other domain.

A measurement that reads fewer tokens than the corpus (the quality stage's `activations.quality_tokens`, the
model diff's `diff.tokens`) reads a `TokenSet`: an even sample in which every file keeps its share of the corpus,
never the first rows (those are the first file's alone). Every stored number names the token set it read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import CorpusConfig
from core.errors import StudyInputError

logger = logging.getLogger(__name__)
# Part of every stage key that reads rows: 3 since rows of an instruct tokenizer stopped starting with a turn opener
# (2: joined by <|endoftext|> too, for one commit).
ROWS_VERSION = 3
ENCODE_CHUNK = 2000  # texts per tokenizer call: stop encoding once there are enough rows


def pack_rows(texts: Iterable[str], tokenizer: Any, context_size: int, max_rows: int | None = None) -> torch.Tensor:
    """Token rows `[n_rows, context_size]` (int64) from `texts` in order; the incomplete last row is dropped."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    body = context_size - 1
    texts = iter(texts)
    while chunk := list(islice(texts, ENCODE_CHUNK)):
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
        if max_rows is not None and len(stream) >= max_rows * body:
            break
    n_rows = len(stream) // body
    if max_rows is not None:
        n_rows = min(n_rows, max_rows)
    body_tokens = torch.tensor(stream[: n_rows * body], dtype=torch.long).view(n_rows, body)
    bos_column = torch.full((n_rows, 1), tokenizer.bos_token_id, dtype=torch.long)
    return torch.cat([bos_column, body_tokens], dim=1)


def rows_needed(corpus: CorpusConfig) -> int:
    """Rows of `context_size` tokens that hold at least `n_tokens` tokens (BOS included)."""
    return -(-corpus.n_tokens // corpus.context_size)


def corpus_sources(corpus: CorpusConfig) -> list[tuple[str, int]]:
    """(source, rows) of the corpus in row order, as `load_corpus_rows` lays them out: one entry per file (its
    name without the suffix), or the dataset's name."""
    n_rows = rows_needed(corpus)
    if corpus.kind == "hf_dataset":
        return [(str(corpus.dataset), n_rows)]
    n_files = len(corpus.paths)
    return [(Path(path).stem, n_rows // n_files + (i < n_rows % n_files)) for i, path in enumerate(corpus.paths)]


@dataclass(frozen=True)
class TokenSet:
    """The corpus rows a measurement reads. `rows` index the corpus rows, ascending; `sources` holds how many of
    them come from each source, in corpus order. Measurements leave the BOS position out, so each row gives
    context_size - 1 tokens."""

    name: str  # "corpus" (every row) or "sample-<rows>": the same name always means the same rows
    rows: tuple[int, ...]
    sources: tuple[tuple[str, int], ...]
    context_size: int

    @property
    def n_rows(self) -> int:
        return len(self.rows)

    @property
    def n_tokens(self) -> int:
        return self.n_rows * (self.context_size - 1)

    def select(self, corpus_rows: torch.Tensor) -> torch.Tensor:
        """These rows of the corpus rows [n_rows_corpus, T] -> [n_rows, T]."""
        if self.name == "corpus":
            return corpus_rows
        return corpus_rows[torch.as_tensor(self.rows, dtype=torch.long)]


def token_set(corpus: CorpusConfig, n_tokens: int) -> TokenSet:
    """An even sample of about `n_tokens` tokens (whole rows, rounded up); 0 or more than the corpus: all of it.

    Each source keeps its share of the corpus rows (largest remainder), spread evenly over the source's rows."""
    sources = corpus_sources(corpus)
    total = sum(n for _, n in sources)
    wanted = -(-n_tokens // corpus.context_size) if n_tokens > 0 else total
    if wanted >= total:
        return TokenSet("corpus", tuple(range(total)), tuple(sources), corpus.context_size)
    exact = np.array([n for _, n in sources], dtype=np.float64) * wanted / total
    shares = np.floor(exact).astype(int)
    shares[np.argsort(-(exact - shares), kind="stable")[: wanted - shares.sum()]] += 1
    rows, start = [], 0
    for (_, size), share in zip(sources, shares):
        rows += [start + int((i + 0.5) * size / share) for i in range(share)]
        start += size
    return TokenSet(f"sample-{wanted}", tuple(rows), tuple((name, int(k)) for (name, _), k in zip(sources, shares)),
                    corpus.context_size)


def load_corpus_rows(corpus: CorpusConfig, tokenizer: Any) -> torch.Tensor:
    """The corpus as token rows `[n_rows, context_size]`, exactly `rows_needed(corpus)` of them.

    Raises StudyInputError when a file is missing or the text is too short for `corpus.n_tokens`."""
    n_rows = rows_needed(corpus)
    if corpus.kind == "hf_dataset":
        rows = pack_rows(_dataset_texts(corpus), tokenizer, corpus.context_size, max_rows=n_rows)
        _require(rows.shape[0], n_rows, corpus, f"dataset {corpus.dataset}")
        return rows
    shares = [n_rows // len(corpus.paths) + (i < n_rows % len(corpus.paths)) for i in range(len(corpus.paths))]
    parts = []
    for path, share in zip(corpus.paths, shares):
        rows = pack_rows(_file_texts(Path(path)), tokenizer, corpus.context_size, max_rows=share)
        _require(rows.shape[0], share, corpus, f"file {path}")
        parts.append(rows)
    return torch.cat(parts)


def corpus_row(corpus: CorpusConfig, tokenizer: Any, row: int) -> torch.Tensor:
    """Row `row` [context_size] of `load_corpus_rows(corpus, tokenizer)`, packing only its own source up to it
    (what a page needs to show one stored row id without tokenising the whole corpus)."""
    n_rows = rows_needed(corpus)
    if not 0 <= row < n_rows:
        raise StudyInputError(f"row {row}: the corpus has rows 0 to {n_rows - 1}")
    paths = [None] if corpus.kind == "hf_dataset" else corpus.paths
    start = 0
    for path, (source, share) in zip(paths, corpus_sources(corpus)):
        if row < start + share:
            texts = _dataset_texts(corpus) if path is None else _file_texts(Path(path))
            rows = pack_rows(texts, tokenizer, corpus.context_size, max_rows=row - start + 1)
            _require(rows.shape[0], row - start + 1, corpus, f"source {source}")
            return rows[row - start]
        start += share
    raise AssertionError("unreachable: the sources' rows add up to rows_needed")


def _require(got: int, wanted: int, corpus: CorpusConfig, source: str) -> None:
    if got < wanted:
        have = got * corpus.context_size
        raise StudyInputError(
            f"corpus.n_tokens: {source} gives only {got} rows of {corpus.context_size} tokens ({have:,} tokens) "
            f"for the {wanted} it should supply; lower corpus.n_tokens or add text"
        )


def _file_texts(path: Path) -> Iterator[str]:
    """Non-empty lines of a UTF-8 text file, one document each."""
    if not path.is_file():
        raise StudyInputError(f"corpus.paths: {path} does not exist; build the demo with "
                              "`python -m precompute build-demo` or point corpus.paths at your text files")
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield line.rstrip("\n")


def _dataset_texts(corpus: CorpusConfig) -> Iterator[str]:
    """Texts of a streamed hub dataset (only as many as needed are read)."""
    from datasets import load_dataset

    try:
        dataset = load_dataset(corpus.dataset, split=corpus.split, streaming=True)
        for record in dataset:
            yield record[corpus.text_column]
    except KeyError as err:
        raise StudyInputError(f"corpus.text_column: dataset {corpus.dataset} has no column {err}") from err
    except (OSError, ValueError, ConnectionError) as err:
        raise StudyInputError(
            f"corpus.dataset: could not stream {corpus.dataset!r} ({str(err).splitlines()[0]}); it needs the hub, "
            "or use kind = \"text_files\" with local files"
        ) from err
