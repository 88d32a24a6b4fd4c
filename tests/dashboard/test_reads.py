"""The typed reads (dashboard.reads), their declared columns, their cache, the typed stage metrics, the declared
feature filters with named parameters, and each page's URL built by one function and read back by place."""

import os

import pytest

from app_pages import tiny_study
from core import database as db
from core.database import queries
from tiny_db import _per_feature, write_tiny_db


@pytest.fixture
def study(tmp_path, monkeypatch):
    return tiny_study(tmp_path, monkeypatch, pair=True, lineage=True)


def test_a_read_returns_its_declared_columns_and_one_it_lacks_fails_naming_it(study):
    from dashboard import reads
    from dashboard.reads.connection import MissingColumns, study_read

    tokens = reads.features.feature_tokens("base", 4)
    assert list(tokens.columns) == ["kind", "rank", "token_id", "token", "value"]
    assert tokens["token"].tolist() == [" blood", " heart", " and"]  # tiny_db's TOP[4], strongest first
    wrong = study_read(queries.feature_tokens, columns=("kind", "rank", "activation"))
    with pytest.raises(MissingColumns, match="activation"):
        wrong("base", 4)


def test_a_read_is_cached_until_a_new_database_is_published(study):
    from dashboard import reads

    assert reads.study.widths() == {"base": 6, "finetuned": 6}
    path = study / "features.duckdb"
    os.replace(write_tiny_db(study / "next.duckdb", arms=("base",)), path)  # a new file (inode) at the same path
    assert reads.study.widths() == {"base": 6}


def test_stage_metrics_read_typed(study):
    from dashboard import reads

    metrics = reads.pairs.pair_metrics(("base", "finetuned"))
    assert metrics.matching.same_index_share_b == 0.75 and metrics.matching.threshold == 0.8
    assert metrics.divergence.n_divergent == 1 and metrics.divergence.boundary_share is None  # not recorded
    assert metrics.similarity.mean_cosine is None  # the tiny database has no similarity stage
    assert reads.study.arm_metrics("base").quality.l0 == 12.0
    assert reads.study.typical_norm("base") is None  # no median_activation_norm recorded


def test_the_declared_filters_run_with_named_parameters(study):
    """Hand counts on tiny_db: base coherence 0.5, 0.7, 0.2, None, 0.3, 0.6 and density .01, .002, .3, 0, .05,
    .0001."""
    with db.connect_read_only(study / "features.duckdb") as con:
        def count(**bounds):
            return queries.features_count(con, queries.FeatureFilter(arms=("base",), **bounds))
        assert count() == 6
        assert count(coherence_min=0.4, coherence_max=1.0) == 3  # 0, 1, 5
        assert count(density_min=0.005, density_max=0.1) == 2  # 0, 4
        assert count(min_matches=3) == 1  # 1
        page, total = queries.features_page(con, queries.FeatureFilter(arms=("base",), coherence_min=0.25),
                                            sort="coherence", descending=False, limit=2, offset=1)
        assert total == 4 and page["feature"].tolist() == [0, 5]  # 0.3, 0.5, 0.6, 0.7: the 2nd and 3rd
    with pytest.raises(ValueError, match="no declared filter"):
        queries.FeatureFilter(ranges=(("nonsense", 0.0, 1.0),))


def test_the_test_database_gives_every_declared_column_or_fails_naming_it():
    with pytest.raises(ValueError, match="feature_activations needs .*llr"):
        _per_feature("feature_activations", "base", n_fired=[0] * 6)


def test_each_page_url_is_built_by_one_function_and_read_back():
    from dashboard import place

    assert place.feature_url("base", 12) == "/feature?arm=base&feature=12"
    assert place.compare_url("base", 1, "finetuned", 2) == \
        "/compare?left_arm=base&left_feature=1&right_arm=finetuned&right_feature=2"
    assert place.steer_url("finetuned", 5) == "/steer?arm=finetuned&feature=5"
    assert place.diff_url(("base", "finetuned")) == "/diff?pair=base-finetuned"
    assert place.inspect_url(row=3, token=5) == "inspect?row=3&token=5"
    fields = place.feature_fields("arm", "feature", {"base": 16, "finetuned": 16}, "base")
    assert place.from_url(fields, place.feature_link("base", 12).params) == {"arm": "base", "feature": 12}
    with pytest.raises(place.BadLink):
        place.from_url(fields, place.feature_link("base", 99).params)  # beyond base's 16 features
