"""The two loaded arms a cross-arm stage compares (seeds 002 and 004), with the rows both read.

Requirements are checked, not assumed: each pair stage declares a `skip_reason` (activation similarity needs
the same tokenizer and hook, matching the same tokenizer, transfer the same d_in). A stage whose requirement
fails is skipped with a logged reason, stored as a metric `skipped` = 1 with the reason in the stage's note.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core.config import StudyConfig
from core.loading import LoadedArm
from precompute.stage import KeyParts


@dataclass
class Pair:
    """The two loaded arms of a study, the corpus rows (in arm a's tokenizer) and the shared settings."""

    a: LoadedArm
    b: LoadedArm
    rows: object  # torch.Tensor [n, T]
    batch_size: int
    threshold: float
    outlier_factor: float
    progress: Callable[[str], Callable]
    min_firings: int = 1  # fewer firings on these tokens: the feature is rare and has no fate
    row_ids: tuple[int, ...] = ()  # the corpus row of each of `rows` (the token set's rows); () reads 0, 1, ...
    lens_layers: tuple[int, ...] = ()  # diff.lens_layers: the difference lens's blocks besides the SAE's hook
    lens_positions: int = 5  # diff.lens_positions: the first positions after BOS of its "first" mean
    medical_words: frozenset[str] = frozenset()  # the study's medical vocabulary (words marked in the lens's tokens)
    boundary_tokens: int = 3  # diff.boundary_tokens: a document's first tokens the divergence reports apart
    tokens_progress: Callable[[str, int], Callable] | None = None  # (desc, tokens a batch): a bar in tokens/s
    autocast: bool = False  # planned passes' forwards in bfloat16 autocast (on CUDA); reads handed on as float32

    def token_progress(self, desc: str, tokens_per_batch: int) -> Callable:
        """A progress wrapper over batches that counts tokens (the planned passes' bars); `progress` without one."""
        return self.progress(desc) if self.tokens_progress is None else self.tokens_progress(desc, tokens_per_batch)

    @property
    def names(self) -> tuple[str, str]:
        return self.a.name, self.b.name

    def columns(self, n_rows: int) -> dict[str, list[str]]:
        """The arm_a, arm_b columns of n_rows rows of this pair's tables."""
        return {"arm_a": [self.a.name] * n_rows, "arm_b": [self.b.name] * n_rows}

    def settings(self) -> dict[str, object]:
        """What a Ray worker needs, besides the two arms, to rebuild this pair (precompute.ray_executor)."""
        return {"batch_size": self.batch_size, "threshold": self.threshold, "outlier_factor": self.outlier_factor,
                "min_firings": self.min_firings, "lens_layers": self.lens_layers, "lens_positions": self.lens_positions,
                "medical_words": self.medical_words, "boundary_tokens": self.boundary_tokens, "autocast": self.autocast}

    def same_tokenizer(self) -> bool:
        return self.a.model.tokenizer.get_vocab() == self.b.model.tokenizer.get_vocab()


def different_tokenizers(pair: Pair, stage: str) -> str | None:
    if not pair.same_tokenizer():
        return f"the arms' tokenizers differ, so the two models cannot be run on the same tokens ({stage} skipped)"
    return None


def pair_key_parts(parts: KeyParts) -> tuple:
    """Every pair stage hashes both arms' weights, the corpus, the diff settings and the batch size."""
    return parts.fingerprints, parts.corpus, parts.config.diff, parts.config.activations.batch_size


def pair_tokens(config: StudyConfig) -> int:
    return config.diff.tokens  # every pair stage reads the same rows, both arms the same rows
