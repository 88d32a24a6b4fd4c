"""Semantic coherence (paper eq. 1) and medical matches of each feature's top tokens, vectorised over features.

For a feature's valid top tokens with unit embeddings eᵢ and weights wᵢ (their projection values):

    C = Σ_{i<j} wᵢ wⱼ cos(eᵢ, eⱼ) / (Σ_{i<j} wᵢ wⱼ + ε),  ε = 1e-8

computed without a loop over pairs: Σ_{i<j} wᵢwⱼ eᵢ·eⱼ = (‖Σ wᵢeᵢ‖² − Σ wᵢ²) / 2 for unit eᵢ, and
Σ_{i<j} wᵢwⱼ = ((Σ wᵢ)² − Σ wᵢ²) / 2. A valid token: BPE space marker stripped, lower-cased, alphabetic
(`core.words.normalize_token`), in the embedding vocabulary. Case and space variants of one word ("Treatment",
"Ġtreatment") are one entry with the larger weight: the authors counted them twice with identical vectors,
which inflated coherence. Fewer than 2 valid tokens: no score (NaN, stored as NULL), never 0.

Medical matches: distinct normalised top-k words that are whole words of the medical vocabulary (set
membership, so "heart" never matches "hearth"); embedding coverage does not matter there.

Medical candidates (`candidate_by`): by the decoder (the paper's rule: ≥ 2 matches among the top logit-lens
tokens), by firing (≥ 2 matches among the tokens the feature fires on most often over the corpus, and a medical
LLR ≥ the study's minimum: it fires on medical tokens well above their share of the corpus), or either.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from core.words import normalize_token, space_marker

EPSILON = 1e-8
MIN_VALID = 2
CANDIDATE_MIN_MATCHES = 2
CANDIDATE_RULES = ("decoder", "fired", "either")


@dataclass(frozen=True)
class TokenWords:
    """The vocabulary mapped to words once per arm: token id → word index (-1: not a word)."""

    words: list[str]  # distinct normalised words of the vocabulary
    token_word: np.ndarray  # [d_vocab] int64
    word_vectors: np.ndarray  # [n_words, dim] float32, unit length; zeros where not embedded
    word_embedded: np.ndarray  # [n_words] bool
    word_medical: np.ndarray  # [n_words] bool


@dataclass(frozen=True)
class FeatureWordScores:
    """Per feature [d_sae]: coherence (NaN when < 2 valid), valid-token count, medical matches, candidate flag;
    and per feature the matched words (lists of str)."""

    coherence: np.ndarray
    n_valid: np.ndarray
    med_matches: np.ndarray
    is_candidate: np.ndarray
    matched_words: list[list[str]]


def token_words(token_strings: Sequence[str], kv: object, medical: Iterable[str]) -> TokenWords:
    """Map every vocabulary token (as `convert_ids_to_tokens` spells it) to a normalised word, with the space
    marker that vocabulary uses ('Ġ' or '▁')."""
    medical = set(medical)
    marker = space_marker(token_strings)
    index: dict[str, int] = {}
    token_word = np.full(len(token_strings), -1, dtype=np.int64)
    for token_id, token in enumerate(token_strings):
        word = normalize_token(token, marker)
        if word is not None:
            token_word[token_id] = index.setdefault(word, len(index))
    words = list(index)
    embedded = np.array([w in kv.key_to_index for w in words], dtype=bool)
    vectors = np.zeros((len(words), kv.vector_size), dtype=np.float32)
    if embedded.any():
        raw = np.stack([kv[w] for w, e in zip(words, embedded) if e]).astype(np.float32)
        vectors[embedded] = unit_rows(raw)
    is_medical = np.array([w in medical for w in words], dtype=bool)
    return TokenWords(words, token_word, vectors, embedded, is_medical)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows [n, dim] scaled to unit length, in their own dtype (an all-zero row stays zero)."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _first_occurrence(word_ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mask [d_sae, k]: True for the heaviest occurrence of each word in a row (and for no non-word)."""
    order = np.lexsort((-weights, word_ids), axis=1)  # by word, heaviest first within a word
    sorted_ids = np.take_along_axis(word_ids, order, 1)
    first_sorted = np.ones_like(sorted_ids, dtype=bool)
    first_sorted[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    first = np.zeros_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, 1)
    return first & (word_ids >= 0)


def feature_word_scores(top_ids: np.ndarray, top_values: np.ndarray, vocab: TokenWords) -> FeatureWordScores:
    """Coherence and medical matches of every feature. top_ids, top_values: [d_sae, k]."""
    word_ids = vocab.token_word[top_ids]  # [d_sae, k]
    distinct = _first_occurrence(word_ids, top_values.astype(np.float64))
    safe_ids = np.where(word_ids >= 0, word_ids, 0)
    valid = distinct & vocab.word_embedded[safe_ids]
    weights = np.where(valid, top_values, 0.0).astype(np.float64)  # [d_sae, k]
    vectors = vocab.word_vectors[safe_ids].astype(np.float64)  # [d_sae, k, dim]
    weighted_sum = np.einsum("fk,fkd->fd", weights, vectors)
    sum_sq = (weights**2).sum(1)
    pair_cos = ((weighted_sum**2).sum(1) - sum_sq) / 2  # Σ_{i<j} wᵢwⱼ cos(eᵢ, eⱼ)
    pair_w = (weights.sum(1) ** 2 - sum_sq) / 2  # Σ_{i<j} wᵢwⱼ
    n_valid = valid.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        coherence = np.where(n_valid >= MIN_VALID, pair_cos / (pair_w + EPSILON), np.nan)
    med_matches, matched = _medical_words(word_ids, distinct, vocab)
    return FeatureWordScores(coherence, n_valid, med_matches, med_matches >= CANDIDATE_MIN_MATCHES, matched)


def _medical_words(word_ids: np.ndarray, distinct: np.ndarray, vocab: TokenWords) -> tuple[np.ndarray, list[list[str]]]:
    """Per row of word ids [d_sae, k] (-1: no word), masked to each word's first occurrence: how many are medical
    words, and which."""
    medical = distinct & vocab.word_medical[np.maximum(word_ids, 0)]
    matched = [[vocab.words[w] for w in row_ids[row_mask]] for row_ids, row_mask in zip(word_ids, medical)]
    return medical.sum(1), matched


@dataclass(frozen=True)
class FiredWordMatches:
    """Per feature [d_sae]: distinct medical words among the tokens it fires on most, and those words."""

    med_matches: np.ndarray
    matched_words: list[list[str]]


def fired_word_matches(fired_ids: np.ndarray, vocab: TokenWords) -> FiredWordMatches:
    """Medical matches among each feature's most-fired tokens. fired_ids [d_sae, k], most fired first, -1 where a
    feature fired on fewer than k distinct tokens. A word spelt by several of them ("Ġheart", "heart") counts once."""
    word_ids = np.where(fired_ids >= 0, vocab.token_word[np.maximum(fired_ids, 0)], -1)
    order = -np.arange(fired_ids.shape[1], dtype=np.float64)[None].repeat(len(fired_ids), 0)  # earlier is heavier
    return FiredWordMatches(*_medical_words(word_ids, _first_occurrence(word_ids, order), vocab))


def candidate_by(decoder_matches: np.ndarray, fired_matches: np.ndarray, llr: np.ndarray, rule: str,
                 min_llr: float) -> np.ndarray:
    """Per feature: "decoder", "fired", "both" or None (not a candidate), under `rule` (CANDIDATE_RULES).
    llr: the feature's medical LLR (NaN for one that never fired)."""
    if rule not in CANDIDATE_RULES:
        raise ValueError(f"candidate rule must be one of {CANDIDATE_RULES}, got {rule!r}")
    by_decoder = (decoder_matches >= CANDIDATE_MIN_MATCHES) & (rule != "fired")
    with np.errstate(invalid="ignore"):
        by_firing = (fired_matches >= CANDIDATE_MIN_MATCHES) & (np.nan_to_num(llr, nan=-np.inf) >= min_llr)
    by_firing &= rule != "decoder"
    out = np.full(len(decoder_matches), None, dtype=object)
    out[by_decoder] = "decoder"
    out[by_firing] = "fired"
    out[by_decoder & by_firing] = "both"
    return out
