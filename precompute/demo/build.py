"""`python -m precompute build-demo`: the embedded base / fine-tuned pair, offline and deterministic.

Steps: text → tokenizer → base LM (general English) → fine-tuned copy (medical) → held-out perplexities →
one SAELens SAE per arm at the recipe's hook → medical vocabulary → GloVe cache → manifest + study config.

When `out` already holds a build whose arms this recipe would train again (same model fields and seed), they are
kept and only the SAE and later steps run (precompute/demo/reuse.py); `--force` rebuilds everything.

Everything is built in a scratch folder beside `out` and moved in piece by piece only when every step
succeeded, so a failed or interrupted build leaves the previous demo intact. Files that are not the build's
(the features and labels databases) are never touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from core.boundaries import special_token_ids
from core.config import DemoRecipe, StudyConfig
from core.errors import StudyInputError
from precompute.demo import steps
from precompute.demo import reuse
from precompute import train_saes
from precompute.demo import finetune as finetune_steps
from precompute.demo.pretrained import load_pretrained

logger = logging.getLogger(__name__)

ARMS = ("base", "finetuned")
# The control arm: the base model with an SAE trained as the fine-tuned arm's was, on the base model (issue 22).
CONTROL_ARM = "base_resae"
CONTROL_SEED_OFFSET = train_saes.CONTROL_SEED_OFFSET  # its SAE's data-order (and init) seed is the study's seed + this
# manifest.json goes last: a build is complete exactly when its manifest is there.
BUILD_ITEMS = ("corpus", "models", "saes", "vocab", "study.toml", "manifest.json")
BUILD_VERSION = 1  # bump when the build changes in a way that makes old demos stale


@dataclasses.dataclass
class BuildResult:
    out: Path
    manifest: dict[str, Any]
    skipped: bool = False


def recipe_hash(recipe: DemoRecipe, seed: int) -> str:
    text = json.dumps({"recipe": reuse.used_recipe(recipe), "seed": seed, "build_version": BUILD_VERSION},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_demo(config: StudyConfig, out: Path, fast: bool = False, force: bool = False,
               device: str = "cpu") -> BuildResult:
    """Build (or keep, when an identical build is already there) the demo pair in `out`."""
    if config.demo is None:
        raise StudyInputError(f"{config.source_path or 'config'}: no [demo] section; use configs/demo.toml")
    recipe = config.demo.fast if fast else config.demo.recipe
    wanted = recipe_hash(recipe, config.seed)
    existing = _read_manifest(out)
    if not force and existing.get("recipe_hash") == wanted and all((out / item).exists() for item in BUILD_ITEMS):
        logger.info("demo in %s is already built from this recipe (%s); use --force to rebuild", out, wanted)
        return BuildResult(out, existing, skipped=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    keep_models = not force and reuse.reusable(out, existing, reuse.models_key(recipe, config.seed))
    try:
        manifest = _build_into(scratch, config, recipe, fast, device, existing if keep_models else None, out)
        manifest["recipe_hash"] = wanted
        _write_study_toml(scratch / "study.toml", config, out, control=recipe.sae_control)
        (scratch / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _publish(scratch, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return BuildResult(out, manifest)


def _read_manifest(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


STEPS = ("text", "tokenizer", "base model", "fine-tune", "perplexity", "SAE base", "SAE finetuned",
         f"SAE {CONTROL_ARM}", "medical vocabulary", "embeddings cache")


@contextmanager
def _step(name: str, timings: dict[str, float], bar: Any) -> Iterator[None]:
    bar.set_postfix_str(name)
    logger.info("▶ %s", name)
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 2)
    logger.info("✓ %s (%.1f s)", name, timings[name])
    bar.update(1)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _build_into(folder: Path, config: StudyConfig, recipe: DemoRecipe, fast: bool, device: str,
                earlier: dict[str, Any] | None, out: Path) -> dict[str, Any]:
    """Run the steps into `folder`; `earlier` is the manifest of the build in `out` whose arms are kept, if any."""
    timings: dict[str, float] = {}
    _seed_everything(config.seed)
    with tqdm(total=len(STEPS), desc="build-demo", unit="step") as bar:
        manifest = _run_steps(folder, config, recipe, device, timings, bar, earlier, out)
    kept_steps = reuse.MODEL_STEPS + (("SAE base",) if "keep SAE base" in timings else ())
    reused = {"timings_s": reuse.model_step_timings(earlier, kept_steps)} if earlier is not None else {}
    return {"study": config.name, "fast": fast, "seed": config.seed, "device": device,
            "recipe": reuse.used_recipe(recipe), "models_key": reuse.models_key(recipe, config.seed),
            "versions": steps.package_versions(), **manifest, "timings_s": timings,
            "total_s": round(sum(timings.values()), 1), **({"reused": reused} if reused else {}),
            "cpu": steps.machine()}


def _model_steps(folder: Path, text: steps.TextData, config: StudyConfig, recipe: DemoRecipe, device: str,
                 timings: dict[str, float], bar: Any) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Train (or load) the base arm, fine-tune it, measure both: (tokenizer, rows, {arm: steps.evaluate(...)}, the
    fine-tune's record: its learning-rate check and early stop)."""
    # A pretrained recipe brings its own tokenizer and base model; the steps after these two are the same.
    with _step("load pretrained" if recipe.pretrained else "tokenizer", timings, bar):
        base, tokenizer = (load_pretrained(recipe.pretrained) if recipe.pretrained
                           else (None, steps.make_tokenizer(text, recipe)))
        rows = steps.make_rows(text, tokenizer, recipe, config.seed)
    with _step("base model", timings, bar):
        base = base if base is not None else steps.train_base(rows, tokenizer, recipe, config.seed, device)
        steps.save_model(base, tokenizer, folder / "models" / "base")
    with _step("fine-tune", timings, bar):
        finetuned, record = steps.finetune(base, tokenizer, rows, recipe, config.seed, device)
        steps.save_model(finetuned, tokenizer, folder / "models" / "finetuned")
    with _step("perplexity", timings, bar):
        special = special_token_ids(tokenizer)
        perplexity = {arm: steps.evaluate(model, rows, recipe, device, special)
                      for arm, model in (("base", base), ("finetuned", finetuned))}
        # seen before a long build ends
        logger.info("held-out perplexity drop by token kind: %s", steps.perplexity_report(perplexity)[
            "perplexity_drop_by_kind"])
    return tokenizer, rows, perplexity, record


def _kept_models(folder: Path, text: steps.TextData, config: StudyConfig, recipe: DemoRecipe,
                 earlier: dict[str, Any], out: Path, timings: dict[str, float],
                 bar: Any) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """The arms of the earlier build in `out`, linked in unchanged: (tokenizer, rows, {arm: steps.evaluate(...)},
    its fine-tune record), the perplexities as that build measured them (measured here if it split none by kind)."""
    from transformers import AutoTokenizer

    with _step("keep models", timings, bar):
        logger.info("keeping the base and fine-tuned arms of the build in %s (models key %s)", out,
                    reuse.earlier_models_key(earlier))
        reuse.link_models(out, folder)
        tokenizer = AutoTokenizer.from_pretrained(str(folder / "models" / "base"))
        rows = steps.make_rows(text, tokenizer, recipe, config.seed)
    bar.update(3)  # base model, fine-tune and perplexity were done by the earlier build
    perplexity = steps.evaluation_from_manifest(earlier)
    if perplexity is None:
        with _step("perplexity by token kind", timings, bar):
            perplexity = steps.evaluate_saved(folder / "models", rows, recipe, device, special_token_ids(tokenizer))
    return tokenizer, rows, perplexity, earlier.get("finetune")


def _run_steps(folder: Path, config: StudyConfig, recipe: DemoRecipe, device: str, timings: dict[str, float],
               bar: Any, earlier: dict[str, Any] | None, out: Path) -> dict[str, Any]:
    with _step("text", timings, bar):
        text = steps.prepare_text(folder / "corpus", recipe)
    if earlier is None:
        tokenizer, rows, perplexity, finetune_record = _model_steps(folder, text, config, recipe, device, timings, bar)
    else:
        tokenizer, rows, perplexity, finetune_record = _kept_models(folder, text, config, recipe, earlier, out, timings, bar)
    keep_base_sae = earlier is not None and reuse.base_sae_reusable(out, earlier, recipe, config.seed)
    saes = _train_saes(folder, rows, recipe, config, device, timings, bar, earlier if keep_base_sae else None, out)
    with _step("medical vocabulary", timings, bar):
        vocabulary = steps.build_vocabulary(text, folder / "vocab" / "medical_words.txt")
    with _step("embeddings cache", timings, bar):
        embeddings = steps.warm_embeddings(config)
    return {
        "text": text.summary(),
        "rows": {name: int(tensor.shape[0]) for name, tensor in rows.items()},
        "tokenizer": {"vocab_size": len(tokenizer)},
        **(report := steps.perplexity_report(perplexity)),
        "saes": saes,
        "quality_floor": steps.quality_floor(report["perplexity"], saes, report["perplexity_drop_by_kind"]),
        "finetune": finetune_record,
        # The Overview and the build's last line say it (issue 26): never a silently worse "fine-tune".
        "finetune_warning": finetune_steps.domain_warning(report["perplexity"], finetune_record),
        "vocabulary": vocabulary,
        "embeddings": embeddings,
    }


def _train_saes(folder: Path, rows: dict[str, Any], recipe: DemoRecipe, config: StudyConfig, device: str,
                timings: dict[str, float], bar: Any, earlier: dict[str, Any] | None, out: Path) -> dict[str, Any]:
    """The SAEs of train-saes's plan (precompute/train_saes.py) on the built arms: base, fine-tuned (continued from
    the base SAE when the recipe says so) and the control arm base_resae (issue 22) when recipe.sae_control. With
    `earlier` (its manifest), the base SAE of the build in `out` is kept instead of trained again."""
    models = {"base": str(folder / "models" / "base"), "finetuned": str(folder / "models" / "finetuned")}
    sae_dirs = {arm: folder / "saes" / arm for arm in (*ARMS, CONTROL_ARM)}
    plan = train_saes.sae_plan(recipe, config.seed, models, sae_dirs, CONTROL_ARM if recipe.sae_control else None)
    saes: dict[str, Any] = {}
    if earlier is not None:
        with _step("keep SAE base", timings, bar):
            reuse.link_base_sae(out, folder)
            saes["base"] = earlier["saes"]["base"]
            logger.info("keeping the base SAE of the build in %s (its fields and models are unchanged)", out)
        plan = [item for item in plan if item.arm != "base"]
    kept = {"base": sae_dirs["base"]} if "base" in saes else None  # the fine-tuned SAE may go on from it
    return {**saes, **train_saes.train_saes(plan, rows, recipe, device, config.name, kept=kept,
                                            on_start=lambda item: _step(f"SAE {item.arm}", timings, bar))}


def _write_study_toml(path: Path, config: StudyConfig, out: Path, control: bool) -> None:
    """A study config for this very build (absolute paths), so `precompute run --config <out>/study.toml` works
    wherever the demo was built; with the control arm and the pair that declares it when the build trained one."""
    root = out.resolve()
    lines = [
        "# Written by build-demo: the demo study as built in this folder.",
        "[study]", f'name = "{config.name}"', f"seed = {config.seed}", f'device = "{config.device}"',
        f'features_db = "{root / "features.duckdb"}"', f'labels_db = "{root / "labels.duckdb"}"', "",
    ]
    for arm in ARMS:
        lines += ["[[arms]]", f'name = "{arm}"', f'model = "{root / "models" / arm}"',
                  f'sae_path = "{root / "saes" / arm}"', ""]
    if control:
        lines += ["[[arms]]", f'name = "{CONTROL_ARM}"', f'model = "{root / "models" / "base"}"',
                  f'sae_path = "{root / "saes" / CONTROL_ARM}"', "",
                  "[[pairs]]", 'a = "base"', 'b = "finetuned"', f'control = "{CONTROL_ARM}"', ""]
    corpus = [f'"{root / "corpus" / name}"' for name in ("heldout_general.txt", "heldout_medical.txt")]
    lines += [
        "[corpus]", 'kind = "text_files"', f"paths = [{', '.join(corpus)}]",
        f"n_tokens = {config.corpus.n_tokens}", f"context_size = {config.corpus.context_size}", "",
        "[embeddings]", f'source = "{config.embeddings.source}"',
        f'cache_dir = "{Path(config.embeddings.cache_dir).resolve()}"', "",
        "[medical_vocabulary]", f'path = "{root / "vocab" / "medical_words.txt"}"',
        f'exclude = "{_exclude_path(config)}"', "",
        "[projection]", f"top_k = {config.projection.top_k}", "",
    ]
    path.write_text("\n".join(lines))


def _exclude_path(config: StudyConfig) -> Path:
    """The study's exclude list, else the hand-checked one the build applied (editing it needs no rebuild)."""
    exclude = config.medical_vocabulary.exclude
    return Path(exclude).resolve() if exclude else steps.vocab.MEDICAL_EXCLUDE_PATH


def _publish(scratch: Path, out: Path) -> None:
    """Move each built item into `out`, replacing the old one; other files in `out` (databases) stay.

    The old manifest goes first, so an interrupted publish is seen as "not built" and is redone."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    for item in BUILD_ITEMS:
        target, old = out / item, out / f".{item}.old"
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        if target.exists():
            target.rename(old)
        (scratch / item).rename(target)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
