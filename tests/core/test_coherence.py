"""Coherence (paper eq. 1) and medical matches: hand-computed cases and a brute-force pair loop."""

import math
from itertools import combinations

import numpy as np
import pytest
from gensim.models import KeyedVectors

from core.coherence import candidate_by, feature_word_scores, fired_word_matches, token_words

# id:       0        1           2          3       4         5          6         7
TOKENS = ["Ġheart", "Ġcardiac", "Ġkidney", "Ġ123", "ĠHeart", "Ġhearth", "Ġzzzq", "heart"]


def toy_kv() -> KeyedVectors:
    kv = KeyedVectors(vector_size=2)
    kv.add_vectors(["heart", "cardiac", "kidney", "hearth"], np.array([[1, 0], [1, 1], [0, 2], [-1, 0]], np.float32))
    return kv


def scores(rows, values, medical=("heart", "kidney", "cardiac")):
    vocab = token_words(TOKENS, toy_kv(), medical)
    return feature_word_scores(np.array(rows), np.array(values, dtype=np.float32), vocab)


def test_hand_computed_coherence():
    """heart (1,0), cardiac (1,1)/√2, kidney (0,1) with weights 3, 2, 1:
    pairs: 3·2·cos45° + 3·1·0 + 2·1·cos45° = 8/√2; weights 6 + 3 + 2 = 11; C = 8/(11√2) = 0.5143."""
    result = scores([[0, 1, 2]], [[3.0, 2.0, 1.0]])
    assert result.coherence[0] == pytest.approx(8 / (11 * math.sqrt(2)), rel=1e-6)
    assert result.n_valid[0] == 3 and result.med_matches[0] == 3 and result.is_candidate[0]


def test_case_and_space_variants_are_one_word_with_the_larger_weight():
    """"Heart" (5), "heart" (2) and "Ġheart" (3) are one entry of weight 5: C(heart·5, cardiac·1) = cos45° = 0.7071.
    Counted three times (the authors' bug): (5·2 + 5·3 + 2·3 + (5+2+3)·1·0.7071) / (31 + 10) = 0.9286."""
    result = scores([[4, 7, 0, 1]], [[5.0, 2.0, 3.0, 1.0]])
    assert result.n_valid[0] == 2
    assert result.coherence[0] == pytest.approx(math.sqrt(0.5), rel=1e-6)
    assert result.med_matches[0] == 2 and result.matched_words[0] == ["heart", "cardiac"]


def test_fewer_than_two_valid_tokens_is_no_score_not_zero():
    result = scores([[0, 3, 6], [3, 6, 3]], [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    assert np.isnan(result.coherence).all()
    assert result.n_valid.tolist() == [1, 0]


def test_whole_words_only_hearth_is_not_heart():
    result = scores([[5, 2]], [[1.0, 1.0]], medical=("heart",))
    assert result.med_matches[0] == 0 and not result.is_candidate[0]
    assert result.coherence[0] == pytest.approx(0.0, abs=1e-6)  # hearth (-1,0) ⟂ kidney (0,1)


def test_matches_do_not_need_an_embedding():
    """"zzzq" is medical here but has no vector: it counts as a match and not as a valid coherence token."""
    result = scores([[6, 0]], [[1.0, 1.0]], medical=("zzzq", "heart"))
    assert result.med_matches[0] == 2 and result.n_valid[0] == 1


def test_vectorised_equals_pair_loop():
    rng = np.random.default_rng(0)
    words = [f"w{chr(97 + i)}{chr(97 + j)}" for i in range(10) for j in range(10)]
    tokens = [("Ġ" if i % 2 else "") + (w.upper() if i % 3 == 0 else w) for i, w in enumerate(words * 2)]
    kv = KeyedVectors(vector_size=8)
    kv.add_vectors(words[:80], rng.normal(size=(80, 8)).astype(np.float32))
    vocab = token_words(tokens, kv, words[:30])
    ids = rng.integers(0, len(tokens), size=(200, 10))
    values = rng.uniform(0.1, 5, size=(200, 10)).astype(np.float32)
    result = feature_word_scores(ids, values, vocab)
    for f in range(200):
        best: dict[str, float] = {}
        for token_id, w in zip(ids[f], values[f]):
            word = tokens[token_id].lstrip("Ġ").lower()
            best[word] = max(best.get(word, -np.inf), float(w))
        valid = [(word, w) for word, w in best.items() if word in kv.key_to_index]
        pairs = list(combinations(valid, 2))
        if len(valid) < 2:
            assert np.isnan(result.coherence[f])
            continue
        num = sum(a[1] * b[1] * kv.similarity(a[0], b[0]) for a, b in pairs)
        den = sum(a[1] * b[1] for a, b in pairs)
        assert result.coherence[f] == pytest.approx(num / (den + 1e-8), rel=1e-5, abs=1e-6)
        assert result.med_matches[f] == sum(word in words[:30] for word in best)


def test_fired_matches_count_each_medical_word_once_and_skip_padding():
    """Fired tokens, most fired first, -1 past a feature's last: "ĠHeart", "heart" and "Ġheart" are one word;
    "Ġhearth" is not "heart"; a feature that fired on nothing has no match."""
    vocab = token_words(TOKENS, toy_kv(), ("heart", "kidney", "cardiac"))
    result = fired_word_matches(np.array([[4, 7, 0, 2, 5], [3, 6, -1, -1, -1], [-1, -1, -1, -1, -1]]), vocab)
    assert result.med_matches.tolist() == [2, 0, 0]
    assert result.matched_words == [["heart", "kidney"], [], []]


def test_candidate_by_each_rule():
    """Feature by feature: decoder matches, fired matches, LLR (NaN: never fired) -> who made it a candidate."""
    decoder = np.array([2, 0, 3, 1, 2, 0])
    fired = np.array([0, 2, 2, 3, 2, 2])
    llr = np.array([0.0, 2.0, 1.6, 1.0, np.nan, 1.5])
    assert candidate_by(decoder, fired, llr, "decoder", 1.5).tolist() == ["decoder", None, "decoder", None, "decoder",
                                                                         None]
    assert candidate_by(decoder, fired, llr, "fired", 1.5).tolist() == [None, "fired", "fired", None, None, "fired"]
    assert candidate_by(decoder, fired, llr, "either", 1.5).tolist() == ["decoder", "fired", "both", None, "decoder",
                                                                        "fired"]
    with pytest.raises(ValueError, match="candidate rule"):
        candidate_by(decoder, fired, llr, "logit", 1.5)
