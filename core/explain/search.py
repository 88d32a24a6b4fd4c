"""Searching features by their explanations: a scorer gives each explanation a match score for a query (0: no
match), and the Features page keeps those above 0: by words, or by meaning (a sentence encoder's cosine,
kept at or above MEANING_THRESHOLD, so "blood vessels" finds an explanation that says "arteries and veins")."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

Scorer = Callable[[str, Sequence[str]], np.ndarray]  # (query, explanations) -> score per explanation, >= 0
_WORD = re.compile(r"[a-z0-9]+")
# all-MiniLM-L6-v2 cosines measured here: "cardiac" vs "blood flow to the heart" 0.68, vs "arteries and veins"
# 0.44, vs "lungs and the liver" 0.36, vs "dates and numbers" 0.02: 0.4 keeps the same topic, drops the neighbours.
MEANING_THRESHOLD = 0.4


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def word_scores(query: str, explanations: Sequence[str]) -> np.ndarray:
    """Share of the query's words found as whole words (or word starts: "cardi" finds "cardiac") in each
    explanation, counted only when every word is found: 1.0 or 0.0, case and punctuation ignored."""
    wanted = words_of(query)
    if not wanted:
        return np.ones(len(explanations))
    scores = np.zeros(len(explanations))
    for i, text in enumerate(explanations):
        have = words_of(text or "")
        if all(any(word.startswith(w) for word in have) for w in wanted):
            scores[i] = 1.0
    return scores


def match_scores(query: str, explanations: Sequence[str], scorer: Scorer = word_scores) -> np.ndarray:
    """Each explanation's match score for `query` under `scorer` (words by default)."""
    return np.asarray(scorer(query, list(explanations)), dtype=np.float64)


def meaning_scorer(similarity: Callable[[str, Sequence[str]], np.ndarray],
                   threshold: float = MEANING_THRESHOLD) -> Scorer:
    """A Scorer from a sentence similarity (core.sentence.rank_by_meaning): the cosine where it reaches
    `threshold`, else 0; an empty query matches everything, as with words."""
    def scores(query: str, explanations: Sequence[str]) -> np.ndarray:
        if not words_of(query):
            return np.ones(len(explanations))
        cosine = np.asarray(similarity(query, [text or "" for text in explanations]), dtype=np.float64)
        return np.where(cosine >= threshold, cosine, 0.0)
    return scores
