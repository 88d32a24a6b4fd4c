"""Explanations on the pages: the Feature page (top), the Label queue (above the contexts), Compare, and the
Features table with its search; an explanation of a replaced SAE (another decoder fingerprint) never shows."""

import pytest

from core import explanations
from core.explanations import Explanation
from app_pages import features_matched, page, tiny_study
from tiny_db import FINGERPRINT


@pytest.fixture
def study(tmp_path, monkeypatch):
    root = tiny_study(tmp_path, monkeypatch)
    path = root / "explanations.duckdb"  # beside labels.duckdb: the config's default
    for arm, feature, fingerprint, text, sim in [
            ("base", 1, FINGERPRINT["base"], "lungs and the liver", 0.62),
            ("base", 0, FINGERPRINT["base"], "the heart and kidneys", 0.41),
            ("finetuned", 4, FINGERPRINT["finetuned"], "blood flow to the heart", 0.55),
            ("base", 4, "an-old-sae", "words about walking", 0.9)]:  # a replaced SAE: kept, never shown
        explanations.save_explanation(path, "tiny", Explanation(arm, feature, fingerprint, text, "local:test", 1,
                                                                sim, 0.75, 80, 5, 5))
    return root


def features_table(at):
    return next(d.value for d in at.dataframe if "explanation" in d.value.columns)


def texts(at):
    return [m.value for m in at.markdown] + [c.value for c in at.caption]


def test_the_feature_page_shows_the_explanation_and_its_scores_at_the_top(study):
    at = page("feature", arm="base", feature=1)
    assert not at.exception
    assert at.markdown[0].value == "**Explanation:** lungs and the liver"
    assert any("simulation r **0.62** · detection **0.75**" in c.value and "5 activating + 5 quiet" in c.value
               for c in at.caption)


def test_an_explanation_of_another_sae_is_not_shown(study):
    at = page("feature", arm="base", feature=4)
    assert not at.exception
    assert not any("walking" in t for t in texts(at))
    assert any("No explanation yet" in c.value and "--features 4" in c.value for c in at.caption)


def test_the_label_queue_shows_the_explanation_above_the_contexts(study):
    at = page("label")
    assert at.subheader[0].value == "base · feature 1"
    shown = [m.value for m in at.markdown]  # in the order the page draws them
    explanation = shown.index("**Explanation:** lungs and the liver")
    first_context = next(i for i, text in enumerate(shown) if "<span" in text)  # a shaded context
    assert explanation < first_context


def test_compare_shows_both_explanations(study):
    at = page("compare", left_arm="base", left_feature=0, right_arm="finetuned", right_feature=4)
    assert not at.exception
    shown = [m.value for m in at.markdown if m.value.startswith("**Explanation:**")]
    assert shown == ["**Explanation:** the heart and kidneys", "**Explanation:** blood flow to the heart"]


def test_features_searches_explanations_and_shows_them_as_a_column(study):
    at = page("features", dead="shown")
    assert not at.exception
    table = features_table(at)
    assert table.set_index(["arm", "feature"]).loc[("base", 1), "explanation"] == "lungs and the liver"
    at.text_input(key="features_explanation").set_value("heart").run()
    assert features_matched(at) == 2  # base 0 and finetuned 4; base 4's "heart"-free text is of an old SAE
    table = features_table(at)
    assert sorted(zip(table["arm"], table["feature"])) == [("base", 0), ("finetuned", 4)]
    at.text_input(key="features_explanation").set_value("walking").run()
    assert "explanation mentions 'walking'" in at.warning[0].value  # the old SAE's explanation is not searched


def test_features_searches_explanations_by_meaning(study):
    # "cardiac" is in none of the texts: by words nothing matches; by meaning the two heart explanations do
    at = page("features", dead="shown", explained="cardiac")
    assert "explanation mentions 'cardiac'" in at.warning[0].value
    at = page("features", dead="shown", explained="cardiac", match="meaning")
    assert not at.exception
    table = features_table(at)
    assert sorted(zip(table["arm"], table["feature"])) == [("base", 0), ("finetuned", 4)]
