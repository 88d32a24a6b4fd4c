"""Keeping the models of an earlier build: a recipe change that touches only the SAE (or the vocabulary) reuses the
base and fine-tuned arms and their perplexities, which are most of a real model's build time (the SmolLM2
recipe: load, fine-tune and perplexity ~13 of its ~29 minutes under load). When the base SAE's own fields are
unchanged too (a change to how the fine-tuned SAE is trained), the base SAE is kept as well (~5 minutes quiet)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from core.config import DemoRecipe

# Sizes and steps of a base model trained here: a pretrained recipe brings its own, so they are not its fields.
# (`base_tokens` too: a pretrained recipe's fine-tune rows start after the SAE's, since version 4.)
FROM_SCRATCH_FIELDS = ("vocab_size", "n_layer", "n_embd", "n_head", "base_lr", "base_tokens")
# What the two arms and their held-out perplexities depend on; the other fields only shape the SAEs.
MODEL_FIELDS = ("pretrained", *FROM_SCRATCH_FIELDS, "n_positions", "finetune_tokens", "finetune_lr",
                "finetune_general_share", "batch_size", "heldout_share", "eval_tokens", "finetune_text_only",
                "finetune_lr_factors", "finetune_lr_check_steps", "finetune_check_every", "finetune_patience",
                "finetune_check_rows")
# Model fields added after builds recorded their key: in the key only when set off their default, so a recipe that
# leaves them alone keeps the models of a build from before them.
LATER_MODEL_FIELDS = {"finetune_text_only": False}
MODELS_VERSION = 2  # bump when the model steps change in a way the recipe's fields do not show
# 2: rows joined by <|endoftext|> too (one commit, measured worse); 3: a pretrained instruct model's rows start with
# its plain end-of-text, not its chat-turn opener (core.models.sources.use_plain_text_bos); a from-scratch build's
# tokenizer has no other token to use. 4 (and MODELS_VERSION 2): the fine-tune's learning-rate check and early stop
# (issue 26); a pretrained recipe's general fine-tune rows follow the SAE's (no rows packed for a base).
PRETRAINED_MODELS_VERSION = 4
MODEL_STEPS = ("load pretrained", "tokenizer", "base model", "fine-tune", "perplexity")
# What the base arm's SAE depends on besides its model (the fine-tuned SAE's own fields are not among them).
BASE_SAE_FIELDS = ("hook_name", "d_sae", "sae_architecture", "sae_k", "sae_dead_window_tokens", "sae_whitening",
                   "sae_l1_coefficient", "sae_lr", "sae_tokens", "sae_batch_tokens", "sae_l1_warm_up_share",
                   "sae_lr_decay_share", "sae_exclude_special_tokens")
BASE_SAE_VERSION = 2  # bump when SAE training changes in a way these fields do not show (2: the dead window)


def used_recipe(recipe: DemoRecipe) -> dict[str, Any]:
    """The recipe's fields that this build uses (a pretrained recipe drops the from-scratch sizes)."""
    fields = dataclasses.asdict(recipe)
    if recipe.pretrained:
        fields = {k: v for k, v in fields.items() if k not in FROM_SCRATCH_FIELDS}
    return fields


def models_key(recipe: DemoRecipe, seed: int) -> str:
    """Changes exactly when the base / fine-tuned arms of a build would."""
    return _key(used_recipe(recipe), seed, PRETRAINED_MODELS_VERSION if recipe.pretrained else MODELS_VERSION)


def _key(fields: dict[str, Any], seed: int, version: int) -> str:
    skip = FROM_SCRATCH_FIELDS if fields.get("pretrained") else ()
    models = {k: fields.get(k, LATER_MODEL_FIELDS.get(k)) for k in MODEL_FIELDS if k not in skip}
    models = {k: v for k, v in models.items() if k not in LATER_MODEL_FIELDS or v != LATER_MODEL_FIELDS[k]}
    text = json.dumps({"models": models, "seed": seed, "version": version}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def earlier_models_key(manifest: dict[str, Any]) -> str | None:
    """The models key of an earlier build; builds from before keys were recorded had the model steps of version 1
    (so a pretrained one among them is stale)."""
    if "models_key" in manifest or "recipe" not in manifest:
        return manifest.get("models_key")
    return _key(manifest["recipe"], manifest.get("seed", 0), version=1)


def reusable(out: Path, manifest: dict[str, Any], key: str) -> bool:
    """Whether `out` holds a complete earlier build whose arms are the ones this recipe would train."""
    return earlier_models_key(manifest) == key and all(
        (out / "models" / arm / "config.json").is_file() for arm in ("base", "finetuned"))


def link_models(out: Path, folder: Path) -> None:
    """The earlier build's model folders into the scratch build, as hard links (no copy of ~1 GB; publishing
    replaces the old folder, the linked files live on)."""
    shutil.copytree(out / "models", folder / "models", copy_function=os.link)


def model_step_timings(manifest: dict[str, Any], steps: tuple[str, ...] = MODEL_STEPS) -> dict[str, float]:
    """Seconds the kept `steps` took in the build that ran them (carried through builds that reused them)."""
    earlier = {k: v for k, v in manifest.get("reused", {}).get("timings_s", {}).items() if k in steps}
    earlier.update({k: v for k, v in manifest.get("timings_s", {}).items() if k in steps})
    return earlier


def base_sae_key(recipe: DemoRecipe, seed: int) -> str:
    """Changes exactly when the base arm's SAE would: its model, or one of its own training fields."""
    return _base_sae_key(used_recipe(recipe), seed, models_key(recipe, seed))


def _base_sae_key(fields: dict[str, Any], seed: int, models: str | None) -> str:
    defaults = dataclasses.asdict(DemoRecipe())  # a field added since an old build had its default's behaviour then
    own = {k: fields.get(k, defaults[k]) for k in BASE_SAE_FIELDS}
    text = json.dumps({"models": models, "sae": own, "seed": seed, "version": BASE_SAE_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def base_sae_reusable(out: Path, manifest: dict[str, Any], recipe: DemoRecipe, seed: int) -> bool:
    """Whether the earlier build in `out` (whose models are kept) holds the very base SAE this recipe would train."""
    if "recipe" not in manifest or "base" not in manifest.get("saes", {}):
        return False
    earlier = _base_sae_key(manifest["recipe"], manifest.get("seed", 0), earlier_models_key(manifest))
    return earlier == base_sae_key(recipe, seed) and (out / "saes" / "base" / "cfg.json").is_file()


def link_base_sae(out: Path, folder: Path) -> None:
    """The earlier build's base SAE into the scratch build, as hard links."""
    (folder / "saes").mkdir(parents=True, exist_ok=True)
    shutil.copytree(out / "saes" / "base", folder / "saes" / "base", copy_function=os.link)
