"""Every table of the features database as an Arrow schema; the DDL is generated from these.

A stage (precompute.stage.Stage) names the tables it writes by these declarations, so the columns a stage
must produce and the columns the database holds are one list. `keyed_by` is the column whose value a stage
run replaces: "arm" for per-arm tables, "pair" for the cross-arm ones, whose rows name both arms of the pair
in `arm_a` and `arm_b` (never a joined string). `stages` and `metrics` hold both kinds of row: an arm stage's
names its `arm` (arm_a, arm_b NULL), a pair stage's its `arm_a`, `arm_b` (arm NULL).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from core.database.feature_fields import FEATURE_TABLES, features_view, table_columns

_S, _I32, _I64, _F32, _F64, _B = pa.string(), pa.int32(), pa.int64(), pa.float32(), pa.float64(), pa.bool_()
_TS = pa.timestamp("us")


@dataclass(frozen=True)
class Table:
    name: str
    schema: pa.Schema
    keyed_by: str = "arm"  # the rows one stage run owns: one arm's ("arm"), one pair's ("pair"), or a column's
    primary_key: tuple[str, ...] = ()

    @property
    def key_columns(self) -> tuple[str, ...]:
        return ("arm_a", "arm_b") if self.keyed_by == "pair" else (self.keyed_by,)

    def __post_init__(self) -> None:
        missing = [c for c in (*self.key_columns, *self.primary_key) if c not in self.schema.names]
        if missing:
            raise ValueError(f"table {self.name}: key column(s) {missing} not in its schema")

    def ddl(self) -> str:
        columns = [f'"{f.name}" {duckdb_type(f.type)}' for f in self.schema]
        if self.primary_key:
            columns.append(f"PRIMARY KEY ({', '.join(self.primary_key)})")
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(columns)})"


def duckdb_type(arrow_type: pa.DataType) -> str:
    """The DuckDB column type of an Arrow type (the few this database uses)."""
    if pa.types.is_list(arrow_type):
        return duckdb_type(arrow_type.value_type) + "[]"
    names = {_S: "VARCHAR", _I32: "INTEGER", _I64: "BIGINT", _F32: "FLOAT", _F64: "DOUBLE", _B: "BOOLEAN",
             _TS: "TIMESTAMP"}
    if arrow_type not in names:
        raise ValueError(f"no DuckDB type for Arrow {arrow_type}")
    return names[arrow_type]


def _table(name: str, columns: list[tuple[str, pa.DataType]], keyed_by: str = "arm",
           primary_key: tuple[str, ...] = ()) -> Table:
    return Table(name, pa.schema(columns), keyed_by, primary_key)


STUDY = _table("study", [("name", _S), ("description", _S), ("config_json", _S), ("config_hash", _S),
                         ("versions_json", _S), ("schema_version", _I32), ("hist_edges", pa.list_(_F64)),
                         ("interval_edges", pa.list_(_F64)), ("updated_at", _TS)], keyed_by="name")
_PAIR = [("arm_a", _S), ("arm_b", _S)]
STAGES = _table("stages", [("arm", _S), *_PAIR, ("stage", _S), ("stage_key", _S), ("seconds", _F64),
                           ("finished_at", _TS), ("note", _S), ("token_set", _S)])
TOKEN_SETS = _table("token_sets", [("token_set", _S), ("source", _S), ("position", _I32), ("n_rows", _I32),
                                   ("n_tokens", _I64)], keyed_by="token_set", primary_key=("token_set", "source"))
ARMS = _table("arms", [("arm", _S), ("position", _I32), ("model", _S), ("sae_source", _S), ("hook_name", _S),
                       ("d_in", _I32), ("d_sae", _I32), ("d_vocab", _I32), ("n_layers", _I32), ("device", _S),
                       ("model_fingerprint", _S), ("sae_fingerprint", _S), ("processing_json", _S)],
              primary_key=("arm",))
METRICS = _table("metrics", [("arm", _S), *_PAIR, ("stage", _S), ("metric", _S), ("value", _F64)])
# The study's declared pairs in config order: the features view shows each arm's fate in its first pair.
# `control`: the arm that differs from arm_a as arm_b does but for the fine-tune (NULL: none declared); the pair
# (arm_a, control) follows as a row of its own whose `controls` names the arm_b it is the control for (issue 22).
PAIRS = _table("pairs", [*_PAIR, ("position", _I32), ("control", _S), ("controls", _S)], keyed_by="position",
               primary_key=("arm_a", "arm_b"))

TOP_TOKENS = _table("top_tokens", [("arm", _S), ("feature", _I32), ("kind", _S), ("rank", _I32),
                                   ("token_id", _I32), ("token", _S), ("value", _F32)])
# The per-feature tables' columns are declared field by field in core.database.feature_fields (the features view,
# the Features page's filters, columns and sorts come from the same declarations).
PER_FEATURE = {name: _table(name, table_columns(name)) for name in FEATURE_TABLES}
FEATURE_WORDS, FEATURE_ACTIVATIONS = PER_FEATURE["feature_words"], PER_FEATURE["feature_activations"]
HISTOGRAMS = _table("histograms", [("arm", _S), ("feature", _I32), ("counts", pa.list_(_I64))])
CONTEXTS = _table("contexts", [
    ("arm", _S), ("feature", _I32), ("kind", _S), ("rank", _I32), ("interval", _I32), ("interval_low", _F64),
    ("interval_high", _F64), ("max_act", _F32), ("row_index", _I32), ("max_pos", _I32), ("max_index", _I32),
    ("token_ids", pa.list_(_I32)), ("tokens", pa.list_(_S)), ("acts", pa.list_(_F32))])
UNIGRAM = _table("unigram", [("arm", _S), ("token_id", _I32), ("token", _S), ("count", _I64)])
FIRED_TOKENS = _table("fired_tokens", [("arm", _S), ("feature", _I32), ("rank", _I32), ("token_id", _I32),
                                       ("token", _S), ("count", _I64), ("sum_act", _F64)])

SIMILARITY_HIST = _table("similarity_hist", [*_PAIR, ("kind", _S), ("low", _F64), ("high", _F64),
                                             ("count", _I64)], keyed_by="pair")
SIMILARITY_BY_POSITION = _table("similarity_by_position", [*_PAIR, ("position", _I32),
                                                           ("mean_cosine", _F64), ("mean_distance", _F64)],
                                keyed_by="pair")
TRANSFER_METRICS = _table("transfer_metrics", [*_PAIR, ("sae_arm", _S), ("model_arm", _S), ("metric", _S),
                                               ("value", _F64)], keyed_by="pair")
TRANSFER_DENSITIES = _table("transfer_densities", [*_PAIR, ("sae_arm", _S), ("model_arm", _S),
                                                   ("feature", _I32), ("frac_nonzero", _F64)], keyed_by="pair")
FEATURE_MATCHES = _table("feature_matches", [
    *_PAIR, ("arm", _S), ("feature", _I32), ("match_arm", _S), ("match_feature", _I32), ("match_corr", _F32),
    ("status", _S), ("decoder_cos", _F32), ("logit_sim", _F32), ("n_fired", _I64), ("n_partners", _I32),
    ("assigned_feature", _I32), ("assigned_corr", _F32), ("same_index_corr", _F32), ("same_index_cos", _F32)],
    keyed_by="pair")
MATCH_PAIRS = _table("match_pairs", [("arm_a", _S), ("feature_a", _I32), ("arm_b", _S), ("feature_b", _I32),
                                     ("corr", _F32), ("assigned", _B)], keyed_by="pair")
# divergence: every row of the pair's token set (mean / max KL(a ‖ b) over its text positions and the max's BOS-less
# token index), the top rows by that mean with every token, and each arm's features on the most divergent text
# tokens against the other text tokens; boundary positions (core.boundaries) are counted apart, in the metrics.
DIVERGENCE_ROWS = _table("divergence_rows", [*_PAIR, ("row_index", _I32), ("mean_kl", _F64), ("max_kl", _F64),
                                             ("max_index", _I32)], keyed_by="pair")
DIVERGENCE_CONTEXTS = _table("divergence_contexts", [
    *_PAIR, ("rank", _I32), ("row_index", _I32), ("mean_kl", _F64), ("max_kl", _F64), ("max_index", _I32),
    ("token_ids", pa.list_(_I32)), ("tokens", pa.list_(_S)), ("kl", pa.list_(_F32)),
    ("logprob_change", pa.list_(_F32)),
    ("boundary", pa.list_(_B))], keyed_by="pair")  # the token predicts a separator or a document's first tokens
DIVERGENCE_FEATURES = _table("divergence_features", [
    *_PAIR, ("arm", _S), ("feature", _I32), ("mean_divergent", _F64), ("mean_elsewhere", _F64),
    ("fired_divergent", _I64), ("fired_elsewhere", _I64)], keyed_by="pair")
# change (issue 22): arm a's SAE on both models' activations at its hook, per feature: mean activation (zeros
# included) and firing rate in each model, their change (b - a), the paired t-test over rows (core.activation_change)
# with Benjamini-Hochberg q over live features, and the rank among increased / decreased features (0 first, NULL
# when it moved the other way); the rows where it changed most for the 50 most increased and decreased features.
FEATURE_CHANGE = _table("feature_change", [
    *_PAIR, ("feature", _I32), ("mean_a", _F64), ("mean_b", _F64), ("change", _F64), ("frac_a", _F64),
    ("frac_b", _F64), ("frac_change", _F64), ("n_fired_a", _I64), ("n_fired_b", _I64), ("row_change_sd", _F64),
    ("t", _F64), ("p", _F64), ("q", _F64), ("rank_increase", _I32), ("rank_decrease", _I32)], keyed_by="pair")
FEATURE_CHANGE_CONTEXTS = _table("feature_change_contexts", [
    *_PAIR, ("feature", _I32), ("direction", _S), ("rank", _I32), ("row_index", _I32), ("row_change", _F32),
    ("max_pos", _I32), ("max_index", _I32), ("token_ids", pa.list_(_I32)), ("tokens", pa.list_(_S)),
    ("acts_a", pa.list_(_F32)), ("acts_b", pa.list_(_F32))], keyed_by="pair")
# The activation difference lens (core.diff_lens): per site (hook_name) and kind ("first": the first k positions
# after BOS, "all"), the mean of (b - a), its norm, each model's mean activation norm there, and the medical words
# among its top 20 tokens through model a's (_a) and model b's (_b) unembedding against 5 random directions' mean.
DIFF_LENS = _table("diff_lens", [
    *_PAIR, ("hook_name", _S), ("layer", _I32), ("kind", _S), ("n_positions", _I32), ("n_tokens", _I64),
    ("norm", _F64), ("norm_a", _F64), ("norm_b", _F64), ("vector", pa.list_(_F32)), ("medical_top20_a", _I32),
    ("medical_top20_b", _I32), ("random_medical_top20_a", _F64), ("random_medical_top20_b", _F64)], keyed_by="pair")
DIFF_LENS_TOKENS = _table("diff_lens_tokens", [
    *_PAIR, ("hook_name", _S), ("kind", _S), ("unembed_arm", _S), ("direction", _S), ("rank", _I32),
    ("token_id", _I32), ("token", _S), ("logit", _F32), ("is_medical", _B)], keyed_by="pair")
DIFF_LENS_FEATURES = _table("diff_lens_features", [
    *_PAIR, ("hook_name", _S), ("kind", _S), ("sae_arm", _S), ("direction", _S), ("rank", _I32), ("feature", _I32),
    ("cosine", _F32)], keyed_by="pair")
# Nearest features by decoder cosine (rank 0 = nearest): in the feature's own SAE, and in the other arm's.
FEATURE_NEIGHBOURS = _table("feature_neighbours", [("arm", _S), ("feature", _I32), ("rank", _I32),
                                                   ("neighbour", _I32), ("cosine", _F32)])
CROSS_NEIGHBOURS = _table("cross_neighbours", [*_PAIR, ("arm", _S), ("feature", _I32), ("rank", _I32),
                                               ("neighbour_arm", _S), ("neighbour", _I32), ("cosine", _F32)],
                          keyed_by="pair")
# One 2-D layout (UMAP) of both arms' decoder directions together: a point per (arm, feature).
FEATURE_MAP = _table("feature_map", [*_PAIR, ("arm", _S), ("feature", _I32), ("x", _F32), ("y", _F32)],
                     keyed_by="pair")

STEER_FEATURES = _table("steer_features", [("arm", _S), ("feature", _I32), ("coefficient", _F64), ("samples", _I32),
                                           ("mean_unsteered", _F64), ("mean_steered", _F64), ("passing", _B),
                                           # how the texts were scored (core.steer_scores.MEASURES) and how fluent
                                           # they were: mean perplexity under the unsteered model
                                           ("measure", _S), ("mean_unsteered_perplexity", _F64),
                                           ("mean_steered_perplexity", _F64),
                                           # issue 22: what the texts were scored against (decoder | fired, by the
                                           # study's candidate rule) and the random control (core.steer_controls):
                                           # NULL beats_random / passing_controlled where none was run
                                           ("target", _S), ("random_directions", _I32), ("mean_random", _F64),
                                           ("beats_random", _B), ("random_beaten", _I32),
                                           ("passing_controlled", _B)])
STEER_SAMPLES = _table("steer_samples", [
    ("arm", _S), ("feature", _I32), ("sample", _I32), ("seed", _I32), ("unsteered_text", _S), ("steered_text", _S),
    ("unsteered_similarity", _F64), ("steered_similarity", _F64), ("unsteered_perplexity", _F64),
    ("steered_perplexity", _F64)])
# Each random direction's text for each seed of steer_samples (same prompt, seed and settings), scored alike.
STEER_RANDOM_SAMPLES = _table("steer_random_samples", [
    ("arm", _S), ("feature", _I32), ("sample", _I32), ("direction", _I32), ("direction_seed", _I64), ("text", _S),
    ("similarity", _F64)])

TABLES: dict[str, Table] = {t.name: t for t in (
    STUDY, STAGES, TOKEN_SETS, ARMS, PAIRS, TOP_TOKENS, *PER_FEATURE.values(), HISTOGRAMS, CONTEXTS, UNIGRAM,
    FIRED_TOKENS, METRICS, SIMILARITY_HIST, SIMILARITY_BY_POSITION, TRANSFER_METRICS, TRANSFER_DENSITIES,
    FEATURE_MATCHES, MATCH_PAIRS, DIVERGENCE_ROWS, DIVERGENCE_CONTEXTS, DIVERGENCE_FEATURES, FEATURE_CHANGE,
    FEATURE_CHANGE_CONTEXTS, DIFF_LENS, DIFF_LENS_TOKENS, DIFF_LENS_FEATURES, STEER_FEATURES,
    STEER_SAMPLES, STEER_RANDOM_SAMPLES, FEATURE_NEIGHBOURS, CROSS_NEIGHBOURS, FEATURE_MAP)}
# Rows that name an arm (removed when the arm leaves the study) and rows that name a pair of arms (removed when
# the pair does; `stages` and `metrics` are in both: their pair rows have arm NULL, their arm rows arm_a NULL).
ARM_TABLES = tuple(name for name, t in TABLES.items() if t.keyed_by == "arm")
PAIR_TABLES = tuple(name for name, t in TABLES.items() if t.keyed_by == "pair")
PAIR_ROW_TABLES = tuple(name for name, t in TABLES.items() if "arm_a" in t.schema.names and name != "pairs")

FEATURES_VIEW = features_view()

SCHEMA = [t.ddl() for t in TABLES.values()] + [FEATURES_VIEW]


class SchemaMismatch(ValueError):
    """A stage produced a table whose columns are not its declared schema."""


def conform(table: Table, data: pa.Table, stage: str) -> pa.Table:
    """`data` in `table`'s column order and types; a missing or extra column, or a column of another kind
    (text for a number, a float for an integer), is an error naming the stage, table and column. Widths may
    differ (int64 → int32, float64 → float32: the cast DuckDB's insert would do) but must fit."""
    where = f"stage {stage}, table {table.name}"
    missing = [name for name in table.schema.names if name not in data.column_names]
    extra = [name for name in data.column_names if name not in table.schema.names]
    if missing:
        raise SchemaMismatch(f"{where}: missing column {', '.join(missing)}")
    if extra:
        raise SchemaMismatch(f"{where}: column {', '.join(extra)} is not in the schema")
    columns = []
    for field in table.schema:
        column = data.column(field.name)
        if not _same_kind(column.type, field.type):
            raise SchemaMismatch(f"{where}: column {field.name} is {column.type}, the schema says {field.type}")
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise SchemaMismatch(f"{where}: column {field.name} does not fit {field.type}: {err}") from err
    return pa.table(columns, schema=table.schema)


def _same_kind(actual: pa.DataType, declared: pa.DataType) -> bool:
    if actual == declared or pa.types.is_null(actual):
        return True
    if pa.types.is_list(actual) or pa.types.is_large_list(actual):
        return pa.types.is_list(declared) and _same_kind(actual.value_type, declared.value_type)
    for kind in (pa.types.is_integer, pa.types.is_floating, pa.types.is_string, pa.types.is_boolean):
        if kind(declared):
            return kind(actual) or (pa.types.is_large_string(actual) and kind is pa.types.is_string)
    return False
