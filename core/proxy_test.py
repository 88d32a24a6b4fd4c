"""The log-likelihood-ratio proxy for a feature hypothesis (Horn & Elliott, seed 004, Appendix D, after Bricken et
al. 2023): how much likelier the hypothesis's tokens are where the feature fires than in the corpus at large.

    LLR = log( P(H | feature) / P(H) )          natural log

P(H) is the hypothesis tokens' share of the corpus (the unigram distribution; for a string, Appendix D's product
of its tokens' unigram probabilities, here for the single-token hypotheses the paper uses: any of the tokens H,
e.g. "=" and " =" for variable assignment). P(H | feature) is their share of the feature's activation mass: the
sum of its activations on tokens in H over the sum of all its activations. The paper reports 7.53 for its base
model's assignment feature: "=" carries e^7.53 ≈ 1,860 times more of that feature's activation than of the corpus.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import StudyInputError


@dataclass(frozen=True)
class ProxyResult:
    llr: float  # natural log; -inf where the feature never fires on the hypothesis tokens
    p_given_feature: float  # share of the feature's activation mass on the hypothesis tokens
    p_corpus: float  # the hypothesis tokens' share of corpus tokens
    lower_bound: bool = False  # some hypothesis token was outside the stored top fired tokens: LLR is at least this


def llr_from_sums(act_on_hypothesis: float, act_total: float, hypothesis_count: int, n_tokens: int,
                  lower_bound: bool = False) -> ProxyResult:
    """The proxy from four sums: the feature's activation on the hypothesis tokens and on all tokens, and the
    hypothesis tokens' count among all n_tokens corpus tokens."""
    if act_total <= 0:
        raise StudyInputError("the feature never fires on this corpus: it has no activation distribution to test")
    if hypothesis_count <= 0:
        raise StudyInputError("no hypothesis token occurs in the corpus: P(hypothesis) is 0; pick tokens the "
                              "corpus contains")
    p_feature = act_on_hypothesis / act_total
    p_corpus = hypothesis_count / n_tokens
    llr = math.log(p_feature / p_corpus) if p_feature > 0 else -math.inf
    return ProxyResult(llr, p_feature, p_corpus, lower_bound)


def proxy_llr(acts: np.ndarray, tokens: np.ndarray, hypothesis: Iterable[int]) -> ProxyResult:
    """The proxy from one feature's activations `acts` [n] at corpus positions whose tokens are `tokens` [n]."""
    acts, tokens = np.asarray(acts, np.float64), np.asarray(tokens)
    if acts.shape != tokens.shape:
        raise ValueError(f"acts {acts.shape} and tokens {tokens.shape} must align")
    in_hypothesis = np.isin(tokens, np.asarray(sorted(set(hypothesis)), dtype=tokens.dtype))
    return llr_from_sums(float(acts[in_hypothesis].sum()), float(acts.sum()), int(in_hypothesis.sum()), acts.size)


def llr_from_fired_tokens(fired: Sequence[tuple[int, float]], act_total: float, unigram: dict[int, int],
                          n_tokens: int, hypothesis: Iterable[int]) -> ProxyResult:
    """The proxy from what the activations stage stores: the tokens the feature fires on most as (token id,
    summed activation), its total activation (`sum_act`), and the corpus unigram counts. A hypothesis token
    missing from the stored list adds activation the list does not show, so the LLR is then a lower bound."""
    hypothesis = set(hypothesis)
    listed = {int(token): float(act) for token, act in fired}
    on_hypothesis = sum(act for token, act in listed.items() if token in hypothesis)
    count = sum(int(unigram.get(token, 0)) for token in hypothesis)
    missing = any(token not in listed and unigram.get(token, 0) > 0 for token in hypothesis)
    return llr_from_sums(on_hypothesis, act_total, count, n_tokens, lower_bound=missing)


def hypothesis_token_ids(tokenizer: Any, texts: Iterable[str]) -> list[int]:
    """Token ids of a hypothesis given as texts ("=", " ="), each of which must be exactly one token."""
    ids = []
    for text in texts:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) != 1:
            raise StudyInputError(f"hypothesis token {text!r} is {len(encoded)} tokens for this tokenizer; give "
                                  "single tokens (e.g. '=' and ' =')")
        ids.append(int(encoded[0]))
    return ids
