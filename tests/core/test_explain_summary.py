"""The pair summary's prompt (what it shows of hand-made facts, and the instruction to cite ids), the parsing of the
ids a reply cites, and its storage in the explanations database keyed by both SAEs' fingerprints."""

import math

import pytest

from core import explanations
from core.explain.summary import (Citation, FeatureFact, RowFact, SummaryFacts, cited_features, facts_hash,
                                  parse_summary, summary_messages, within_control)
from summary_facts import FACTS

def test_the_prompt_shows_each_measurement_with_its_id_and_control():
    system, user = (m["content"] for m in summary_messages(FACTS))
    assert "Cite every feature you mention by its id exactly as written (like base#12 or finetuned#40)" in system
    assert "say that it is within the control" in system
    assert ("- blocks.3.hook_resid_post (layer 3), first 5 tokens after BOS: heart*, the, kidney*. Medical words in "
            "its top 20: 7 (random directions of the same norm: 0.4)") in user
    assert ('- base#123: change +0.25, q 1e-06 (control pair: +0.01) fires on: heart | pulse explanation: "the heart '
            'and its beat"') in user
    # the control pair changes base#7 more than the pair does: the prompt says so, and only for it
    assert "- base#7: change +0.02, q 0.3 (control pair: +0.05, within the control) fires on: the | a" in user
    assert user.count("within the control)") == 1
    assert "- base#99: change -0.3" in user
    assert '- finetuned#45: q 0.01 fires on: vein | artery explanation: "blood vessels"' in user
    assert ("597 of finetuned's features emerged, 120 of them beyond the control (base -> base_resae alone gives "
            "12 emerged); 40 of base's disappeared, 3 beyond the control (control alone: 10).") in user
    assert "- row 12 (KL 0.31): the pulmonary <<artery>> and" in user
    assert user.endswith("Cite feature ids exactly as written above (like base#12). Say which claims are within the "
                         "control.")
    assert summary_messages(FACTS) == summary_messages(FACTS)  # pure


def test_without_a_control_the_prompt_says_nothing_is_checked_against_one():
    facts = SummaryFacts("base", "finetuned", increased=(FeatureFact("base", 1, "x", 0.1, 0.01),))
    user = summary_messages(facts)[1]["content"]
    assert "No control pair is declared" in user and "(control pair" not in user
    assert "Fates of features" not in user and "Text where" not in user  # blocks without facts are left out


def test_within_control_compares_magnitudes():
    assert within_control(FeatureFact("base", 1, "", -0.1, 0.5, 0.2))
    assert not within_control(FeatureFact("base", 1, "", -0.3, 0.5, 0.2))
    assert not within_control(FeatureFact("base", 1, "", 0.3, 0.5, None))
    assert not within_control(FeatureFact("base", 1, "", 0.3, 0.5, math.nan))


def test_the_facts_hash_moves_with_any_fact():
    assert facts_hash(FACTS) == facts_hash(SummaryFacts(**{**FACTS.__dict__}))
    moved = SummaryFacts(**{**FACTS.__dict__, "rows": (RowFact(12, 0.32, "the pulmonary <<artery>> and"),)})
    assert facts_hash(moved) != facts_hash(FACTS) and len(facts_hash(FACTS)) == 16


WIDTHS = {"base": 24, "finetuned": 24, "ft-2": 8}


@pytest.mark.parametrize("text, expected", [
    ("base#12 rose, as did finetuned#0.", [Citation("base", 12, True), Citation("finetuned", 0, True)]),
    ("base#24 and finetuned#99 are past the width", [Citation("base", 24, False), Citation("finetuned", 99, False)]),
    ("ft-2#7 (a hyphenated arm) but ft-2#8 is not", [Citation("ft-2", 7, True), Citation("ft-2", 8, False)]),
    ("control#3 names no arm; so does #5", [Citation("control", 3, False), Citation("", 5, False)]),
    ("base#12, then base#12 again and (base#3)", [Citation("base", 12, True), Citation("base", 3, True)]),
    ("base #12 with a space is a bare id", [Citation("", 12, False)]),
    ("no ids: base#x, a#1b, C#, 2#3, #1a", []),
])
def test_cited_features(text, expected):
    assert cited_features(text, WIDTHS) == expected


def test_parse_summary_closes_blank_lines_and_cuts_at_a_sentence():
    assert parse_summary("\n  One.\n\n\n\nTwo.  \n") == "One.\n\nTwo."
    long = parse_summary("A sentence here. " * 400)
    assert len(long) <= 3000 and long.endswith("here.")


def test_a_summary_round_trip_and_a_replaced_sae(tmp_path):
    path = tmp_path / "explanations.duckdb"
    now = {"base": "fp-a", "finetuned": "fp-b"}
    assert explanations.current_pair_summary(path, "s", ("base", "finetuned"), now) is None
    assert not path.exists()  # reading creates nothing
    first = explanations.PairSummary("base", "finetuned", "fp-a", "fp-b", "h1", "openai:m", 1, "base#3 rose.")
    explanations.save_pair_summary(path, "s", first)
    explanations.save_pair_summary(path, "s", explanations.PairSummary(
        "base", "finetuned", "fp-a", "fp-b", "h2", "openai:m", 1, "base#4 rose."))
    explanations.save_pair_summary(path, "s", explanations.PairSummary(  # about another finetuned SAE
        "base", "finetuned", "fp-a", "fp-old", "h3", "openai:m", 1, "an old SAE's summary"))
    latest = explanations.current_pair_summary(path, "s", ("base", "finetuned"), now)
    assert (latest.summary, latest.facts_hash, latest.explainer, latest.prompt_version) == ("base#4 rose.", "h2",
                                                                                              "openai:m", 1)
    assert latest.created_at is not None
    assert explanations.current_pair_summary(path, "s", ("base", "finetuned"), {**now, "finetuned": "fp-new"}) is None
    assert explanations.current_pair_summary(path, "other", ("base", "finetuned"), now) is None
    assert explanations.current_pair_summary(path, "s", ("finetuned", "base"), now) is None
    assert explanations.current_explanations(path, "s", now).empty  # summaries are not feature explanations
