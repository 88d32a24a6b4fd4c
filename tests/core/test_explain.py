"""The explanation prompt, the parsing of replies and the scorers, with hand-checkable numbers."""

import math

import numpy as np
import pytest

from core.explain import Context, FeatureEvidence, explanation_messages, parse_explanation
from core.explain.heldout import CorpusWindows, split_evidence
from core.explain.prompt import marked_text, scale_0_10
from core.explain.scoring import balanced_accuracy, pearson, score_explanation

HEART = Context((" the", " heart", " beat", "s"), (0.0, 2.0, 1.0, 0.0))
KIDNEY = Context((" a", " kidney", " and", " vein"), (0.0, 0.0, 0.0, 0.0))


def test_firing_tokens_are_marked_and_scaled_to_the_max():
    assert marked_text(HEART, 2.0) == " the <<heart beat>>s"  # one pair around a run, the space outside
    assert [scale_0_10(a, 2.0) for a in (0.0, 0.05, 1.0, 2.0, 3.0)] == [0, 1, 5, 10, 10]


def test_the_prompt_is_a_pure_function_of_the_evidence():
    evidence = FeatureEvidence((HEART,), (Context((" heart",), (0.4,)),), (" cardiac", " pulse"))
    messages = explanation_messages(evidence)
    assert messages == explanation_messages(evidence)
    text = messages[1]["content"]
    assert "1.  the <<heart beat>>s" in text and "heart (10), beat (5)" in text
    assert "2.  <<heart>>" in text and "heart (2)" in text  # a weaker example: 0.4 of max 2.0
    assert "Tokens the feature makes more likely next: cardiac, pulse" in text


@pytest.mark.parametrize("reply, expected", [
    ("Explanation: the word heart\nmore text", "the word heart"),
    ("\n\n  - \"mentions of the heart\"", "mentions of the heart"),
    ("1. <<heart>> tokens", "heart tokens"),
    ("The feature detects: body organs", "body organs"),
    ("This feature fires on words about the heart.", "words about the heart."),
    ("   \n", ""),
])
def test_parse_explanation(reply, expected):
    assert parse_explanation(reply) == expected


def test_a_long_reply_is_cut_at_a_word():
    text = parse_explanation("word " * 100)
    assert len(text) <= 200 and text.endswith("word")


def test_pearson_and_balanced_accuracy_by_hand():
    assert pearson([0, 10, 5, 0], [0, 2, 1, 0]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(np.corrcoef([1, 2, 3], [1, 3, 2])[0, 1])
    assert math.isnan(pearson([5, 5, 5], [0, 1, 0]))
    # hits 2/3 on activating, correct rejections 1/2 on non-activating: (2/3 + 1/2) / 2
    assert balanced_accuracy([1, 1, 0, 0, 1], [1, 1, 1, 0, 0]) == pytest.approx(7 / 12)
    assert math.isnan(balanced_accuracy([1, 0], [1, 1]))


def _word_judge(word):
    """A judge that says yes exactly when the last token asked about (or the text) contains `word`."""
    def judge(conversations):
        answers = []
        for messages in conversations:
            question = messages[-1]["content"]
            asked = question.split("Does the last token, ")[-1] if "last token" in question else question
            answers.append(1.0 if word in asked.split("Feature:")[-1].split("\n", 1)[-1] else 0.0)
        return answers
    return judge


def test_a_right_explanation_scores_higher_than_a_wrong_one():
    activating, quiet = [HEART], [KIDNEY]
    right = score_explanation("the word heart", activating, quiet, _word_judge("heart"))
    wrong = score_explanation("the word kidney", activating, quiet, _word_judge("kidney"))
    # predicted 0, 10, 0, 0 | 0, 0, 0, 0 against 0, 2, 1, 0 | 0, 0, 0, 0: r = 0.802 by hand
    actual = [0, 2, 1, 0, 0, 0, 0, 0]
    assert right.simulation == pytest.approx(np.corrcoef([0, 10, 0, 0, 0, 0, 0, 0], actual)[0, 1])
    assert right.detection == 1.0 and (right.n_tokens, right.n_activating, right.n_non_activating) == (8, 1, 1)
    assert wrong.simulation < 0 and wrong.detection == 0.0


def test_held_out_contexts_are_never_shown():
    top = [Context((f" t{i}",), (10.0 - i,)) for i in range(6)]
    samples = [Context((f" s{i}",), (1.0 - i / 10,)) for i in range(6)]
    quiet = [Context((" q",), (0.0,))] * 4
    split = split_evidence(top, samples, [" x"], quiet, top_contexts=3, n_samples=2, held_out=4)
    shown = {*split.evidence.top, *split.evidence.samples}
    assert [c.tokens[0] for c in split.evidence.top] == [" t0", " t1", " t2"]
    assert [c.tokens[0] for c in split.evidence.samples] == [" s0", " s2"]
    assert [c.tokens[0] for c in split.activating] == [" t3", " s1", " t4", " s3"]  # alternating, strongest first
    assert not shown & set(split.activating) and len(split.non_activating) == 4


def test_non_firing_windows_are_those_where_the_feature_is_zero():
    maxima = np.array([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0], [0.5, 0.0]], dtype=np.float32)
    windows = CorpusWindows([[1], [2], [3], [4]], maxima)
    assert sorted(windows.non_firing(0, 10, seed=0)) == [0, 2]
    assert sorted(windows.non_firing(1, 10, seed=0)) == [1, 2, 3]
    assert len(windows.non_firing(1, 2, seed=0)) == 2
    assert windows.context(3, ["a", "b", "c", "d", "e"]) == Context(("e",), (0.0,))


def test_a_rare_feature_keeps_some_top_contexts_for_scoring():
    top = [Context((f" t{i}",), (6.0 - i,)) for i in range(6)]
    split = split_evidence(top, [], [], [], top_contexts=8, n_samples=2, held_out=5)
    assert len(split.evidence.top) == 3 and len(split.activating) == 3  # half shown, half held out


def test_the_meaning_scorer_keeps_cosines_at_or_above_the_threshold_and_zeroes_the_rest():
    from core.explain.search import MEANING_THRESHOLD, meaning_scorer

    cosines = {"arteries and veins": 0.62, "dates and numbers": 0.05, "the heart": 0.4}
    scorer = meaning_scorer(lambda query, texts: np.array([cosines[t] for t in texts]))
    scores = scorer("blood vessels", list(cosines))
    assert MEANING_THRESHOLD == 0.4 and scores.tolist() == [0.62, 0.0, 0.4]
    assert scorer("", list(cosines)).tolist() == [1.0, 1.0, 1.0]  # no query: everything matches, as with words


def test_the_readme_shows_the_prompt_the_code_sends():
    """The README's example prompt (a feature firing on " heart") is what explanation_messages writes for it."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    shown = readme.split("```\nSYSTEM: ", 1)[1].split("\n```", 1)[0]
    system, user = shown.split("\nUSER: ", 1)
    evidence = FeatureEvidence(
        (Context((" the", " heart", " beat", "s", " fast"), (0.0, 2.0, 1.0, 0.0, 0.0)),
         Context((" a", " weak", " heart"), (0.0, 0.0, 1.8))),
        (Context((" heart", "burn"), (0.4, 0.0)),), (" cardiac", " pulse"))
    sent = explanation_messages(evidence)
    assert " ".join(system.split()) == sent[0]["content"]  # the README wraps the system line
    assert user == sent[1]["content"]
