"""The dashboard on a three-arm study with two declared pairs (tests/pair_study.py, base → ft2 then base →
finetuned): the Model diff page shows either pair (picked, or from a link), and a base feature in both pairs
shows its fate in each on its page."""

import numpy as np
import pandas as pd
import pytest

from app_pages import page
from pair_study import PERMUTATION, PLANTED


@pytest.fixture
def study(three_arm_study, monkeypatch):
    config, _ = three_arm_study
    monkeypatch.setenv("SAE_DIFF_CONFIG", config.source_path)
    return config


def counts(at) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if "persist" in d.value.columns).set_index("arm")


def text(at) -> str:
    return "\n".join(m.value for m in list(at.markdown) + list(at.caption))


def test_the_model_diff_page_shows_each_declared_pair(study):
    at = page("diff")
    assert not at.exception and not at.error
    picker = at.selectbox(key="diff_pair")
    assert picker.options == ["base → ft2", "base → finetuned"] and picker.value == ("base", "ft2")
    first = counts(at)
    assert sorted(first.index) == ["base", "ft2"]
    assert first.loc["base", ["persist", "disappear", "dead"]].tolist() == [19, 1, 4]  # PLANTED disappears
    assert "a base feature without such a match *disappears*, a ft2 one *emerges*" in text(at)
    picker.set_value(("base", "finetuned")).run()
    assert not at.exception and at.query_params["pair"] == "base-finetuned"
    second = counts(at)
    assert sorted(second.index) == ["base", "finetuned"]
    assert second.loc["base", ["persist", "dead"]].tolist() == [20, 4] and "disappear" not in second.columns
    assert "- Best-match view: **20** persisting finetuned features match **20** distinct base features." in text(at)


def test_a_link_opens_its_pair_and_a_pair_not_declared_is_one_line(study):
    at = page("diff", pair="base-finetuned")
    assert at.selectbox(key="diff_pair").value == ("base", "finetuned")
    assert sorted(counts(at).index) == ["base", "finetuned"]
    bad = page("diff", pair="finetuned-ft2")
    assert [e.value for e in bad.error] == [
        "pair='finetuned-ft2' in the link: no such pair; the study's pairs are base-ft2, base-finetuned"]
    assert not bad.dataframe


def test_a_feature_in_two_pairs_shows_its_fate_in_each(study):
    at = page("feature", arm="base", feature=str(PLANTED))
    assert not at.exception
    assert "base → ft2 · **disappeared between base and ft2**" in text(at)
    match = int(np.argsort(PERMUTATION)[PLANTED])  # B's feature 15
    links = [link.proto.label for link in at.get("page_link")]
    assert f"base → finetuned · persists: finetuned feature {match} (correlation 1.000) — compare" in links
    only_pair = page("feature", arm="finetuned", feature=str(match))  # an arm in one pair: no pair named
    labels = [link.proto.label for link in only_pair.get("page_link")]
    assert f"persists: base feature {PLANTED} (correlation 1.000) — compare" in labels
