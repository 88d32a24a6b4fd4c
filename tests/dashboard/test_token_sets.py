"""Same measurement, same number: the Overview and the Model diff show an SAE's L0, CE loss recovered and dead
share from the database, each naming the tokens it was measured on. On the same tokens they agree exactly;
on different tokens each page names a different token set (a real two-arm study, built in seconds)."""

from pathlib import Path

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from pair_study import CONTEXT, CORPUS_ROWS, build_pair_study

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
WHOLE = f"the whole corpus ({CORPUS_ROWS * (CONTEXT - 1):,} tokens)"
HALF = f"an even sample of the corpus ({CORPUS_ROWS // 2 * (CONTEXT - 1):,} tokens)"


def query(config, sql: str):
    with duckdb.connect(config.features_db, read_only=True) as con:
        return con.execute(sql).df()


def pages(config, monkeypatch) -> tuple[AppTest, AppTest]:
    monkeypatch.setenv("SAE_DIFF_CONFIG", str(Path(config.features_db).parent / "study.toml"))
    overview = AppTest.from_file(APP, default_timeout=60).switch_page("views/overview.py").run()
    diff = AppTest.from_file(APP, default_timeout=60).switch_page("views/diff.py").run()
    assert not overview.exception and not diff.exception
    return overview, diff


def text(at: AppTest) -> str:
    return "\n".join(m.value for m in list(at.markdown) + list(at.caption))


def own_rows(diff: AppTest):
    transfer = next(d.value for d in diff.dataframe if "sae_arm" in d.value.columns)
    return transfer[transfer.sae_arm == transfer.model_arm].set_index("sae_arm")


@pytest.fixture(scope="module")
def same_tokens(tmp_path_factory):
    return build_pair_study(tmp_path_factory.mktemp("same"), diff_tokens=0)  # the diff reads the whole corpus


@pytest.fixture(scope="module")
def half_tokens(tmp_path_factory):
    return build_pair_study(tmp_path_factory.mktemp("half"), diff_tokens=CONTEXT * CORPUS_ROWS // 2)


def overview_table(overview: AppTest):
    """The Overview's per-arm table as shown: one row per measure, one column per arm, formatted text."""
    return next(d.value for d in overview.dataframe if "measure" in d.value.columns
                and (d.value["measure"] == "L0 ²").any()).set_index("measure")


def test_on_the_same_tokens_the_overview_and_the_model_diff_agree(same_tokens, monkeypatch):
    overview, diff = pages(same_tokens, monkeypatch)
    shown = overview_table(overview)
    own = own_rows(diff)
    stored = query(same_tokens, "SELECT arm, metric, value FROM metrics WHERE stage = 'quality'")
    for arm in ("base", "finetuned"):
        quality = dict(zip(*[stored[stored.arm == arm][c] for c in ("metric", "value")]))
        assert quality["l0"] == pytest.approx(own.loc[arm, "l0"], rel=1e-9)  # one measurement, one number
        assert quality["ce_loss_recovered"] == pytest.approx(own.loc[arm, "ce_loss_recovered"], rel=1e-9)
        assert shown.loc["L0 ²", arm] == f"{own.loc[arm, 'l0']:.1f}"  # and shown the same on both pages
        assert shown.loc["CE loss recovered ²", arm] == f"{own.loc[arm, 'ce_loss_recovered']:.3f}"
        assert shown.loc["tokens ²", arm] == f"{CORPUS_ROWS * (CONTEXT - 1):,}" and \
            own.loc[arm, "n_tokens"] == CORPUS_ROWS * (CONTEXT - 1)
        assert own.loc[arm, "dead_fraction"] == 4 / 24 and shown.loc["dead features, share ¹", arm] == "16.7%"  # the 4 planted dead
    assert f"the quality stage, on {WHOLE}" in text(overview) and f"never fired on {WHOLE}" in text(overview)
    assert f"the same rows): {WHOLE}: general 12 rows (50%), medical 12 rows (50%)" in text(diff)
    assert f"the other one, on {WHOLE}" in text(diff)


def test_on_different_tokens_each_page_names_its_own(half_tokens, monkeypatch):
    overview, diff = pages(half_tokens, monkeypatch)
    assert f"the quality stage, on {WHOLE}" in text(overview)
    assert f"the other one, on {HALF}" in text(diff) and f"on {WHOLE}; dead features" in text(diff)
    assert f"the same rows): {HALF}: general 6 rows (50%), medical 6 rows (50%)" in text(diff)
    assert own_rows(diff).loc["base", "n_tokens"] == CORPUS_ROWS // 2 * (CONTEXT - 1)
