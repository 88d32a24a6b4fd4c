"""`python -m precompute train-saes --config CONFIG`: SAEs for a study's own base and fine-tuned models (issue 26).

The study's first pair names the models: its `a` arm is the base, its `b` arm the fine-tuned model, its control arm
(if any) the base model again. Each gets an SAE at the recipe's hook (`[demo]`: hook_name, d_sae, sae_architecture,
sae_k, sae_tokens, ...), written to the arm's `sae_path`; the fine-tuned arm's SAE (and the control's) goes on from
the base arm's when the recipe says `sae_finetuned_from_base`, so their features keep their partners unless the
fine-tune moved them. The same plan (`sae_plan`, `train_saes`) is what `build-demo` runs for every recipe.

SAEs are trained on the shipped general and medical training text (never its held-out documents) and scored on the
held-out ones. They are written only when every one of them meets the quality floor (explained variance, dead share:
precompute/demo/steps.py FLOOR); otherwise the command stops with one line naming each miss and writes nothing,
unless `--keep-below-floor`. An existing SAE folder is replaced only with `--force`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from core.config import DemoRecipe, StudyConfig
from core.corpus import pack_rows
from core.errors import StudyInputError

logger = logging.getLogger(__name__)

CONTROL_SEED_OFFSET = 1000  # the control SAE's data-order (and init) seed is the study's seed + this


@dataclasses.dataclass(frozen=True)
class ArmSae:
    """One SAE to train: the arm it is for, the model it reads (folder, hub name or GGUF file), where it goes, its
    seed, and the arm whose SAE it continues (None: a random init) for `tokens` (None: recipe.sae_tokens)."""

    arm: str
    model: str
    sae_dir: Path
    seed: int
    continues: str | None = None
    tokens: int | None = None
    extra: tuple[tuple[str, Any], ...] = ()  # written into its summary (the control's role)


def sae_plan(recipe: DemoRecipe, seed: int, models: dict[str, str], sae_dirs: dict[str, Path],
             control: str | None) -> list[ArmSae]:
    """The SAEs of a pair in training order: base, fine-tuned (continued from base when
    recipe.sae_finetuned_from_base), and the control arm `control` if named: the base model with an SAE trained as
    the fine-tuned arm's was, with another seed (issue 22's noise floor). `models` and `sae_dirs` are keyed "base",
    "finetuned" (and `control`)."""
    from_base = "base" if recipe.sae_finetuned_from_base else None
    tokens = (recipe.sae_finetuned_tokens or None) if from_base else None
    plan = [ArmSae("base", models["base"], sae_dirs["base"], seed),
            ArmSae("finetuned", models["finetuned"], sae_dirs["finetuned"], seed, from_base, tokens)]
    if control:
        plan.append(ArmSae(control, models["base"], sae_dirs[control], seed + CONTROL_SEED_OFFSET, from_base, tokens,
                           (("control_for", "finetuned"), ("model", "base"), ("seed", seed + CONTROL_SEED_OFFSET))))
    return plan


def train_saes(plan: list[ArmSae], rows: dict[str, torch.Tensor], recipe: DemoRecipe, device: str, study: str,
               on_start: Any = None, kept: dict[str, Path] | None = None) -> dict[str, dict[str, Any]]:
    """Train and save each SAE of `plan` in order (steps.train_and_save_sae); {arm: its summary}. `on_start(item)`,
    if given, returns a context manager around each (build-demo's step timer). `kept`: arm -> folder of an SAE
    that is not trained again but may be continued from (build-demo keeps an unchanged base SAE)."""
    from contextlib import nullcontext

    from precompute.demo import steps

    dirs = {**(kept or {}), **{item.arm: item.sae_dir for item in plan}}
    summaries: dict[str, dict[str, Any]] = {}
    for item in plan:
        with on_start(item) if on_start is not None else nullcontext():
            summary = steps.train_and_save_sae(
                item.model, item.sae_dir, rows, recipe, item.seed, device, item.arm, model_name=f"{study}-{item.arm}",
                init_dir=dirs[item.continues] if item.continues else None, tokens=item.tokens)
            summaries[item.arm] = {**summary, **({"initialised_from": item.continues} if item.continues else {}),
                                   **dict(item.extra)}
            logger.info("SAE %s: %s", item.arm, summaries[item.arm])
    return summaries


def sae_rows(tokenizer: Any, recipe: DemoRecipe, seed: int) -> dict[str, torch.Tensor]:
    """The rows the SAEs train on and are scored on, from the shipped text: the same "sae", "eval_general" and
    "eval_medical" rows steps.make_rows gives, without tokenising anything for a fine-tune."""
    from precompute.demo import text as text_sources

    general = text_sources.split_domain(text_sources.iter_general_texts(), recipe.heldout_share)
    medical = text_sources.split_domain(text_sources.iter_medical_texts(), recipe.heldout_share)
    ctx, n_half = recipe.n_positions, recipe.sae_tokens // recipe.n_positions // 2 + 1
    n_eval = max(1, recipe.eval_tokens // ctx)
    sae = torch.cat([pack_rows(general.train, tokenizer, ctx, max_rows=n_half),
                     pack_rows(medical.train, tokenizer, ctx, max_rows=n_half)])
    sae = sae[torch.randperm(sae.shape[0], generator=torch.Generator().manual_seed(seed))]
    return {"sae": sae, "eval_general": pack_rows(general.heldout, tokenizer, ctx, max_rows=n_eval),
            "eval_medical": pack_rows(medical.heldout, tokenizer, ctx, max_rows=n_eval)}


def study_plan(config: StudyConfig, recipe: DemoRecipe) -> tuple[list[ArmSae], dict[str, Path]]:
    """The SAE plan of a study's first pair (its a arm the base, b the fine-tuned, its control the base again) and
    {arm: its sae_path}; one line naming the field when an arm cannot take a trained SAE."""
    pair = config.pairs[0]
    names = {"base": pair.a, "finetuned": pair.b, **({pair.control: pair.control} if pair.control else {})}
    arms = {role: config.arm(name) for role, name in names.items()}
    for role, arm in arms.items():
        if arm.sae_path is None:
            raise StudyInputError(f"arms[{arm.name}]: train-saes writes the SAE to sae_path; set sae_path = "
                                  f'"saes/{arm.name}" (it has sae_release/sae_id)')
    if pair.control and arms[pair.control].model != arms["base"].model:
        raise StudyInputError(f"arms[{pair.control}].model: the control arm reads the base model "
                              f"({arms['base'].model}), got {arms[pair.control].model}")
    models = {role: arm.model for role, arm in arms.items()}
    sae_dirs = {role: Path(arm.sae_path) for role, arm in arms.items()}
    plan = sae_plan(recipe, config.seed, models, sae_dirs, pair.control)
    renamed = [dataclasses.replace(item, arm=names.get(item.arm, item.arm),
                                   continues=names.get(item.continues, item.continues)) for item in plan]
    return renamed, {names[role]: folder for role, folder in sae_dirs.items()}


def train_study_saes(config: StudyConfig, fast: bool = False, force: bool = False, keep_below_floor: bool = False,
                     device: str = "cpu") -> dict[str, dict[str, Any]]:
    """Train the SAEs of the study's first pair into scratch folders, check the floor, then move them to each arm's
    sae_path; {arm: summary}. Nothing is written when a folder holds an SAE (without `force`) or the floor is missed
    (without `keep_below_floor`)."""
    from core.models import load_hf_model
    from precompute.demo import steps

    if config.demo is None:
        raise StudyInputError(f"{config.source_path or 'config'}: no [demo] section; add one with the SAE's "
                              'hook_name (e.g. "blocks.6.hook_resid_pre"), d_sae and sae_k (see README, '
                              '"Bring your own pair")')
    recipe = config.demo.fast if fast else config.demo.recipe
    plan, targets = study_plan(config, recipe)
    taken = [str(folder) for folder in targets.values() if (folder / "cfg.json").exists()]
    if taken and not force:
        raise StudyInputError(f"{', '.join(taken)} already hold an SAE; use --force to train and replace them")
    _, tokenizer = load_hf_model(plan[0].model, plan[0].arm)
    rows = sae_rows(tokenizer, recipe, config.seed)
    scratch = {arm: folder.parent / f".{folder.name}.training-{os.getpid()}" for arm, folder in targets.items()}
    try:
        plan = [dataclasses.replace(item, sae_dir=scratch[item.arm]) for item in plan]
        summaries = train_saes(plan, rows, recipe, device, config.name)
        misses = steps.sae_floor_misses(summaries)
        if misses and not keep_below_floor:
            raise StudyInputError(
                f"quality floor not met, no SAE written: {'; '.join(misses)}; train longer (demo.sae_tokens), or "
                "narrower (demo.d_sae) or with another demo.sae_k, or keep them anyway with --keep-below-floor")
        for arm, folder in targets.items():
            folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(folder, ignore_errors=True)
            scratch[arm].rename(folder)
    finally:
        for folder in scratch.values():
            shutil.rmtree(folder, ignore_errors=True)
    return summaries


def sae_missing(arm: Any) -> bool:
    """The arm names a local SAE folder that holds no SAE yet (train-saes writes it)."""
    return arm.sae_path is not None and not (Path(arm.sae_path) / "cfg.json").is_file()


def check_model(arm: Any, device: str) -> str:
    """Load an arm's model alone, as train-saes will (a HookedTransformer with the SAE training's processing), and
    check it against `transformers`; one line saying what loaded. For `check` before any SAE exists."""
    from core.loading import (hooked_transformer_from_hf, load_hf_model, processing_from_kwargs, resolve_device,
                              verify_against_hf)
    from precompute.demo.sae_train import TRAINING_PROCESSING

    device = resolve_device(arm.device or device)
    hf_model, tokenizer = load_hf_model(arm.model, arm.name)
    try:
        model = hooked_transformer_from_hf(hf_model, tokenizer, processing_from_kwargs(TRAINING_PROCESSING), device)
    except StudyInputError as err:
        raise StudyInputError(f"arms[{arm.name}].model: {err}") from None
    diff = verify_against_hf(model, hf_model)
    return (f"{arm.name}: {arm.model} ({model.cfg.original_architecture}, {model.cfg.n_layers} blocks, d_model "
            f"{model.cfg.d_model}) matches transformers (max |Δ log-prob| {diff:.1e}); "
            + (f"SAE missing: {arm.sae_path}" if sae_missing(arm) else f"SAE {arm.sae_source}"))
