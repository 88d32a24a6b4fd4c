"""The Appendix D proxy on a planted feature: a corpus of 1,000 tokens where token 7 ("=") is 2% of the corpus, and
a feature that fires 3.0 on every "=" and 1.0 on ten other tokens."""

import math

import numpy as np
import pytest

from core.errors import StudyInputError
from core.proxy_test import hypothesis_token_ids, llr_from_fired_tokens, proxy_llr
from tests.factories import byte_tokenizer

EQUALS, SPACED_EQUALS = 7, 8


def planted():
    tokens = np.arange(1000) % 50 + 10  # tokens 10..59, 20 of each
    tokens[::50] = EQUALS  # 20 positions are "=" (2%)
    acts = np.zeros(1000)
    acts[tokens == EQUALS] = 3.0
    acts[[1, 2, 3, 4, 5, 6, 7, 8, 9, 11]] = 1.0  # ten other tokens, weakly
    return acts, tokens


def test_planted_feature_by_hand():
    acts, tokens = planted()
    result = proxy_llr(acts, tokens, [EQUALS])
    # P(= | feature) = 60 / 70; P(=) = 20 / 1000: LLR = ln(0.857 / 0.02) = ln(42.86) = 3.758
    assert result.p_given_feature == pytest.approx(60 / 70) and result.p_corpus == pytest.approx(0.02)
    assert result.llr == pytest.approx(math.log((60 / 70) / 0.02)) and result.llr == pytest.approx(3.758, abs=1e-3)
    assert not result.lower_bound


def test_a_hypothesis_the_feature_ignores_scores_below_zero():
    acts, tokens = planted()
    # token 11 occurs 20 times; the feature fires once on it (position 1): ln((1/70) / 0.02) = -0.336
    assert proxy_llr(acts, tokens, [11]).llr == pytest.approx(math.log((1 / 70) / 0.02))
    assert proxy_llr(acts, tokens, [40]).llr == -math.inf  # never fires on token 40


def test_alternative_tokens_pool_their_mass():
    acts, tokens = planted()
    tokens = tokens.copy()
    tokens[25] = SPACED_EQUALS  # one " =" the feature fires 2.0 on
    acts = acts.copy()
    acts[25] = 2.0
    result = proxy_llr(acts, tokens, [EQUALS, SPACED_EQUALS])
    assert result.llr == pytest.approx(math.log((62 / 72) / (21 / 1000)))


def test_from_the_stored_top_fired_tokens_matches_the_raw_pass():
    acts, tokens = planted()
    unigram = dict(zip(*np.unique(tokens, return_counts=True)))
    fired = [(EQUALS, 60.0), (11, 1.0)]
    stored = llr_from_fired_tokens(fired, float(acts.sum()), unigram, tokens.size, [EQUALS])
    assert stored.llr == pytest.approx(proxy_llr(acts, tokens, [EQUALS]).llr) and not stored.lower_bound
    # token 12 occurs in the corpus but is not among the stored tokens: what is shown is a lower bound
    assert llr_from_fired_tokens(fired, float(acts.sum()), unigram, tokens.size, [EQUALS, 12]).lower_bound


def test_bad_hypotheses_are_one_line():
    acts, tokens = planted()
    with pytest.raises(StudyInputError, match="no hypothesis token occurs"):
        proxy_llr(acts, tokens, [999])
    with pytest.raises(StudyInputError, match="never fires"):
        proxy_llr(np.zeros(1000), tokens, [EQUALS])
    tokenizer = byte_tokenizer()
    assert len(hypothesis_token_ids(tokenizer, ["e"])) == 1
    with pytest.raises(StudyInputError, match="'the heart and the kidney' is .* tokens"):
        hypothesis_token_ids(tokenizer, ["the heart and the kidney"])
