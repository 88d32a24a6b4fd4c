"""What every stage of a run shares: the config, the medical words, and what is loaded once when first needed
(the word embeddings, each arm's corpus rows and token strings)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from core.config import StudyConfig
from core.corpus import TokenSet, load_corpus_rows, token_set
from core.embeddings import load_embeddings
from core.loading import LoadedArm
from core.token_text import vocabulary_strings


@dataclass
class StudyInputs:
    config: StudyConfig
    medical_words: frozenset[str]
    show_progress: bool = True
    _embeddings: Any = field(default=None, repr=False)
    _rows: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _strings: dict[str, tuple[list[str], np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def embeddings(self) -> Any:
        if self._embeddings is None:
            self._embeddings = load_embeddings(self.config.embeddings.source, Path(self.config.embeddings.cache_dir))
        return self._embeddings

    def corpus_rows(self, loaded: LoadedArm) -> torch.Tensor:
        """The corpus in this arm's tokenizer, [n_rows, context_size], tokenized once per arm."""
        if loaded.name not in self._rows:
            self._rows[loaded.name] = load_corpus_rows(self.config.corpus, loaded.model.tokenizer)
        return self._rows[loaded.name]

    def token_set(self, stage: Any) -> TokenSet | None:
        """The tokens a stage (precompute.stage.Stage) measures on; None for a stage that reads no tokens."""
        return None if stage.tokens is None else token_set(self.config.corpus, stage.tokens(self.config))

    def token_strings(self, loaded: LoadedArm) -> tuple[list[str], np.ndarray]:
        """vocabulary_strings of this arm's tokenizer, computed once per arm."""
        if loaded.name not in self._strings:
            self._strings[loaded.name] = vocabulary_strings(loaded.model.tokenizer, loaded.model.cfg.d_vocab)
        return self._strings[loaded.name]

    def progress(self, desc: str, unit: str) -> Callable:
        return progress_bar(self.show_progress, desc, unit)


def progress_bar(show: bool, desc: str, unit: str) -> Any:
    """A wrapper for core's `progress=` arguments: a tqdm bar with counts and ETA, or nothing."""
    return (lambda it: tqdm(it, desc=desc, unit=unit, leave=False)) if show else (lambda it: it)
