"""The Overview page: the demo's build report when there is one, a guard (not a traceback) when data is missing."""

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from factories import study_toml

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
REPORT = {
    "seed": 0, "fast": True, "medical_perplexity_change": -0.3,
    "perplexity": {"base": {"general": 200.0, "medical": 600.0}, "finetuned": {"general": 230.0, "medical": 420.0}},
    "saes": {arm: {"hook_name": "blocks.1.hook_resid_pre", "d_in": 96, "d_sae": 768, "l0": 80.0,
                   "explained_variance": 0.81, "mse": 0.01, "dead_fraction": 0.004, "n_tokens": 5000}
             for arm in ("base", "finetuned")},
}


def run_app(monkeypatch, config: Path) -> AppTest:
    monkeypatch.setenv("SAE_DIFF_CONFIG", str(config))
    return AppTest.from_file(APP, default_timeout=30).switch_page("views/overview.py").run()


def write_study(tmp_path: Path) -> Path:
    arms = [{"name": name, "model": f"m/{name}", "sae_path": f"s/{name}"} for name in ("base", "finetuned")]
    config = tmp_path / "study.toml"
    config.write_text(study_toml(arms, features_db=str(tmp_path / "demo" / "features.duckdb")))
    return config


def test_build_report_and_missing_database_guard(tmp_path, monkeypatch):
    config = write_study(tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "manifest.json").write_text(json.dumps(REPORT))
    at = run_app(monkeypatch, config)
    assert not at.exception
    assert "medical perplexity by -30%" in at.markdown[0].value + "".join(m.value for m in at.markdown)
    assert len(at.dataframe) == 1  # the build's own SAE check is not shown beside the quality stage's numbers
    assert "No features database yet" in at.info[0].value
    assert "python -m precompute run --config" in at.info[0].value


def test_without_any_data_the_page_guides_instead_of_failing(tmp_path, monkeypatch):
    at = run_app(monkeypatch, write_study(tmp_path))
    assert not at.exception
    assert len(at.dataframe) == 1  # only the arms table
    assert "No features database yet" in at.info[0].value


def test_unreadable_config_is_an_error_message(tmp_path, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text("[study]\nnme = 'x'\n")
    at = run_app(monkeypatch, bad)
    assert not at.exception
    assert "did you mean 'name'" in at.error[0].value


def write_tiny_database(path: Path) -> None:
    """Two arms of 4 features: base has 1 candidate and 1 dead feature, finetuned 3 candidates, none dead."""
    import pyarrow as pa

    from core import database as db

    con, _ = db.open_build(path)
    db.write_study(con, "tiny", "", "{}", "hash", "{}", [], [])
    for arm, candidates, n_fired, ev in (("base", [True, False, False, False], [5, 0, 3, 1], 0.9),
                                         ("finetuned", [True, True, True, False], [5, 2, 3, 1], 0.8)):
        by = (["decoder", None, None, None] if arm == "base" else ["decoder", "fired", "both", None])
        words = pa.table({"arm": [arm] * 4, "feature": [0, 1, 2, 3], "coherence": [0.2, 0.4, None, 0.6],
                          "n_valid": [3, 3, 1, 3], "med_matches": [2 if b in ("decoder", "both") else 0 for b in by],
                          "is_candidate": candidates, "candidate_by": by})
        acts = pa.table({"arm": [arm] * 4, "feature": [0, 1, 2, 3], "n_fired": n_fired})
        db.write_stage(con, arm, "words", "k", 0.0, {"feature_words": words})
        db.write_stage(con, arm, "activations", "k", 0.0, {"feature_activations": acts})
        db.write_stage(con, arm, "quality", "k", 0.0, {}, {"explained_variance": ev, "l0": 12.0})
    db.publish(con, path)


def test_features_per_arm_from_the_database(tmp_path, monkeypatch):
    config = write_study(tmp_path)
    write_tiny_database(tmp_path / "demo" / "features.duckdb")
    at = run_app(monkeypatch, config)
    assert not at.exception and not at.info
    table = at.dataframe[1].value.set_index("measure")  # one column per arm: fits the page however many rows
    assert table.loc["medical candidates ³", "base"] == "1" and table.loc["medical candidates ³", "finetuned"] == "3"
    assert table.loc["… by their top tokens", "finetuned"] == "2"  # decoder and both
    assert table.loc["… by the tokens they fire on", "finetuned"] == "2" and table.loc["… by the tokens they fire on", "base"] == "0"
    assert table.loc["dead features ¹", "base"] == "1" and table.loc["dead features ¹", "finetuned"] == "0"
    assert table.loc["dead features, share ¹", "base"] == "25.0%" and table.loc["features", "base"] == "4"
    assert table.loc["coherence mean", "base"] == "0.400"  # (0.2 + 0.4 + 0.6) / 3: the NULL is no 0
    assert table.loc["explained variance ²", "finetuned"] == "0.800"
    footnotes = " ".join(caption.value for caption in at.caption)
    assert "¹ never fired on" in footnotes and "² the quality stage, on" in footnotes  # each names its tokens
    assert 'candidates = "decoder"' in footnotes and "the paper's rule" in footnotes  # the study's rule, in words


def test_a_database_of_another_schema_says_how_to_rebuild(tmp_path, monkeypatch):
    import duckdb

    config = write_study(tmp_path)
    (tmp_path / "demo").mkdir()
    with duckdb.connect(str(tmp_path / "demo" / "features.duckdb")) as con:
        con.execute("CREATE TABLE study (schema_version INTEGER)")
        con.execute("INSERT INTO study VALUES (0)")
    at = run_app(monkeypatch, config)
    assert not at.exception
    assert "another version" in at.warning[0].value and "--fresh" in at.warning[0].value


def test_start_links_both_perplexity_changes_and_the_words_behind_the_candidates(tmp_path, monkeypatch):
    """tiny_db: candidates 0 (heart, kidney), 1 (heart, lung, liver), 4 (blood, heart) in each arm. heart is in
    all 3; 0 and 4 have no second other match, so 2 need it; lung is in 1, which keeps 2 others."""
    from tiny_db import write_tiny_db

    config = write_study(tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "manifest.json").write_text(json.dumps(REPORT))
    write_tiny_db(tmp_path / "demo" / "features.duckdb")
    at = run_app(monkeypatch, config)
    assert not at.exception
    text = "".join(m.value for m in at.markdown)
    assert "medical perplexity by -30%** and **general perplexity by +15%" in text  # 600 -> 420, 200 -> 230
    links = [link.proto.page for link in at.get("page_link")]
    assert links == ["features", "label", "diff"]  # url paths of the pages
    words = next(d.value for d in at.dataframe if "word" in d.value.columns).set_index("word")
    assert words.loc["heart"].tolist() == [3, 2, 3, 2]  # base candidates, needing it, finetuned ...
    assert words.loc["lung"].tolist() == [1, 0, 1, 0]
    assert words.index[0] == "heart"
    assert "medical_words_exclude" not in text and "exclude = " in text  # this study has no list yet: how to add one
    titles = [m.value for m in at.markdown]
    table1 = next(i for i, t in enumerate(titles) if "Table 1" in t)
    figure1 = next(i for i, t in enumerate(titles) if "Figure 1" in t)
    assert table1 < figure1


def test_table_1_says_which_measure_scored_it_and_shows_the_perplexities(tmp_path, monkeypatch):
    """Two features per arm, written by hand: base scored in meaning (one of two passes), finetuned by GloVe."""
    import duckdb

    from tiny_db import write_tiny_db

    config = write_study(tmp_path)
    (tmp_path / "demo").mkdir()
    write_tiny_db(tmp_path / "demo" / "features.duckdb")
    with duckdb.connect(str(tmp_path / "demo" / "features.duckdb")) as con:
        con.execute("""INSERT INTO steer_features (arm, feature, coefficient, samples, mean_unsteered, mean_steered,
                       passing, measure, mean_unsteered_perplexity, mean_steered_perplexity) VALUES
                       ('base', 0, 50, 3, 0.2, 0.5, true, 'sentence', 20.0, 60.0),
                       ('base', 1, 50, 3, 0.3, 0.1, false, 'sentence', 30.0, 100.0),
                       ('finetuned', 0, 50, 3, 0.96, 0.97, true, 'glove', 25.0, 25.0)""")
    at = run_app(monkeypatch, config)
    assert not at.exception
    table1 = next(d.value for d in at.dataframe if "measure" in d.value.columns
                  and "scored by" in d.value["measure"].tolist()).set_index("measure")
    assert table1.loc["scored by"].tolist() == ["sentence", "glove"]
    assert table1.loc["share passing (paper's rule)"].tolist() == ["50.0%", "100.0%"]
    assert table1.loc["mean steered"].tolist() == ["0.3000", "0.9700"]  # (0.5 + 0.1) / 2
    assert table1.loc["perplexity steered"].tolist() == ["80.0", "25.0"]  # (60 + 100) / 2
    caption = next(c.value for c in at.caption if c.value.startswith("Similarity measure ("))
    assert "base: sentence, meaning: cosine of the all-MiniLM-L6-v2 sentence embeddings" in caption
    assert "finetuned: glove, words: cosine of the text's mean GloVe word vector" in caption


def test_perplexity_change_by_token_kind_from_the_build_report(tmp_path, monkeypatch):
    """A report as the build writes it (steps.perplexity_report): text tokens medical 80 -> 60 (-25%), general
    40 -> 36 (-10%); separators fell most, as on SmolLM2; the table has one row per kind and held-out text."""
    from precompute.demo import steps

    def split(all_, text, separator):
        return {"perplexity": {"all": all_, "text": text, "separator": separator, "first": 900.0},
                "tokens": {"all": 100, "text": 70, "separator": 10, "first": 20}}

    built = steps.perplexity_report({"base": {"general": split(50.0, 40.0, 25.0), "medical": split(100.0, 80.0, 28.0)},
                                     "finetuned": {"general": split(45.0, 36.0, 5.0),
                                                   "medical": split(70.0, 60.0, 2.0)}})
    config = write_study(tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "manifest.json").write_text(json.dumps({**REPORT, **built}))
    at = run_app(monkeypatch, config)
    assert not at.exception
    text = "".join(m.value for m in at.markdown)
    assert "medical perplexity by **-25.0%** and general by **-10.0%**" in text
    table = next(d.value for d in at.dataframe if "kind" in d.value.columns).set_index(["kind", "text"])
    assert len(table) == 8  # text, separator, first, all x medical, general
    assert table.loc[("text", "medical"), "change"] == pytest.approx(-0.25)
    assert table.loc[("separator", "general"), ["base", "fine-tuned"]].tolist() == [25.0, 5.0]
    assert table.loc[("separator", "medical"), "change"] == pytest.approx(2.0 / 28.0 - 1)
    assert table.loc[("all", "general"), "tokens"] == 100 and table.loc[("first", "medical"), "tokens"] == 20


def test_a_build_from_before_the_split_says_so(tmp_path, monkeypatch):
    config = write_study(tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "manifest.json").write_text(json.dumps(REPORT))
    at = run_app(monkeypatch, config)
    assert not at.exception
    assert any("predates perplexity by token kind" in c.value for c in at.caption)


def test_a_fine_tune_that_made_its_domain_worse_is_the_build_reports_first_word(tmp_path, monkeypatch):
    from precompute.demo.finetune import domain_warning

    config = write_study(tmp_path)
    (tmp_path / "demo").mkdir()
    worse = {"base": {"general": 200.0, "medical": 32.5}, "finetuned": {"general": 230.0, "medical": 49.0}}
    warning = domain_warning(worse)  # issue 26's case: 32.5 -> 49.0 is +50.8%, not "lowered by -50.7%"
    assert "raised held-out medical perplexity by 50.8% (32.5 -> 49.0)" in warning
    (tmp_path / "demo" / "manifest.json").write_text(json.dumps({**REPORT, "perplexity": worse,
                                                                 "medical_perplexity_change": 49.0 / 32.5 - 1,
                                                                 "finetune_warning": warning}))
    at = run_app(monkeypatch, config)
    assert not at.exception
    assert len(at.warning) == 1 and "did not learn its domain" in at.warning[0].value
    assert warning in at.warning[0].value
    assert "medical perplexity by +51%" in "".join(m.value for m in at.markdown)
    (tmp_path / "demo" / "manifest.json").write_text(json.dumps(REPORT))  # a fine-tune that helped: no warning
    assert not run_app(monkeypatch, config).warning
