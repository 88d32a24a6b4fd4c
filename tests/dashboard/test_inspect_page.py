"""The Inspect page on a real tiny pair (a model and its perturbed copy, one SAE): type, run, pick a token, pick a
feature; the strips shade by that feature (and its persisting match), the URL carries the view."""

import html
import re
from urllib.parse import parse_qsl, urlsplit

import pytest
from streamlit.testing.v1 import AppTest

from app_pages import APP, page, tiny_study
from core.config import load_config
from core.corpus import load_corpus_rows
from core.inspect import inspect_ids
from core.loading import load_arm
from core.words import new_token_texts
from inspect_study import ALWAYS, TEXT, build_inspect_study
from tiny_db import D_SAE


@pytest.fixture
def inspect_study(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_DIFF_CONFIG", str(build_inspect_study(tmp_path)))
    return tmp_path


def strips(at) -> dict[str, list[float]]:
    """label -> each token's shading (alpha) of every token strip on the page."""
    found = {}
    for m in at.markdown:
        label = re.search(r'margin-right: 0.8em[^"]*">([^<]*)</span>', m.value)
        if "font-family: monospace" in m.value and label:
            found[label.group(1)] = [float(a) for a in re.findall(r"rgba\([^)]*, ([0-9.]+)\)", m.value)]
    return found


def token_links(at, label: str) -> list[dict[str, str]]:
    """The query of each token's link in the strip labelled `label` (a click on token i opens that place)."""
    strip = next(m.value for m in at.markdown if f'">{html.escape(label)}</span>' in m.value)
    hrefs = re.findall(r'<a href="([^"]*)" target="_self" style="color: inherit', strip)
    return [dict(parse_qsl(urlsplit(html.unescape(href)).query)) for href in hrefs]


def test_type_run_pick_a_token_and_a_feature(inspect_study):
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("views/inspect.py").run()
    assert not at.exception and not at.error
    assert at.text_area(key="inspect_text").value == "a pulmonary artery and a vein"  # the corpus's first line
    at.text_area(key="inspect_text").set_value(TEXT)
    at.button(key="inspect_run").click().run()
    assert not at.exception and not at.error
    tokens = at.selectbox(key="inspect_token").options
    assert [t.split(": ")[1].split("  (")[0] for t in tokens] == ["'the'", "' kidney'", "' and'", "' the'", "' heart'"]
    assert at.query_params["text"] == TEXT
    kl = [float(re.search(r"KL ([0-9.]+)", t).group(1)) for t in tokens]
    assert kl[at.selectbox(key="inspect_token").value] == max(kl) > 0  # a run starts at its most divergent token
    at.selectbox(key="inspect_token").set_value(1).run()
    assert token_links(at, "KL") == [{"text": TEXT, "token": str(i)} for i in range(5)]  # each token picks itself
    tables = [frame.value for frame in at.dataframe]
    assert sorted(tables[0]["feature"].tolist()[:2]) == list(ALWAYS) and 1 not in tables[0]["feature"].tolist()
    assert tables[0]["page"].iloc[0].startswith("/feature?arm=base&feature=")
    assert {"base feature", "finetuned feature", "Δ logit"} <= set(tables[2].columns)  # why here
    at.selectbox(key="inspect_feature").set_value("base:0").run()
    shaded = strips(at)
    assert set(shaded) == {"base #0", "finetuned #0", "KL"}  # base 0 persists as finetuned 0 (tiny_db)
    assert shaded["base #0"] == shaded["finetuned #0"] == [1.0] * 5  # 10 everywhere, scale 10
    assert at.query_params["feature"] == "base:0" and at.query_params["token"] == "1"
    assert token_links(at, "finetuned #0")[3] == {"text": TEXT, "token": "3", "feature": "base:0"}
    at.selectbox(key="inspect_feature").set_value("finetuned:5").run()
    shaded = strips(at)
    assert set(shaded) == {"base (no persisting match)", "finetuned #5", "KL"}  # 5 emerges: no partner
    assert shaded["base (no persisting match)"] == [0.0] * 5 and shaded["finetuned #5"] == [1.0] * 5


def test_a_shared_url_opens_the_view_and_a_bad_one_is_one_line(inspect_study):
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"text": TEXT, "token": "4", "feature": "finetuned:0"})
    at.switch_page("views/inspect.py").run()
    assert not at.exception and not at.error
    assert at.text_area(key="inspect_text").value == TEXT and at.selectbox(key="inspect_token").value == 4
    assert set(strips(at)) == {"base #0", "finetuned #0", "KL"}
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"text": TEXT, "feature": "finetuned:99"})
    at.switch_page("views/inspect.py").run()
    assert [e.value for e in at.error] == [f"finetuned has no feature 99 (0–{D_SAE - 1})"]
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"text": "   "})
    at.switch_page("views/inspect.py").run()
    assert [e.value for e in at.error] == ["Type a text to inspect (it is empty)."]


def test_each_top_context_on_a_feature_page_links_to_inspect(tmp_path, monkeypatch):
    tiny_study(tmp_path, monkeypatch)
    at = page("feature", arm="finetuned", feature=4)
    links = [re.search(r'href="([^"]*)"', m.value).group(1) for m in at.markdown if "Inspect ↗" in m.value]
    assert links and links[0] == "inspect?row=0&amp;token=1&amp;feature=finetuned%3A4"  # its corpus row, max token


def test_the_model_diffs_most_divergent_row_opens_in_inspect_on_that_row(inspect_study):
    """The diff page links its top row (tiny_db: corpus row 3, peak at token 5); Inspect opens on exactly that
    row's ids, the URL names the row, not its text, and editing the text makes it a text of its own."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("views/diff.py").run()
    link = next(re.search(r'href="([^"]*)"', m.value).group(1) for m in at.markdown if "Inspect ↗" in m.value)
    params = dict(part.split("=") for part in link.split("?")[1].split("&amp;"))
    assert params == {"row": "3", "token": "5", "base": "base", "finetuned": "finetuned"}
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(params)
    at.switch_page("views/inspect.py").run()
    assert not at.exception and not at.error
    config = load_config(str(inspect_study / "study.toml"))
    base, finetuned = (load_arm(arm, "cpu") for arm in config.arms)
    ids = load_corpus_rows(config.corpus, base.model.tokenizer)[3].tolist()
    row_text = "".join(new_token_texts(base.model.tokenizer, ids[:1], ids[1:]))
    assert at.text_area(key="inspect_text").value == row_text and at.selectbox(key="inspect_token").value == 5
    expected = inspect_ids(base, finetuned, ids)
    shown = [float(re.search(r"KL ([0-9.]+)", t).group(1)) for t in at.selectbox(key="inspect_token").options]
    assert shown == pytest.approx([round(k, 3) for k in expected.kl], abs=1e-3) and len(shown) == 31
    assert "Corpus row 3 (corpus)" in "\n".join(c.value for c in at.caption)
    assert at.query_params["row"] == "3" and "text" not in at.query_params
    at.text_area(key="inspect_text").set_value(TEXT)
    at.button(key="inspect_run").click().run()
    assert at.query_params["text"] == TEXT and "row" not in at.query_params


def test_a_link_to_a_row_the_corpus_does_not_have_is_one_line(inspect_study):
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"row": "8"})
    at.switch_page("views/inspect.py").run()
    assert [e.value for e in at.error] == ["row='8' in the link: the corpus has rows 0 to 7"]


def test_the_same_arm_on_both_sides_is_one_line_and_no_run(tmp_path, monkeypatch):
    """base against base is a KL of 0 at every token: say so and load nothing (tiny_db's models do not exist, so a
    run would be a load error instead; issue 25)."""
    tiny_study(tmp_path, monkeypatch)
    at = page("inspect", base="base", finetuned="base")
    assert not at.exception
    assert [e.value for e in at.error] == ["Both sides are base, the same arm: pick another arm for one side to "
                                           "compare."]
    assert at.selectbox(key="inspect_finetuned").value == "base"  # the form stays, to pick another
    assert not any(s.label == "Token" for s in at.selectbox)  # no run
