"""The cross-arm stages end to end: one model with an SAE and the same SAE with its features permuted.

Arm B is arm A's model with A's SAE, features shuffled by a known permutation: matching must recover the
permutation exactly, the activations of a model with itself have cosine 1 and distance 0, and each SAE
transfers onto the other arm's model with exactly its own numbers."""

import numpy as np
import pytest
import torch

from pair_study import CONTEXT, D_SAE, PERMUTATION, build_pair_study


def query(config, sql, params=()):
    import duckdb

    with duckdb.connect(config.features_db, read_only=True) as con:
        return con.execute(sql, list(params)).df()


@pytest.fixture(scope="module")
def pair_study(tmp_path_factory):
    return build_pair_study(tmp_path_factory.mktemp("pair"), diff_tokens=CONTEXT * 12)  # half the corpus


def test_matching_recovers_a_known_permutation(pair_study):
    matches = query(pair_study, "SELECT arm, feature, match_feature, match_corr, status, decoder_cos, n_partners, "
                                "assigned_feature FROM feature_matches ORDER BY arm, feature")
    fired = query(pair_study, "SELECT feature FROM features WHERE arm = 'base' AND n_fired > 0").feature.tolist()
    assert len(fired) >= D_SAE // 2
    base = matches[matches.arm == "base"].set_index("feature")
    inverse = np.argsort(PERMUTATION)  # A's feature i is B's feature inverse[i]
    for i in fired:
        assert base.loc[i, "match_feature"] == inverse[i] and base.loc[i, "status"] == "persist"
        assert base.loc[i, "match_corr"] == pytest.approx(1.0, abs=1e-5)
        assert base.loc[i, "decoder_cos"] == pytest.approx(1.0, abs=1e-5)
        assert base.loc[i, "n_partners"] == 1 and base.loc[i, "assigned_feature"] == inverse[i]  # one-to-one too
    pairs = query(pair_study, "SELECT feature_a, feature_b, assigned FROM match_pairs ORDER BY feature_a")
    assert pairs.feature_a.tolist() == fired and pairs.feature_b.tolist() == [inverse[i] for i in fired]
    assert pairs.assigned.all()
    never = sorted(set(range(D_SAE)) - set(fired))
    assert never and all(base.loc[i, "status"] == "dead" for i in never)  # never fired: dead, not disappeared
    view = query(pair_study, "SELECT diff_status, match_feature FROM features WHERE arm = 'finetuned' AND feature = ?",
                 [int(inverse[fired[0]])])
    assert view.diff_status[0] == "persist" and view.match_feature[0] == fired[0]


def test_feature_i_against_the_other_arms_feature_i(pair_study):
    """B is A permuted: only A's fixed points (8 and 9) keep their index, so the same-index share is theirs
    among the fired features, their same-index correlation is 1, and every decoder cosine is cos(A_i, A_perm[i])."""
    from sae_lens import SAE

    matches = query(pair_study, "SELECT feature, status, same_index_corr, same_index_cos FROM feature_matches "
                                "WHERE arm = 'base' ORDER BY feature").set_index("feature")
    fired = matches.index[matches.status == "persist"].tolist()
    fixed = [i for i in fired if PERMUTATION[i] == i]
    assert fixed == [8, 9]
    share = query(pair_study, "SELECT value FROM metrics WHERE stage = 'matching' AND metric = 'same_index_share_a'")
    assert share.value[0] == pytest.approx(len(fixed) / len(fired))
    for i in fixed:
        assert matches.loc[i, "same_index_corr"] == pytest.approx(1.0, abs=1e-5)
    dead = matches.index[matches.status == "dead"].tolist()
    assert matches.loc[dead, "same_index_corr"].isna().all()  # never fired: no correlation with anything
    W_dec = SAE.load_from_disk(pair_study.arms[0].sae_path).W_dec.detach().double()
    expected = torch.nn.functional.cosine_similarity(W_dec, W_dec[PERMUTATION], dim=1).numpy()
    np.testing.assert_allclose(matches.same_index_cos.to_numpy(), expected, atol=1e-5)


def test_a_model_with_itself_has_cosine_one_and_distance_zero(pair_study):
    metrics = query(pair_study, "SELECT metric, value FROM metrics "
                                "WHERE arm_a = 'base' AND arm_b = 'finetuned' AND stage = 'similarity'")
    values = dict(zip(metrics.metric, metrics.value))
    assert values["mean_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert values["mean_distance"] == pytest.approx(0.0, abs=1e-4)
    assert values["n_tokens"] == 12 * 31


def test_the_diff_reads_an_even_sample_of_every_file_and_names_it(pair_study):
    """24 corpus rows, 12 per file; the diff asks for 12 rows: 6 of each file (the first 12 were all general)."""
    sets = query(pair_study, "SELECT token_set, source, n_rows, n_tokens FROM token_sets ORDER BY token_set, position")
    sample = sets[sets.token_set == "sample-12"]
    assert sample[["source", "n_rows", "n_tokens"]].values.tolist() == [["general", 6, 6 * 31], ["medical", 6, 6 * 31]]
    corpus = sets[sets.token_set == "corpus"]
    assert corpus.n_rows.tolist() == [12, 12]
    measured = query(pair_study, "SELECT coalesce(arm, arm_a || '→' || arm_b) AS owner, stage, token_set FROM stages")
    on = dict(zip(measured.owner + "/" + measured.stage, measured.token_set))
    assert on["base→finetuned/matching"] == on["base→finetuned/transfer"] == on["base→finetuned/similarity"] == "sample-12"
    assert on["base/activations"] == on["base/quality"] == "corpus"
    assert on["base/projection"] != on["base/projection"]  # NaN: the projection reads no tokens


def test_transfer_onto_the_same_model_reproduces_the_own_numbers(pair_study):
    table = query(pair_study, "SELECT sae_arm, model_arm, metric, value FROM transfer_metrics")
    for sae_arm in ("base", "finetuned"):
        own = table[(table.sae_arm == sae_arm) & (table.model_arm == sae_arm)].set_index("metric").value
        other = table[(table.sae_arm == sae_arm) & (table.model_arm != sae_arm)].set_index("metric").value
        for metric in ("l0", "explained_variance", "ce_loss_spliced", "ce_loss_recovered"):
            assert other[metric] == pytest.approx(own[metric], rel=1e-6)


def test_a_model_against_itself_diverges_nowhere_and_enriches_nothing(pair_study):
    rows = query(pair_study, "SELECT max_kl FROM divergence_rows")
    assert len(rows) == 12 and (rows.max_kl == 0.0).all()
    features = query(pair_study, "SELECT arm, mean_divergent, fired_divergent, mean_elsewhere FROM divergence_features")
    assert len(features) == 2 * D_SAE
    assert features.mean_divergent.isna().all() and (features.fired_divergent == 0).all()
    assert features.mean_elsewhere.notna().all()
    metrics = query(pair_study, "SELECT metric, value FROM metrics WHERE stage = 'divergence'")
    assert dict(zip(metrics.metric, metrics.value))["n_divergent"] == 0
