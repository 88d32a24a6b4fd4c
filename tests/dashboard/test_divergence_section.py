"""The Model diff's "where the models diverge" says what it leaves out: with the boundary figures the divergence
stage writes (tiny_db's divergence plus its boundary metrics, set here), one sentence gives the boundary tokens'
share of all tokens and of the most divergent ones and their mean KL against the text's, and the counts name text
tokens; a database without those figures reads as before."""

import duckdb
import pytest

from app_pages import page, tiny_study

BOUNDARY = {"boundary_tokens": 3, "n_boundary": 6, "boundary_share": 0.2, "mean_kl_text": 0.05,
            "mean_kl_boundary": 0.425, "boundary_share_of_top": 0.91}


@pytest.fixture
def study(tmp_path, monkeypatch):
    folder = tiny_study(tmp_path, monkeypatch, pair=True)
    with duckdb.connect(str(folder / "features.duckdb")) as con:
        con.executemany("INSERT INTO metrics (arm, arm_a, arm_b, stage, metric, value) "
                        "VALUES (NULL, 'base', 'finetuned', 'divergence', ?, ?)", list(BOUNDARY.items()))
    return folder


def text(at) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_the_section_reports_boundary_tokens_apart_and_ranks_text(study):
    at = page("diff")
    assert not at.exception
    shown = text(at)
    assert ("**Boundary tokens** (those that predict a document separator or one of a document's first 3 tokens) "
            "are **20%** of tokens and **91%** of the 1% most divergent tokens of all, with mean KL **0.4250** "
            "against **0.0500** on text tokens.") in shown
    assert "the rows and features below rank text tokens only" in shown
    assert "The **1** most divergent text tokens (the top 1%) have KL ≥ **2.860**" in shown
    assert "mean KL over the row's text tokens" in shown


def test_a_stage_without_boundary_figures_reads_as_before(tmp_path, monkeypatch):
    tiny_study(tmp_path, monkeypatch, pair=True)
    at = page("diff")
    assert not at.exception
    assert "Boundary tokens" not in text(at)
    assert "The **1** most divergent tokens (the top 1%)" in text(at)
