"""The Model diff page and the diff's traces elsewhere, on a hand-written database (tiny_db, pair=True): dead and
rare features have no fate, shares count only features with one, many-to-one partners show, the matching exports."""

import io

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from app_pages import page, tiny_study


@pytest.fixture
def study(tmp_path, monkeypatch):
    return tiny_study(tmp_path, monkeypatch, pair=True)


def table(at: AppTest, column: str) -> pd.DataFrame:
    """The first dataframe on the page with this column (diff_count_table: "dead", many-to-one: "n_partners",
    the fate table: "open")."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def text(at: AppTest) -> str:
    return "\n".join(m.value for m in list(at.markdown) + list(at.caption))


def test_the_page_states_its_token_set_and_its_domain_mix(study):
    at = page("diff")
    assert not at.exception
    assert ("**Tokens compared** (both models, the same rows): an even sample of the corpus (60 tokens): "
            "general 2 rows (50%), medical 2 rows (50%).") in text(at)
    assert "fewer than **10** times (`diff.min_firings`)" in text(at)


def test_dead_and_rare_features_have_no_share_and_no_place_in_the_fate_tables(study):
    at = page("diff")
    counts = table(at, "dead").set_index("arm")
    assert counts.loc["base"].to_dict() == {"dead": 1, "disappear": 2, "emerge": 0, "persist": 2, "rare": 1}
    figure = at.get("plotly_chart")[0].proto.spec
    assert '"dead"' not in figure and '"rare"' not in figure
    from core import database as db

    with db.connect_read_only(study / "features.duckdb") as con:
        shares = db.diff_queries.diff_counts(con, ("base", "finetuned")).set_index(["arm", "status"])["share"]
    assert shares["base", "persist"] == shares["base", "disappear"] == 0.5  # of 4 with a fate, not of 6
    assert shares["finetuned", "persist"] == pytest.approx(0.8) and pd.isna(shares["base", "dead"])
    emerged = table(at, "open")
    assert emerged[["arm", "feature"]].values.tolist() == [["finetuned", 5]]  # not finetuned 4: dead
    at.radio(key="diff_status_choice").set_value("disappear").run()
    disappeared = table(at, "open")
    assert disappeared["feature"].tolist() == [2, 5] and set(disappeared["arm"]) == {"base"}  # not dead 1, rare 3


def test_many_to_one_partners_and_the_one_to_one_assignment_show(study):
    at = page("diff")
    assert "- Best-match view: **4** persisting finetuned features match **2** distinct base features." in text(at)
    assert "**2** pairs, total correlation 1.9" in text(at)
    many = table(at, "n_partners")
    assert many[["arm", "feature", "n_partners", "assigned_feature"]].values.tolist() == [["base", 0, 3, 0]]
    at.radio(key="diff_status_choice").set_value("persist").run()
    persist = table(at, "open").set_index(["arm", "feature"])
    assert persist.loc[("base", 0), "partners"] == "0 (0.950), 2 (0.850), 3 (0.820)"
    assert persist.loc[("finetuned", 2), "n_partners"] == 1 and pd.isna(persist.loc[("finetuned", 2), "assigned_feature"])


def test_the_matching_exports_as_csv_and_parquet(study):
    from dashboard import reads

    csv = pd.read_csv(io.BytesIO(reads.diff.matching_export_file(("base", "finetuned"), "csv")))
    parquet = pd.read_parquet(io.BytesIO(reads.diff.matching_export_file(("base", "finetuned"), "parquet")))
    assert len(csv) == len(parquet) == 12
    row = parquet[(parquet.arm == "base") & (parquet.feature == 0)].iloc[0]
    assert list(row.partners) == [0, 2, 3] and row.n_partners == 3 and row.one_to_one_match == 0
    assert csv[(csv.arm == "base") & (csv.feature == 0)].partners.iloc[0] == "0;2;3"
    assert csv[(csv.arm == "base") & (csv.feature == 1)].status.iloc[0] == "dead"


def test_the_feature_page_says_dead_or_too_rare_not_emerged(study):
    dead = page("feature", arm="finetuned", feature="4")
    assert not dead.exception
    assert "**dead on the diff's tokens**" in text(dead) and "emerged" not in text(dead)
    density = next(m for m in dead.metric if m.label == "density")
    assert density.proto.help == "on the whole corpus (1,500 tokens)"  # the density is not the diff's
    rare = page("feature", arm="base", feature="3")
    assert "**too rare on the diff's tokens** to match: it fired 3 times there, fewer than 10" in text(rare)
    assert "disappeared" not in text(rare)


def test_the_feature_page_lists_every_partner_and_the_one_to_one_one(study):
    at = page("feature", arm="base", feature="0")
    assert ("3 partner(s) in finetuned at or above the threshold: 0 (0.950), 2 (0.850), 3 (0.820); "
            "one-to-one partner: feature 0") in text(at)
    lonely = page("feature", arm="finetuned", feature="3")
    assert "no one-to-one partner" in text(lonely)


def test_the_label_queue_skips_features_dead_or_rare_on_the_diffs_tokens(study):
    at = page("label")
    assert not at.exception
    assert at.subheader[0].value == "base · feature 0"  # base 1 has most matches but is dead on the diff's tokens
    assert any(m.value == "0 / 2 candidates" for m in at.metric)
    assert "model diff's tokens to have a fate): base 1, finetuned 1." in text(at)


def test_the_most_divergent_rows_open_inspect_and_enriched_features_their_page(study):
    """tiny_db's divergence: row 3 (mean KL 0.2, peak at token 5) before row 0; base 2 and finetuned 5 live there."""
    at = page("diff")
    assert not at.exception
    strips = [m.value for m in at.markdown if "Inspect ↗" in m.value]
    assert [s.split("#")[1].split(" · ")[1] for s in strips] == ["row 3 (corpus)", "row 0 (corpus)"]
    assert 'href="inspect?row=3&amp;token=5&amp;base=base&amp;finetuned=finetuned"' in strips[0]
    underlined = [part for part in strips[0].split("<span") if "text-decoration: underline" in part]
    assert len(underlined) == 1 and "&nbsp;t5<" in underlined[0]  # the peak token, shaded fully
    assert "rgba(76, 120, 168, 1.00)" in underlined[0]
    assert "The **1** most divergent tokens (the top 1%) have KL ≥ **2.860**" in text(at)
    enriched_tables = [d.value for d in at.dataframe if "mean_divergent" in d.value.columns]
    for (arm, feature), enriched in zip((("base", 2), ("finetuned", 5)), enriched_tables, strict=True):
        assert enriched["feature"].tolist() == [feature]  # the others never fired there
        assert enriched["open"].iloc[0] == f"/feature?arm={arm}&feature={feature}"
    sources = table(at, "of the top 2 rows")
    assert sources[["source", "rows", "of the top 2 rows"]].values.tolist() == [["corpus", 2, 2]]



def test_without_a_shared_index_the_page_reads_fates_only(study):
    """SAEs trained apart (or a database from before the same-index measure): no section, no column, no sort."""
    at = page("diff")
    assert not at.exception and "Feature i on both sides" not in [h.value for h in at.subheader]
    assert "same_index_corr" not in table(at, "open").columns
    assert "same_index_corr" not in at.selectbox(key="diff_sort").options


def test_a_fine_tuned_sae_trained_on_from_the_base_is_read_feature_by_feature(tmp_path, monkeypatch):
    """tiny_db's lineage: 75% of best matches at their own index; feature i against itself where both fired:
    0 → 0.95, 2 → 0.35, 5 → 0.4 (5 emerged, 0 and 2 persist)."""
    tiny_study(tmp_path, monkeypatch, pair=True, lineage=True)
    at = page("diff")
    assert not at.exception and "Feature i on both sides" in [h.value for h in at.subheader]
    assert "**75%** of finetuned's features with a best match find it at **their own index** in base" in text(at)
    assert "about once in 6" in text(at)
    stats = next(d.value for d in at.dataframe if "median_corr" in d.value.columns).set_index("status")
    assert stats.loc["persist", "features"] == 2 and stats.loc["persist", "median_corr"] == pytest.approx(0.65)
    assert stats.loc["emerge", "features"] == 1 and stats.loc["emerge", "median_corr"] == pytest.approx(0.4)
    changed = table(at, "fired_a")
    assert changed["feature"].tolist() == [2, 5, 0]
    assert changed["fired_a"][0] == changed["fired_b"][0] == " the | <0x8F>"  # feature 2's tokens in both arms
    assert changed["same_index_corr"].tolist() == pytest.approx([0.35, 0.4, 0.95])
    assert changed["compare"][0] == "/compare?left_arm=base&left_feature=2&right_arm=finetuned&right_feature=2"
    figure = at.get("plotly_chart")[2].proto.spec
    assert "same index" in figure
    emerged = table(at, "open")  # the fate table opens on emerged features
    assert emerged["same_index_corr"].tolist() == pytest.approx([0.4])
    assert emerged["own_index"][0] == "/compare?left_arm=finetuned&left_feature=5&right_arm=base&right_feature=5"
    at.radio(key="diff_status_choice").set_value("persist").run()
    at.selectbox(key="diff_sort").set_value("same_index_corr").run()
    persisting = table(at, "open")
    finetuned = persisting[persisting["arm"] == "finetuned"]
    assert finetuned["feature"].tolist()[:2] == [2, 0]  # least of itself first; 1 and 3 have no own index (NULLs last)


def test_the_feature_page_links_a_feature_to_its_own_index_in_the_other_arm(tmp_path, monkeypatch):
    """finetuned 2 persists as base 0's partner, but it is base 2 gone on: the link names its same-index
    correlation 0.35 and decoder cosine 0.8. finetuned 0 and 5 have their own index as best match, which the fate
    line already links or names: no second line."""
    tiny_study(tmp_path, monkeypatch, pair=True, lineage=True)

    def links(feature):
        at = page("feature", arm="finetuned", feature=str(feature))
        assert not at.exception
        return [link.proto.label for link in at.get("page_link") if link.proto.label.startswith("same feature index")]

    assert links(2) == ["same feature index in base (its SAE went on from the other): correlation 0.350, decoder "
                        "cosine 0.800 — compare"]
    assert links(0) == links(5) == []
