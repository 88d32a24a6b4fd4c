"""A tiny study with a planted feature: feature 0 of its SAE reads the token " heart" at the first block's
residual stream (its encoder row is the mean residual on " heart", its bias a threshold halfway between the
" heart" tokens and every other token), so it fires on " heart" and nowhere else. Precomputed in seconds."""

from pathlib import Path

import torch

from core.config import load_config
from core.hook_reads import activations_at_hook
from core.loading import processing_for
from core.models import hooked_transformer_from_hf, load_hf_model
from factories import build_gpt2_folder, build_sae, byte_tokenizer, study_toml
from precompute.run import run_study

HOOK = "blocks.0.hook_resid_pre"
D_SAE = 16
PLANTED = 0  # fires on " heart" only
WORD = " heart"
TEXT = ("the heart and the kidney beat, a pulmonary artery and a vein\n"
        "a vein, a pulmonary artery: the kidney and the heart beat\n"
        "the artery and the vein of the kidney\n")


def _plant(model, sae, tokenizer, text: str) -> None:
    """Set feature PLANTED's encoder to separate the " heart" positions of `text` from all others."""
    ids = tokenizer(text)["input_ids"]
    ids = torch.tensor(ids[:len(ids) // 31 * 31]).reshape(-1, 31)  # rows of the model's 32 positions with BOS
    (heart,) = tokenizer(WORD)["input_ids"]
    rows = torch.cat([torch.full((len(ids), 1), tokenizer.bos_token_id), ids], dim=1)
    resid = activations_at_hook(model, HOOK, rows).reshape(-1, sae.cfg.d_in) - sae.b_dec  # BOS left out
    is_heart = ids.reshape(-1) == heart
    direction = resid[is_heart].mean(0)
    projections = resid @ direction
    low, high = projections[~is_heart].max(), projections[is_heart].min()
    assert high > low, "the planted feature cannot separate ' heart' in this tiny model"
    with torch.no_grad():
        scale = 2.0 / (high - low)
        sae.W_enc[:, PLANTED] = direction * scale
        sae.b_enc[PLANTED] = -(low + high) / 2 * scale


def build_explain_study(root: Path) -> Path:
    """Model, planted SAE, corpus and features database under `root`; returns the config's path."""
    tokenizer = byte_tokenizer((TEXT,))
    folder = build_gpt2_folder(root / "model", tokenizer)
    sae = build_sae(d_in=32, d_sae=D_SAE, hook_name=HOOK)
    with torch.no_grad():
        sae.b_dec.zero_()
    hf, hf_tokenizer = load_hf_model(str(folder))
    model = hooked_transformer_from_hf(hf, hf_tokenizer, processing_for(sae), "cpu")
    _plant(model, sae, hf_tokenizer, TEXT * 4)
    sae.save_model(str(root / "sae"))
    (root / "corpus.txt").write_text(TEXT * 40)
    (root / "words.txt").write_text("heart\nkidney\n")
    config = root / "study.toml"
    config.write_text(study_toml([{"name": "base", "model": str(folder), "sae_path": str(root / "sae")}],
                                 corpus_paths=[str(root / "corpus.txt")], features_db=str(root / "f.duckdb"),
                                 labels_db=str(root / "labels.duckdb"))
                      .replace('path = "words.txt"', f'path = "{root / "words.txt"}"')
                      .replace("n_tokens = 1000", "n_tokens = 1024\ncontext_size = 32"))
    report = run_study(load_config(config), show_progress=False)
    assert report.published
    return config
