"""The four stages of the precompute for one loaded arm: each returns the rows to store and its metrics.

A stage reads what earlier stages stored from the build database (so a resumed run needs nothing in memory)
and turns core's numpy results into Arrow tables shaped like the schema in core.database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import torch

from core import database as db
from core.activations import (INTERVAL_EDGES, ActivationSummary, ContextSet, FiredTokens, collect_activations,
                              medical_llr)
from core.coherence import TokenWords, feature_word_scores, token_words
from core.config import StudyConfig
from core.corpus import TokenSet, load_corpus_rows, token_set
from core.embeddings import embedding_coverage, load_embeddings
from core.loading import LoadedArm
from core.model_diff import activation_norms
from core.projection import decoder_projection_topk
from core.sae_metrics import sae_quality
from core.words import (SENTENCEPIECE_SPACE_MARKER, byte_level_alphabet, byte_text, normalize_token,
                        sentencepiece_text, space_marker)

StageResult = tuple[dict[str, pa.Table], dict[str, float]]


@dataclass
class StudyInputs:
    """What every arm's stages share: the config, the medical words, and (loaded once, when first needed) the
    word embeddings."""

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

    def token_set(self, stage: str) -> TokenSet | None:
        """The tokens `stage` measures on: the whole corpus (activations), an even sample of quality_tokens
        (quality) or of diff.tokens (the cross stages); None for a stage that reads no tokens."""
        corpus = self.config.corpus
        sizes = {"activations": 0, "quality": self.config.activations.quality_tokens,
                 "similarity": self.config.diff.tokens, "transfer": self.config.diff.tokens,
                 "matching": self.config.diff.tokens}
        return token_set(corpus, sizes[stage]) if stage in sizes else None

    def token_strings(self, loaded: LoadedArm) -> tuple[list[str], np.ndarray]:
        """vocabulary_strings of this arm's tokenizer, computed once per arm."""
        if loaded.name not in self._strings:
            self._strings[loaded.name] = vocabulary_strings(loaded.model.tokenizer, loaded.model.cfg.d_vocab)
        return self._strings[loaded.name]

    def progress(self, desc: str, unit: str) -> Callable:
        from precompute.run import progress_bar

        return progress_bar(self.show_progress, desc, unit)


def vocabulary_strings(tokenizer: Any, d_vocab: int) -> tuple[list[str], np.ndarray]:
    """Per token id: the tokenizer's own spelling ("Ġheart", for the word rule) and its text (" heart", to show).

    A byte-level token that is not whole UTF-8 characters shows its bytes as `<0x8F>` (core.words.byte_text),
    never "\ufffd", so two byte tokens never read alike. Byte-level BPE (GPT-2) tokens are decoded through the
    byte table directly, 50x faster than 50k decode calls; a sample is checked against `tokenizer.decode`.
    SentencePiece pieces are read as `sentencepiece_text`, so that words keep their leading space (decoding one
    piece alone drops it). Any other tokenizer takes the slow path, where a token that decodes to "\ufffd" shows
    its own spelling."""
    known = min(d_vocab, len(tokenizer))
    raw = [t or "" for t in tokenizer.convert_ids_to_tokens(list(range(known)))] + [""] * (d_vocab - known)
    if space_marker(raw[:known]) == SENTENCEPIECE_SPACE_MARKER:  # decode([i]) would drop each leading space
        return raw, np.array([sentencepiece_text(token) for token in raw], dtype=object)
    data = _byte_level_bytes(raw[:known])
    sample = range(0, known, max(1, known // 200))
    if data is not None and all(data[i].decode("utf-8", errors="replace") == tokenizer.decode([i]) for i in sample):
        text = [byte_text(token) for token in data]
    else:
        decoded = tokenizer.batch_decode([[i] for i in range(known)])
        text = [t if "\ufffd" not in t or not r else r for t, r in zip(decoded, raw)]
    return raw, np.array(list(text) + [""] * (d_vocab - known), dtype=object)


def _byte_level_bytes(tokens: list[str]) -> list[bytes] | None:
    byte_of = byte_level_alphabet()
    try:
        return [bytes(byte_of[c] for c in token) for token in tokens]
    except KeyError:
        return None


def run_projection(con: duckdb.DuckDBPyConnection, inputs: StudyInputs, loaded: LoadedArm) -> StageResult:
    k = inputs.config.projection.top_k
    result = decoder_projection_topk(loaded.sae.W_dec.detach(), loaded.model.W_U.detach(), k=k)
    _, text = inputs.token_strings(loaded)
    parts = []
    for kind, ids, values in (("top", result.top_ids, result.top_values),
                              ("bottom", result.bottom_ids, result.bottom_values)):
        d_sae, width = ids.shape
        parts.append(pa.table({
            "arm": pa.array([loaded.name] * ids.size), "feature": np.repeat(np.arange(d_sae, dtype=np.int32), width),
            "kind": pa.array([kind] * ids.size), "rank": np.tile(np.arange(width, dtype=np.int32), d_sae),
            "token_id": ids.ravel().astype(np.int32), "token": pa.array(text[ids.ravel()].tolist(), pa.string()),
            "value": values.ravel(),
        }))
    return {"top_tokens": pa.concat_tables(parts)}, {"top_k": k}


def run_words(con: duckdb.DuckDBPyConnection, inputs: StudyInputs, loaded: LoadedArm) -> StageResult:
    top = db.read_top_tokens(con, loaded.name, "top")
    k = int(top["rank"].max()) + 1
    top_ids = top["token_id"].to_numpy().reshape(-1, k)
    top_values = top["value"].to_numpy().reshape(-1, k)
    raw, text = inputs.token_strings(loaded)
    vocab = token_words(raw, inputs.embeddings, inputs.medical_words)
    scores = feature_word_scores(top_ids, top_values, vocab)
    words = np.array(vocab.words + [None], dtype=object)[vocab.token_word[top_ids]]  # -1 (no word) -> None
    table = pa.table({
        "arm": pa.array([loaded.name] * len(top_ids)), "feature": np.arange(len(top_ids), dtype=np.int32),
        "coherence": pa.array(scores.coherence, mask=np.isnan(scores.coherence)),
        "n_valid": scores.n_valid.astype(np.int32), "med_matches": scores.med_matches.astype(np.int32),
        "is_candidate": scores.is_candidate, "matched_words": pa.array(scores.matched_words, pa.list_(pa.string())),
        "top_text": pa.array([" | ".join(row) for row in text[top_ids]], pa.string()),
        "top_words": pa.array([sorted({w for w in row if w}) for row in words], pa.list_(pa.string())),
    })
    return {"feature_words": table}, _coverage_metrics(top_ids, scores.is_candidate, vocab, inputs.embeddings)


def _coverage_metrics(top_ids: np.ndarray, is_candidate: np.ndarray, vocab: TokenWords, kv: Any) -> dict[str, float]:
    """Embedding coverage of the top tokens' words, over all features and over medical candidates (the paper's)."""
    metrics = {"n_candidates": float(is_candidate.sum())}
    for scope, ids in (("all", top_ids), ("candidates", top_ids[is_candidate])):
        word_ids = vocab.token_word[ids.ravel()]
        coverage = embedding_coverage([vocab.words[w] for w in word_ids[word_ids >= 0]], kv)
        metrics[f"coverage_unique_{scope}"] = coverage.unique_fraction
        metrics[f"coverage_total_{scope}"] = coverage.total_fraction
    return metrics


def medical_token_mask(raw_tokens: list[str], medical_words: frozenset[str]) -> torch.Tensor:
    """[d_vocab] bool: the token is a whole word of the medical vocabulary (after the valid-word rule)."""
    marker = space_marker(raw_tokens)
    return torch.tensor([normalize_token(t, marker) in medical_words for t in raw_tokens], dtype=torch.bool)


def run_activations(con: duckdb.DuckDBPyConnection, inputs: StudyInputs, loaded: LoadedArm) -> StageResult:
    config = inputs.config
    rows = inputs.corpus_rows(loaded)
    raw, text = inputs.token_strings(loaded)
    summary = collect_activations(loaded.model, loaded.sae, loaded.hook_name, rows, config.activations,
                                  medical_token_mask(raw, inputs.medical_words), seed=config.seed,
                                  progress=inputs.progress(f"{loaded.name} activations", "batch"))
    name = loaded.name
    tables = {
        "feature_activations": _feature_activation_table(name, summary),
        "histograms": pa.table({"arm": pa.array([name] * loaded.d_sae),
                                "feature": np.arange(loaded.d_sae, dtype=np.int32),
                                "counts": pa.array(list(summary.hist_counts), pa.list_(pa.int64()))}),
        "contexts": pa.concat_tables([
            _context_table(name, "top", summary.top, None, text, config.activations.window_before),
            _context_table(name, "interval", summary.intervals, summary.interval_index, text,
                           config.activations.window_before)]),
        "unigram": _unigram_table(name, summary.unigram, text),
        "fired_tokens": _fired_tokens_table(name, summary.fired_tokens, text),
    }
    n_dead = int((summary.n_fired == 0).sum())
    metrics = {"n_tokens": summary.n_tokens, "n_medical_tokens": summary.n_medical_tokens,
               "l0_corpus": summary.n_fired.sum() / summary.n_tokens, "dead_features": n_dead,
               "dead_fraction": n_dead / loaded.d_sae}
    return tables, metrics


def _feature_activation_table(arm: str, summary: ActivationSummary) -> pa.Table:
    def nullable(values: np.ndarray) -> pa.Array:
        return pa.array(values, mask=np.isnan(values))

    d_sae = len(summary.n_fired)
    return pa.table({
        "arm": pa.array([arm] * d_sae), "feature": np.arange(d_sae, dtype=np.int32), "n_fired": summary.n_fired,
        "frac_nonzero": summary.frac_nonzero, "max_act": summary.max_act, "mean_act": nullable(summary.mean_act),
        "var_act": nullable(summary.var_act), "sum_act": summary.sum_act, "sum_sq_act": summary.sum_sq_act,
        "med_fired": summary.med_fired, "llr": nullable(medical_llr(summary)),
    })


def _context_table(arm: str, kind: str, contexts: ContextSet, interval_index: np.ndarray | None,
                   text: np.ndarray, window_before: int) -> pa.Table:
    """One row per filled slot; windows trimmed to the row's tokens, so lists may be shorter at row edges."""
    d_sae, slots = contexts.row.shape
    feature, slot = np.nonzero(contexts.row >= 0)
    ids = contexts.window_token_ids[feature, slot]  # [n, W]
    acts = contexts.window_acts[feature, slot]
    inside = ids >= 0
    offsets = np.concatenate([[0], np.cumsum(inside.sum(1))]).astype(np.int32)
    flat_ids = ids[inside]
    if interval_index is None:
        rank, interval, low, high = slot, None, None, None
    else:
        interval = interval_index[slot]
        # rank within the interval by activation, strongest first
        order = np.lexsort((-contexts.max_act[feature, slot], interval, feature))
        rank = np.empty(len(order), dtype=np.int64)
        group_start = np.r_[True, (feature[order][1:] != feature[order][:-1]) | (interval[order][1:] != interval[order][:-1])]
        starts = np.maximum.accumulate(np.where(group_start, np.arange(len(order)), 0))
        rank[order] = np.arange(len(order)) - starts
        low, high = INTERVAL_EDGES[interval], INTERVAL_EDGES[interval + 1]
    return pa.table({
        "arm": pa.array([arm] * len(feature)), "feature": feature.astype(np.int32), "kind": pa.array([kind] * len(feature)),
        "rank": np.asarray(rank, dtype=np.int32),
        "interval": pa.array(interval, pa.int32()) if interval is not None else pa.nulls(len(feature), pa.int32()),
        "interval_low": pa.array(low, pa.float64()) if low is not None else pa.nulls(len(feature), pa.float64()),
        "interval_high": pa.array(high, pa.float64()) if high is not None else pa.nulls(len(feature), pa.float64()),
        "max_act": contexts.max_act[feature, slot], "row_index": contexts.row[feature, slot].astype(np.int32),
        "max_pos": contexts.max_pos[feature, slot].astype(np.int32),
        "max_index": inside[:, :window_before].sum(1).astype(np.int32),
        "token_ids": pa.ListArray.from_arrays(offsets, pa.array(flat_ids.astype(np.int32))),
        "tokens": pa.ListArray.from_arrays(offsets, pa.array(text[flat_ids].tolist(), pa.string())),
        "acts": pa.ListArray.from_arrays(offsets, pa.array(acts[inside].astype(np.float32))),
    })


def _unigram_table(arm: str, counts: np.ndarray, text: np.ndarray) -> pa.Table:
    ids = np.nonzero(counts)[0]
    return pa.table({"arm": pa.array([arm] * len(ids)), "token_id": ids.astype(np.int32),
                     "token": pa.array(text[ids].tolist(), pa.string()), "count": counts[ids]})


def _fired_tokens_table(arm: str, fired: FiredTokens, text: np.ndarray) -> pa.Table:
    feature, rank = np.nonzero(fired.token_id >= 0)
    ids = fired.token_id[feature, rank]
    return pa.table({"arm": pa.array([arm] * len(ids)), "feature": feature.astype(np.int32),
                     "rank": rank.astype(np.int32), "token_id": ids.astype(np.int32),
                     "token": pa.array(text[ids].tolist(), pa.string()), "count": fired.count[feature, rank],
                     "sum_act": fired.sum_act[feature, rank]})


def run_quality(con: duckdb.DuckDBPyConnection, inputs: StudyInputs, loaded: LoadedArm) -> StageResult:
    rows = inputs.token_set("quality").select(inputs.corpus_rows(loaded))
    quality = sae_quality(loaded.model, loaded.sae, loaded.hook_name, rows, inputs.config.activations.batch_size,
                          progress=inputs.progress(f"{loaded.name} quality", "batch"))
    # The Steer page's scale for a coefficient, on the same tokens (BOS left out): one pass that stops at the hook.
    norms = activation_norms(loaded.model, loaded.hook_name, rows, inputs.config.activations.batch_size)
    recon = quality.reconstruction
    return {}, {
        "n_tokens": recon.n_tokens, "median_activation_norm": float(norms.median()), "l0": recon.l0,
        "explained_variance": recon.explained_variance, "mse": recon.mse, "ce_loss_clean": quality.ce_loss_clean,
        "ce_loss_spliced": quality.ce_loss_spliced,
        "ce_loss_zero_ablation": quality.ce_loss_zero_ablation, "ce_loss_delta": quality.ce_loss_delta,
        "ce_loss_recovered": quality.ce_loss_recovered,
    }


RUNNERS: dict[str, Callable[[duckdb.DuckDBPyConnection, StudyInputs, LoadedArm], StageResult]] = {
    "projection": run_projection, "words": run_words, "activations": run_activations, "quality": run_quality,
}
