"""Same measurement, same number: the Overview and the Model diff show an SAE's L0, CE loss recovered and dead
share from the database, each naming the tokens it was measured on. On the same tokens they agree exactly;
on different tokens each page names a different token set (a real two-arm study, built in seconds)."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pair_study import CONTEXT, CORPUS_ROWS, build_pair_study

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
WHOLE = f"the whole corpus ({CORPUS_ROWS * (CONTEXT - 1):,} tokens)"
HALF = f"an even sample of the corpus ({CORPUS_ROWS // 2 * (CONTEXT - 1):,} tokens)"


def pages(config, monkeypatch) -> tuple[AppTest, AppTest]:
    monkeypatch.setenv("SAE_DIFF_CONFIG", str(Path(config.features_db).parent / "study.toml"))
    overview = AppTest.from_file(APP, default_timeout=60).run()
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


def test_on_the_same_tokens_the_overview_and_the_model_diff_agree(same_tokens, monkeypatch):
    overview, diff = pages(same_tokens, monkeypatch)
    arms = next(d.value for d in overview.dataframe if "l0" in d.value.columns).set_index("arm")
    own = own_rows(diff)
    for arm in ("base", "finetuned"):
        assert f"{arms.loc[arm, 'l0']:.1f}" == f"{own.loc[arm, 'l0']:.1f}"
        assert arms.loc[arm, "l0"] == pytest.approx(own.loc[arm, "l0"], rel=1e-9)
        assert arms.loc[arm, "ce_loss_recovered"] == pytest.approx(own.loc[arm, "ce_loss_recovered"], rel=1e-9)
        assert arms.loc[arm, "n_tokens"] == own.loc[arm, "n_tokens"] == CORPUS_ROWS * (CONTEXT - 1)
        assert arms.loc[arm, "dead_fraction"] == own.loc[arm, "dead_fraction"] == 4 / 24  # the 4 planted dead
    assert f"the quality stage, on {WHOLE}" in text(overview) and f"never fired on {WHOLE}" in text(overview)
    assert f"the same rows): {WHOLE}: general 12 rows (50%), medical 12 rows (50%)" in text(diff)
    assert f"the other one, on {WHOLE}" in text(diff)


def test_on_different_tokens_each_page_names_its_own(half_tokens, monkeypatch):
    overview, diff = pages(half_tokens, monkeypatch)
    assert f"the quality stage, on {WHOLE}" in text(overview)
    assert f"the other one, on {HALF}" in text(diff) and f"on {WHOLE}; dead features" in text(diff)
    assert f"the same rows): {HALF}: general 6 rows (50%), medical 6 rows (50%)" in text(diff)
    assert own_rows(diff).loc["base", "n_tokens"] == CORPUS_ROWS // 2 * (CONTEXT - 1)
