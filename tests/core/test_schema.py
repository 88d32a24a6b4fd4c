"""The schema generated from the Arrow declarations equals the one today's databases have, and a stage's table
with a missing, extra or wrongly typed column is refused with a message naming the stage, table and column."""

import json
from pathlib import Path

import pyarrow as pa
import pytest

from core import database as db
from core.database.schema import TOP_TOKENS, SchemaMismatch, conform

SNAPSHOT = Path(__file__).parent / "schema_v6.json"  # read from the demo database that schema 6 built


def schema_7(v6: dict) -> dict:
    """Schema 7 is schema 6 with each pair table's `pair` label column replaced by arm_a, arm_b (match_pairs
    had both already, so it only loses `pair`)."""
    tables = {}
    for table, columns in v6["tables"].items():
        names = [name for name, _ in columns]
        if "pair" in names:
            at = names.index("pair")
            pair_columns = [] if "arm_a" in names else [["arm_a", "VARCHAR"], ["arm_b", "VARCHAR"]]
            columns = columns[:at] + pair_columns + columns[at + 1:]
        tables[table] = columns
    return {**v6, "schema_version": 7, "tables": tables}


def schema_8(v7: dict) -> dict:
    """Schema 8 is schema 7 with steering's measure and perplexities appended to its two tables."""
    tables = dict(v7["tables"])
    tables["steer_features"] = tables["steer_features"] + [
        ["measure", "VARCHAR"], ["mean_unsteered_perplexity", "DOUBLE"], ["mean_steered_perplexity", "DOUBLE"]]
    tables["steer_samples"] = tables["steer_samples"] + [["unsteered_perplexity", "DOUBLE"],
                                                         ["steered_perplexity", "DOUBLE"]]
    return {**v7, "schema_version": 8, "tables": tables}


def schema_9(v8: dict) -> dict:
    """Schema 9 is schema 8 and the divergence stage's three pair tables."""
    pair = [["arm_a", "VARCHAR"], ["arm_b", "VARCHAR"]]
    added = {
        "divergence_rows": [*pair, ["row_index", "INTEGER"], ["mean_kl", "DOUBLE"], ["max_kl", "DOUBLE"],
                            ["max_index", "INTEGER"]],
        "divergence_contexts": [*pair, ["rank", "INTEGER"], ["row_index", "INTEGER"], ["mean_kl", "DOUBLE"],
                                ["max_kl", "DOUBLE"], ["max_index", "INTEGER"], ["token_ids", "INTEGER[]"],
                                ["tokens", "VARCHAR[]"], ["kl", "FLOAT[]"], ["logprob_change", "FLOAT[]"]],
        "divergence_features": [*pair, ["arm", "VARCHAR"], ["feature", "INTEGER"], ["mean_divergent", "DOUBLE"],
                                ["mean_elsewhere", "DOUBLE"], ["fired_divergent", "BIGINT"],
                                ["fired_elsewhere", "BIGINT"]]}
    return {**v8, "schema_version": 9, "tables": {**v8["tables"], **added}}


def schema_10(v9: dict) -> dict:
    """Schema 10 is schema 9 with arm_a, arm_b after `arm` in stages and metrics (a pair stage's rows; stages loses
    its primary key, whose `arm` is NULL there) and the table of declared pairs."""
    tables = {}
    for table, columns in v9["tables"].items():
        if table in ("stages", "metrics"):
            columns = columns[:1] + [["arm_a", "VARCHAR"], ["arm_b", "VARCHAR"]] + columns[1:]
        tables[table] = columns
    tables["pairs"] = [["arm_a", "VARCHAR"], ["arm_b", "VARCHAR"], ["position", "INTEGER"]]
    keys = {table: key for table, key in v9["primary_keys"].items() if table != "stages"}
    return {**v9, "schema_version": 10, "tables": dict(sorted(tables.items())),
            "primary_keys": {**keys, "pairs": ["arm_a", "arm_b"]}}


def schema_11(v10: dict) -> dict:
    """Schema 11 adds the nearest-feature tables and the feature map."""
    pair, v, i, f = [["arm_a", "VARCHAR"], ["arm_b", "VARCHAR"]], "VARCHAR", "INTEGER", "FLOAT"
    new = {"feature_neighbours": [["arm", v], ["feature", i], ["rank", i], ["neighbour", i], ["cosine", f]],
           "cross_neighbours": [*pair, ["arm", v], ["feature", i], ["rank", i], ["neighbour_arm", v],
                                ["neighbour", i], ["cosine", f]],
           "feature_map": [*pair, ["arm", v], ["feature", i], ["x", f], ["y", f]]}
    return {**v10, "schema_version": 11, "tables": {**v10["tables"], **new}}


def schema_12(v11: dict) -> dict:
    """Schema 12: feature_words says which medical words a feature fires on and which rule made it a candidate."""
    words = v11["tables"]["feature_words"] + [["fired_med_matches", "INTEGER"], ["fired_matched_words", "VARCHAR[]"],
                                              ["candidate_by", "VARCHAR"]]
    return {**v11, "schema_version": 12, "tables": {**v11["tables"], "feature_words": words}}


def schema_13(v12: dict) -> dict:
    """Schema 13: feature_matches holds feature i against the other arm's feature i (correlation, decoder cosine)."""
    matches = v12["tables"]["feature_matches"] + [["same_index_corr", "FLOAT"], ["same_index_cos", "FLOAT"]]
    return {**v12, "schema_version": 13, "tables": {**v12["tables"], "feature_matches": matches}}


def schema_14(v13: dict) -> dict:
    """Schema 14 (issue 22, which differences are real): a pair names its control pair; new tables below."""
    tables = dict(v13["tables"])
    tables["pairs"] = tables["pairs"] + [["control", "VARCHAR"], ["controls", "VARCHAR"]]
    tables["steer_features"] = tables["steer_features"] + [
        ["target", "VARCHAR"], ["random_directions", "INTEGER"], ["mean_random", "DOUBLE"], ["beats_random", "BOOLEAN"],
        ["random_beaten", "INTEGER"], ["passing_controlled", "BOOLEAN"]]
    tables["steer_random_samples"] = [["arm", "VARCHAR"], ["feature", "INTEGER"], ["sample", "INTEGER"],
                                      ["direction", "INTEGER"], ["direction_seed", "BIGINT"], ["text", "VARCHAR"],
                                      ["similarity", "DOUBLE"]]
    tables["divergence_contexts"] = tables["divergence_contexts"] + [["boundary", "BOOLEAN[]"]]
    pair, v, i, d = [["arm_a", "VARCHAR"], ["arm_b", "VARCHAR"]], "VARCHAR", "INTEGER", "DOUBLE"
    tables["feature_change"] = pair + [
        ["feature", i], ["mean_a", d], ["mean_b", d], ["change", d], ["frac_a", d], ["frac_b", d], ["frac_change", d],
        ["n_fired_a", "BIGINT"], ["n_fired_b", "BIGINT"], ["row_change_sd", d], ["t", d], ["p", d], ["q", d],
        ["rank_increase", i], ["rank_decrease", i]]
    tables["feature_change_contexts"] = pair + [
        ["feature", i], ["direction", v], ["rank", i], ["row_index", i], ["row_change", "FLOAT"], ["max_pos", i],
        ["max_index", i], ["token_ids", "INTEGER[]"], ["tokens", "VARCHAR[]"], ["acts_a", "FLOAT[]"],
        ["acts_b", "FLOAT[]"]]
    tables["diff_lens"] = pair + [
        ["hook_name", v], ["layer", i], ["kind", v], ["n_positions", i], ["n_tokens", "BIGINT"], ["norm", d],
        ["norm_a", d], ["norm_b", d], ["vector", "FLOAT[]"], ["medical_top20_a", i], ["medical_top20_b", i],
        ["random_medical_top20_a", d], ["random_medical_top20_b", d]]
    tables["diff_lens_tokens"] = pair + [
        ["hook_name", v], ["kind", v], ["unembed_arm", v], ["direction", v], ["rank", i], ["token_id", i],
        ["token", v], ["logit", "FLOAT"], ["is_medical", "BOOLEAN"]]
    tables["diff_lens_features"] = pair + [
        ["hook_name", v], ["kind", v], ["sae_arm", v], ["direction", v], ["rank", i], ["feature", i],
        ["cosine", "FLOAT"]]
    return {**v13, "schema_version": 14, "tables": tables}



def test_the_generated_ddl_builds_the_tables_of_schema_6_but_for_the_pair_columns(tmp_path):
    expected = json.loads(SNAPSHOT.read_text())
    for upgrade in (schema_7, schema_8, schema_9, schema_10, schema_11, schema_12, schema_13, schema_14):
        expected = upgrade(expected)
    # A per-feature table added since (README, "Adding a measurement") needs no new version: a database without it
    # is asked for `precompute run`, which runs only its stage. Its columns are declared in core.database.feature_fields.
    expected["tables"]["feature_domains"] = [["arm", "VARCHAR"], ["feature", "INTEGER"], ["mean_act_medical", "DOUBLE"],
                                             ["mean_act_general", "DOUBLE"], ["medical_ratio", "DOUBLE"]]
    assert db.SCHEMA_VERSION == expected["schema_version"]
    assert expected["tables"]["similarity_hist"][:3] == [["arm_a", "VARCHAR"], ["arm_b", "VARCHAR"], ["kind", "VARCHAR"]]
    con, _ = db.open_build(tmp_path / "features.duckdb")
    rows = con.execute("SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c "
                       "JOIN information_schema.tables t USING (table_name) WHERE t.table_type = 'BASE TABLE' "
                       "ORDER BY c.table_name, c.ordinal_position").fetchall()
    built: dict[str, list[list[str]]] = {}
    for table, column, data_type in rows:
        built.setdefault(table, []).append([column, data_type])
    assert built == expected["tables"]
    keys = con.execute("SELECT table_name, constraint_column_names FROM duckdb_constraints() "
                       "WHERE constraint_type = 'PRIMARY KEY'").fetchall()
    assert {table: list(columns) for table, columns in keys} == expected["primary_keys"]
    con.close()


def test_a_pair_stage_replaces_only_its_pairs_rows_and_a_dropped_pair_leaves(tmp_path):
    con, _ = db.open_build(tmp_path / "features.duckdb")

    def hist(arm_a, arm_b, count):
        return pa.table({"arm_a": [arm_a], "arm_b": [arm_b], "kind": ["cosine"], "low": [0.0], "high": [0.1],
                         "count": [count]})

    db.write_stage(con, ("base", "ft1"), "similarity", "k", 0.0, {"similarity_hist": hist("base", "ft1", 5)})
    db.write_stage(con, ("base", "ft2"), "similarity", "k", 0.0, {"similarity_hist": hist("base", "ft2", 7)})
    db.write_stage(con, ("base", "ft1"), "similarity", "k2", 0.0, {"similarity_hist": hist("base", "ft1", 6)})
    rows = con.execute("SELECT arm_a, arm_b, count FROM similarity_hist ORDER BY arm_b").fetchall()
    assert rows == [("base", "ft1", 6), ("base", "ft2", 7)]
    assert db.stage_key(con, ("base", "ft1"), "similarity") == "k2"
    db.write_stage(con, "ft1", "quality", "q", 0.0, {}, {"l0": 3.0})
    db.write_stage(con, "base", "quality", "q", 0.0, {}, {"l0": 4.0})
    assert db.stage_key(con, "base", "similarity") is None  # an arm's stage is not its pair's
    db.drop_arms_except(con, ["base", "ft2"], [("base", "ft2")])
    assert con.execute("SELECT arm_b, count FROM similarity_hist").fetchall() == [("ft2", 7)]
    assert con.execute("SELECT arm, arm_a, arm_b, stage FROM stages ORDER BY stage").fetchall() == [
        ("base", None, None, "quality"), (None, "base", "ft2", "similarity")]
    assert con.execute("SELECT arm, value FROM metrics").fetchall() == [("base", 4.0)]
    con.close()


def _top_tokens(**columns):
    base = {"arm": ["base"], "feature": [3], "kind": ["top"], "rank": [0], "token_id": [7], "token": [" heart"],
            "value": [2.5]}
    base.update(columns)
    return pa.table({name: values for name, values in base.items() if values is not None})


def test_a_missing_column_is_refused_naming_stage_table_and_column():
    with pytest.raises(SchemaMismatch, match="stage projection, table top_tokens: missing column token_id"):
        conform(TOP_TOKENS, _top_tokens(token_id=None), "projection")


def test_an_extra_column_is_refused():
    with pytest.raises(SchemaMismatch, match="table top_tokens: column score is not in the schema"):
        conform(TOP_TOKENS, _top_tokens(score=[1.0]), "projection")


def test_a_column_of_another_kind_is_refused_and_widths_are_cast():
    with pytest.raises(SchemaMismatch, match="column rank is string, the schema says int32"):
        conform(TOP_TOKENS, _top_tokens(rank=["0"]), "projection")
    with pytest.raises(SchemaMismatch, match="column rank does not fit int32"):
        conform(TOP_TOKENS, _top_tokens(rank=[2**40]), "projection")
    table = conform(TOP_TOKENS, _top_tokens(value=[2.5]).select(["value", "arm", "feature", "kind", "rank",
                                                                 "token_id", "token"]), "projection")
    assert table.schema == TOP_TOKENS.schema  # declared order and widths: int64 → int32, float64 → float32
    assert table.column("value").to_pylist() == [2.5] and table.column("feature").to_pylist() == [3]
