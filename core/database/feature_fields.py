"""Every per-feature field, declared once: its name and type, the stage table it comes from, its label and format,
and whether the Features page filters and sorts by it. From these come the per-feature tables' columns
(core.database.schema), the `features` view, the Features filter's SQL (named parameters), the Features table's
columns and sort choices, the Feature page's header and the test database (tests/tiny_db.py).

A new per-feature measurement is a table here (`FEATURE_TABLES`) and its fields below; its stage writes the table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

_S, _I32, _I64, _F32, _F64, _B = pa.string(), pa.int32(), pa.int64(), pa.float32(), pa.float64(), pa.bool_()

Filter = Literal["range", "min"]  # range: a low and a high bound; min: a lower bound (a NULL value counts as 0)


@dataclass(frozen=True)
class FeatureField:
    name: str  # the features view's column
    type: pa.DataType
    table: str  # the stage table it comes from
    column: str = ""  # its name in that table, when the view renames it ("" = name)
    label: str = ""  # its title in the Features table and the Feature page's header ("" = not shown)
    format: str = ""  # printf format of its value ("%.3f", "%.2e"); "" = as it is
    help: str = ""
    filter: Filter | None = None  # whether (and how) the Features page filters by it
    sort: int = 0  # its place among the Features page's sort choices (0: not one), named by sort_label or label
    sort_label: str = ""
    header: bool = False  # one of the Feature page's header numbers
    shown_as: str = ""  # its column name in the Features table, when not `name`
    share: bool = False  # a share of tokens: the header shows it in percent (5%, or 2.0e-04 below 0.1%)

    @property
    def sort_name(self) -> str:
        return self.sort_label or self.label

    @property
    def source(self) -> str:
        return self.column or self.name

    @property
    def table_column(self) -> str:
        return self.shown_as or self.name

    def text(self, value: object) -> str:
        """The value as the header shows it: formatted, "—" when missing."""
        if value is None or (isinstance(value, float) and value != value):
            return "—"
        if self.share:
            return f"{100 * value:.2g}%" if value >= 1e-3 else f"{value:.1e}"
        return self.format % value if self.format else str(value)


# Per-feature tables (one row per arm and feature; keyed by arm, written by one arm stage each), in the view's join
# order: the first two are joined in full (a feature scored by one stage and not the other still shows).
FEATURE_TABLES = ("feature_words", "feature_activations", "feature_domains")
MATCHES = "feature_matches"  # the pair table whose fate columns the view takes from the arm's first pair

FIELDS: tuple[FeatureField, ...] = (
    # words (core.coherence): the top logit-lens tokens (W_dec @ W_U) as words, medical matches, coherence
    FeatureField("coherence", _F64, "feature_words", label="coherence", format="%.3f", filter="range", sort=1,
                 header=True, help="Paper eq. 1 over the top tokens; features with fewer than 2 valid words have none"),
    FeatureField("n_valid", _I32, "feature_words", sort=8, sort_label="valid words"),
    FeatureField("med_matches", _I32, "feature_words", label="medical matches", filter="min", sort=2, header=True),
    FeatureField("is_candidate", _B, "feature_words"),
    FeatureField("matched_words", pa.list_(_S), "feature_words", label="medical words (top tokens)"),
    FeatureField("top_text", _S, "feature_words", label="top tokens (W_dec @ W_U)", shown_as="top_tokens"),
    FeatureField("top_words", pa.list_(_S), "feature_words"),
    FeatureField("fired_med_matches", _I32, "feature_words", sort=3, sort_label="medical words fired on"),
    FeatureField("fired_matched_words", pa.list_(_S), "feature_words", label="medical words it fires on"),
    FeatureField("candidate_by", _S, "feature_words", label="candidate"),
    # activations (core.activations): on the whole corpus
    FeatureField("n_fired", _I64, "feature_activations"),
    FeatureField("frac_nonzero", _F64, "feature_activations", label="density", format="%.2e", filter="range",
                 sort=4, header=True, share=True, help="share of corpus tokens it fires on"),
    FeatureField("max_act", _F32, "feature_activations", label="max activation", format="%.3f", sort=5,
                 header=True),
    FeatureField("mean_act", _F64, "feature_activations", label="mean (non-zero)", format="%.3f", sort=6,
                 sort_label="mean activation", header=True),
    FeatureField("var_act", _F64, "feature_activations"),
    FeatureField("sum_act", _F64, "feature_activations"),
    FeatureField("sum_sq_act", _F64, "feature_activations"),
    FeatureField("med_fired", _I64, "feature_activations"),
    FeatureField("llr", _F64, "feature_activations", label="LLR medical", format="%.2f", sort=7,
                 help="log P(medical token | fires) / P(medical token)"),
    # domains (precompute/stages/domains.py): mean activation per token (zeros included) on medical and on general
    # text, the corpus files whose name says "medical" against the others, on the quality stage's even sample
    FeatureField("mean_act_medical", _F64, "feature_domains", format="%.3f"),
    FeatureField("mean_act_general", _F64, "feature_domains", format="%.3f"),
    FeatureField("medical_ratio", _F64, "feature_domains", label="medical / general", format="%.2f", filter="range",
                 sort=9, header=True, help="its mean activation on medical text over that on general text (zeros "
                                           "included); inf: it fires on medical text only"),
    # the fate in the arm's first declared pair (core.matching), from the matching stage's feature_matches
    FeatureField("match_arm", _S, MATCHES),
    FeatureField("match_feature", _I32, MATCHES),
    FeatureField("match_corr", _F32, MATCHES),
    FeatureField("diff_status", _S, MATCHES, column="status", label="fate", shown_as="fate"),
    FeatureField("diff_n_fired", _I64, MATCHES, column="n_fired"),
    FeatureField("n_partners", _I32, MATCHES),
    FeatureField("assigned_feature", _I32, MATCHES),
    FeatureField("assigned_corr", _F32, MATCHES),
)

BY_NAME = {f.name: f for f in FIELDS}
SORTS = tuple(sorted((f for f in FIELDS if f.sort), key=lambda f: f.sort))  # the Features page's, in its order
SORTABLE = ("arm", "feature") + tuple(f.name for f in SORTS)
FILTERED = tuple(f for f in FIELDS if f.filter)
SHOWN = tuple(f for f in FIELDS if f.label)
HEADER = tuple(f for f in FIELDS if f.header)


def table_columns(table: str) -> list[tuple[str, pa.DataType]]:
    """The columns of a per-feature table: arm, feature, then its fields (by their names in the table)."""
    return [("arm", _S), ("feature", _I32)] + [(f.source, f.type) for f in FIELDS if f.table == table]


_ALIAS = {table: f"t{i}" for i, table in enumerate(FEATURE_TABLES)} | {MATCHES: "m"}


def features_view() -> str:
    """The `features` view: one row per arm and feature however many pairs there are: the fate columns are those
    of the arm's first declared pair (`pairs.position`); the Feature and Model diff pages read every pair's from
    feature_matches."""
    columns = ", ".join(f"{_ALIAS[f.table]}.{f.source}" + (f" AS {f.name}" if f.column else "") for f in FIELDS)
    first, second, *rest = FEATURE_TABLES
    joins = "".join(f"\n    LEFT JOIN {table} {_ALIAS[table]} USING (arm, feature)" for table in rest)
    return f"""CREATE OR REPLACE VIEW features AS
    WITH first_pair AS (
        SELECT arm, arg_min(arm_a, position) AS arm_a, arg_min(arm_b, position) AS arm_b
        FROM (SELECT arm_a AS arm, arm_a, arm_b, position FROM pairs
              UNION ALL SELECT arm_b, arm_a, arm_b, position FROM pairs) GROUP BY arm)
    SELECT arm, feature, {columns}
    FROM {first} {_ALIAS[first]} FULL OUTER JOIN {second} {_ALIAS[second]} USING (arm, feature){joins}
    LEFT JOIN (SELECT m.* FROM {MATCHES} m JOIN first_pair USING (arm, arm_a, arm_b)) m USING (arm, feature)"""


def filter_sql(alias: str = "f") -> str:
    """The declared filters' conditions, ANDed, with named parameters ($<name>_min, $<name>_max)."""
    parts = []
    for f in FILTERED:
        column = f"{alias}.{f.name}"
        if f.filter == "min":
            parts.append(f"coalesce({column}, 0) >= coalesce(${f.name}_min, 0)")
        else:
            parts.append(f"(${f.name}_min IS NULL OR {column} >= ${f.name}_min) "
                         f"AND (${f.name}_max IS NULL OR {column} <= ${f.name}_max)")
    return "\n    AND ".join(parts)
