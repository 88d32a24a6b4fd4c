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
QUIET = "a vein and an artery of the kidney\n"


def _plant(model, sae, tokenizer, text: str) -> None:
    """Set feature PLANTED's encoder to separate " heart" from every other token of `text` at every position: at
    the first block's resid_pre the residual is a function of (token, position) only, so rows of one token
    repeated cover every case a corpus of that text can hold."""
    vocab = torch.tensor(sorted({*tokenizer(text)["input_ids"], tokenizer.eos_token_id}))
    rows = vocab[:, None].repeat(1, model.cfg.n_ctx)
    rows[:, 0] = tokenizer.bos_token_id
    resid = activations_at_hook(model, HOOK, rows) - sae.b_dec  # [n_tokens, n_ctx - 1, d_in], BOS left out
    (heart,) = tokenizer(WORD)["input_ids"]
    is_heart = vocab == heart
    direction = resid[is_heart].mean((0, 1))
    projections = resid @ direction  # [n_tokens, n_ctx - 1]
    low, high = projections[~is_heart].max(), projections[is_heart].min()
    assert high > low, "the planted feature cannot separate ' heart' in this tiny model"
    with torch.no_grad():
        scale = 2.0 / (high - low)
        sae.W_enc[:, PLANTED] = direction * scale
        sae.b_enc[PLANTED] = -(low + high) / 2 * scale


def _quiet_positions(folder: Path) -> Path:
    """The model with its position embeddings scaled by 0.05: at the first block the token then decides."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    with torch.no_grad():
        model.transformer.wpe.weight.mul_(0.05)
    model.save_pretrained(str(folder))
    return folder


def build_explain_study(root: Path) -> Path:
    """Model, planted SAE, corpus and features database under `root`; returns the config's path."""
    tokenizer = byte_tokenizer((TEXT,))
    folder = _quiet_positions(build_gpt2_folder(root / "model", tokenizer))
    sae = build_sae(d_in=32, d_sae=D_SAE, hook_name=HOOK)
    with torch.no_grad():
        sae.b_dec.zero_()
    hf, hf_tokenizer = load_hf_model(str(folder))
    model = hooked_transformer_from_hf(hf, hf_tokenizer, processing_for(sae), "cpu")
    _plant(model, sae, hf_tokenizer, TEXT + QUIET)
    sae.save_model(str(root / "sae"))
    (root / "corpus.txt").write_text((TEXT + QUIET * 4) * 20)  # windows without " heart" to hold out
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
