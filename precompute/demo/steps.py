"""The steps of the demo build, each a function the orchestrator in build.py calls in order."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
from pathlib import Path
from typing import Any

import torch

from core import vocabulary as vocab
from core.boundaries import special_token_ids
from core.config import DemoRecipe, StudyConfig
from core.corpus import pack_rows
from core.loading import hooked_transformer_from_hf, load_hf_model, processing_from_kwargs
from core.sae_metrics import hook_activations, reconstruction_stats
from precompute.demo import finetune as finetune_steps, lm, text as text_sources, tokenizer as tok
from precompute.demo.sae_train import TRAINING_PROCESSING, train_sae

logger = logging.getLogger(__name__)

EVAL_SPLITS = ("general", "medical")
# Quality floor of a build: medical perplexity down by at least 10%; on text tokens alone (no separator, not a
# document's first tokens) the medical drop at least twice the general one, so the fine-tune is about its domain
# rather than the corpus's document boundaries (issue 22); each SAE explains at least 75% of the held-out variance
# with at most 10% of its features dead.
FLOOR = {"medical_perplexity_drop": 0.10, "text_drop_ratio": 2.0, "explained_variance": 0.75, "dead_fraction": 0.10}


@dataclasses.dataclass
class TextData:
    general: text_sources.DomainSplit
    medical: text_sources.DomainSplit

    def summary(self) -> dict[str, dict[str, int]]:
        def words(texts: list[str]) -> int:
            return sum(len(t.split()) for t in texts)

        return {name: {"train_docs": len(split.train), "heldout_docs": len(split.heldout),
                       "train_words": words(split.train), "heldout_words": words(split.heldout)}
                for name, split in (("general", self.general), ("medical", self.medical))}


def prepare_text(corpus_dir: Path, recipe: DemoRecipe) -> TextData:
    """Read both domains, split by hash, and write the held-out parts (one document per line)."""
    data = TextData(text_sources.split_domain(text_sources.iter_general_texts(), recipe.heldout_share),
                    text_sources.split_domain(text_sources.iter_medical_texts(), recipe.heldout_share))
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for name, split in (("general", data.general), ("medical", data.medical)):
        (corpus_dir / f"heldout_{name}.txt").write_text("\n".join(split.heldout) + "\n", encoding="utf-8")
    return data


def make_tokenizer(data: TextData, recipe: DemoRecipe) -> Any:
    # A third of the general text (every third document) keeps training to seconds; all medical text, so
    # clinical words get whole tokens too.
    return tok.train_tokenizer(data.general.train[::3] + data.medical.train, recipe.vocab_size)


def make_rows(data: TextData, tokenizer: Any, recipe: DemoRecipe, seed: int) -> dict[str, torch.Tensor]:
    """Token rows [n, n_positions] for each use: base training, fine-tuning, the fine-tune's own held-out check,
    SAE training, evaluation. A pretrained recipe trains no base, so no text is tokenised for one."""
    ctx = recipe.n_positions
    n_base = 0 if recipe.pretrained else recipe.base_tokens // ctx
    n_ft = recipe.finetune_tokens // ctx
    n_ft_general = int(n_ft * recipe.finetune_general_share)
    n_ft_medical = n_ft - n_ft_general
    n_check = recipe.finetune_check_rows
    n_eval = max(1, recipe.eval_tokens // ctx)
    n_sae_half = recipe.sae_tokens // ctx // 2 + 1
    # The fine-tune's general rows come after the base's (from scratch) or the SAE's (pretrained), apart from both.
    ft_general_start = n_base if n_base else n_sae_half
    general = pack_rows(data.general.train, tokenizer, ctx, max_rows=max(ft_general_start + n_ft_general, n_sae_half))
    medical = pack_rows(data.medical.train, tokenizer, ctx, max_rows=max(n_ft_medical + n_check, n_sae_half))
    if medical.shape[0] < n_ft_medical + n_check:
        logger.warning("only %d medical rows for %d requested (fine-tune and its held-out check); fine-tuning on "
                       "what there is", medical.shape[0], n_ft_medical + n_check)
    # The held-out check's rows are medical rows the fine-tune never trains on (taken off its end when text is short).
    n_ft_medical = min(n_ft_medical, max(1, medical.shape[0] - n_check))
    finetune = torch.cat([medical[:n_ft_medical], general[ft_general_start:ft_general_start + n_ft_general]])
    # The SAEs of both arms see the same tokens, half general and half medical, in a seeded order.
    sae = torch.cat([general[:n_sae_half], medical[:n_sae_half]])
    sae = sae[torch.randperm(sae.shape[0], generator=torch.Generator().manual_seed(seed))]
    return {
        "base": general[:n_base],
        "finetune": finetune,
        "finetune_check": medical[n_ft_medical:n_ft_medical + n_check],
        "sae": sae,
        "eval_general": pack_rows(data.general.heldout, tokenizer, ctx, max_rows=n_eval),
        "eval_medical": pack_rows(data.medical.heldout, tokenizer, ctx, max_rows=n_eval),
    }


def train_base(rows: dict[str, torch.Tensor], tokenizer: Any, recipe: DemoRecipe, seed: int, device: str) -> Any:
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(lm.gpt2_config(recipe, tokenizer))
    model.config._attn_implementation = "eager"  # faster than sdpa for these small shapes on CPU
    lm.train_lm(model, rows["base"], recipe.base_lr, recipe.batch_size, seed, device, "base model")
    return model


def finetune(base: Any, tokenizer: Any, rows: dict[str, torch.Tensor], recipe: DemoRecipe, seed: int,
             device: str) -> tuple[Any, dict[str, Any]]:
    """(a copy of `base` fine-tuned on rows["finetune"], the record of its learning-rate check and early stop for the
    manifest): precompute/demo/finetune.py."""
    model, record = finetune_steps.finetune(base, tokenizer, rows, recipe, seed, device)
    return model, dataclasses.asdict(record)


def save_model(model: Any, tokenizer: Any, folder: Path) -> None:
    """`save_pretrained` weights with the tokenizer beside them (AutoTokenizer.from_pretrained(folder) works)."""
    model.save_pretrained(str(folder))
    tok.save_tokenizer(tokenizer, folder)


def evaluate(model: Any, rows: dict[str, torch.Tensor], recipe: DemoRecipe, device: str,
             special: tuple[int, ...]) -> dict[str, dict[str, dict[str, Any]]]:
    """Held-out perplexity of each split over all predicted tokens and per kind (lm.perplexity_by_kind):
    {split: {"perplexity": {kind: value}, "tokens": {kind: count}}}."""
    return {split: lm.perplexity_by_kind(model, rows[f"eval_{split}"], special, device, recipe.batch_size)
            for split in EVAL_SPLITS}


def evaluate_saved(models_dir: Path, rows: dict[str, torch.Tensor], recipe: DemoRecipe, device: str,
                   special: tuple[int, ...]) -> dict[str, Any]:
    """`evaluate` for each arm saved under `models_dir` (a kept build from before perplexities were split by kind)."""
    from transformers import AutoModelForCausalLM

    return {arm: evaluate(AutoModelForCausalLM.from_pretrained(str(models_dir / arm)).float(), rows, recipe, device,
                          special) for arm in ("base", "finetuned")}


def evaluation_from_manifest(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The {arm: evaluate(...)} an earlier build recorded (perplexity_report's fields), or None if it has none."""
    if "perplexity_by_kind" not in manifest or "tokens_by_kind" not in manifest:
        return None
    return {arm: {split: {"perplexity": values, "tokens": manifest["tokens_by_kind"][split]}
                  for split, values in splits.items()} for arm, splits in manifest["perplexity_by_kind"].items()}


def perplexity_report(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The manifest's perplexity fields from {arm: evaluate(...)}: perplexity[arm][split] (all tokens),
    perplexity_by_kind[arm][split][kind], perplexity_drop_by_kind[split][kind] (1 - finetuned / base: 0.2 is 20%
    lower, negative a rise) and tokens_by_kind[split][kind] (the same rows for every arm)."""
    by_kind = {arm: {split: result["perplexity"] for split, result in splits.items()}
               for arm, splits in evaluation.items()}
    base, finetuned = by_kind["base"], by_kind["finetuned"]
    drops = {split: {kind: _drop(base[split][kind], finetuned[split][kind]) for kind in base[split]}
             for split in base}
    return {"perplexity": {arm: {split: values["all"] for split, values in splits.items()}
                           for arm, splits in by_kind.items()},
            "medical_perplexity_change": -drops["medical"]["all"],
            "perplexity_by_kind": by_kind, "perplexity_drop_by_kind": drops,
            "tokens_by_kind": {split: result["tokens"] for split, result in evaluation["base"].items()}}


def _drop(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else 1.0 - after / before


def changed_by(drop: float, what: str) -> str:
    """"lowered <what> by 5.0%" for a drop of 0.05, "raised <what> by 50.0%" for -0.5 (never "lowered by -50%")."""
    return f"{'lowered' if drop >= 0 else 'raised'} {what} by {100 * abs(drop):.1f}%"


def quality_floor(perplexity: dict[str, dict[str, float]], saes: dict[str, dict[str, Any]],
                  drops_by_kind: dict[str, dict[str, float | None]] | None = None) -> dict[str, Any]:
    """The floor a demo build must reach (issues 13 and 22); every miss is named, never hidden. With
    `drops_by_kind` (perplexity_report's), the fine-tune must also be about its domain on text tokens."""
    drop = 1.0 - perplexity["finetuned"]["medical"] / perplexity["base"]["medical"]
    misses = []
    if drop < FLOOR["medical_perplexity_drop"]:
        misses.append(f"fine-tune {changed_by(drop, 'held-out medical perplexity')} "
                      f"(< {100 * FLOOR['medical_perplexity_drop']:.0f}% lower)")
    text = {} if drops_by_kind is None else {split: drops_by_kind[split]["text"] for split in EVAL_SPLITS}
    if text and not _domain_specific(text["medical"], text["general"]):
        misses.append(f"on text tokens the fine-tune {changed_by(text['medical'], 'medical perplexity')} and "
                      f"{changed_by(text['general'], 'general')}: the medical drop is not "
                      f"{FLOOR['text_drop_ratio']:g}x the general drop")
    misses += sae_floor_misses(saes)
    return {**FLOOR, "medical_perplexity_drop_measured": drop, **({"text_drops_measured": text} if text else {}),
            "met": not misses, "misses": misses}


def sae_floor_misses(saes: dict[str, dict[str, Any]]) -> list[str]:
    """The SAE part of the floor: each SAE's explained variance and dead share, every miss named."""
    misses = []
    for arm, sae in saes.items():
        if sae["explained_variance"] < FLOOR["explained_variance"]:
            misses.append(f"SAE {arm} explains {100 * sae['explained_variance']:.1f}% of variance "
                          f"(< {100 * FLOOR['explained_variance']:.0f}%)")
        if sae["dead_fraction"] > FLOOR["dead_fraction"]:
            misses.append(f"SAE {arm} has {100 * sae['dead_fraction']:.1f}% dead features "
                          f"(> {100 * FLOOR['dead_fraction']:.0f}%)")
    return misses


def _domain_specific(medical: float | None, general: float | None) -> bool:
    """Medical text-token perplexity fell, by at least text_drop_ratio times general's drop (any general rise)."""
    if medical is None or general is None:
        return False
    return medical > 0 and medical >= FLOOR["text_drop_ratio"] * general


def train_and_save_sae(model_dir: Path | str, sae_dir: Path, rows: dict[str, torch.Tensor], recipe: DemoRecipe,
                       seed: int, device: str, arm: str, model_name: str, init_dir: Path | None = None,
                       tokens: int | None = None) -> dict[str, Any]:
    """Load the saved model as the study will (transformers → processed HookedTransformer), train the SAE
    (`model_name` goes into its metadata; from the SAE saved in `init_dir` when given, for `tokens`), save it,
    reload it with SAE.load_from_disk and report its quality on held-out text of both domains."""
    from sae_lens import SAE

    hf_model, tokenizer = load_hf_model(str(model_dir), arm)  # a folder, a hub name or a GGUF file
    model = hooked_transformer_from_hf(hf_model, tokenizer, processing_from_kwargs(TRAINING_PROCESSING), device)
    torch.manual_seed(seed)
    init = None if init_dir is None else SAE.load_from_disk(str(init_dir), device=device)
    sae = train_sae(model, rows["sae"], recipe, seed, device, model_name=model_name, init=init, tokens=tokens)
    sae.save_inference_model(str(sae_dir))  # TopK as TopK, BatchTopK as JumpReLU (its threshold)
    reloaded = SAE.load_from_disk(str(sae_dir), device=device)
    heldout = torch.cat([rows["eval_general"], rows["eval_medical"]])
    stats = reconstruction_stats(reloaded, hook_activations(model, heldout, recipe.hook_name))
    return {"hook_name": reloaded.cfg.metadata.hook_name, "d_in": int(reloaded.cfg.d_in),
            "d_sae": int(reloaded.cfg.d_sae), "architecture": reloaded.cfg.architecture(),
            **({"k": recipe.sae_k} if recipe.sae_architecture != "standard" else {}),
            "trained_tokens": tokens or recipe.sae_tokens,
            **({"initialised_from": init_dir.name} if init_dir is not None else {}), **dataclasses.asdict(stats)}


def build_vocabulary(data: TextData, path: Path) -> dict[str, Any]:
    build = vocab.build_medical_vocabulary(
        vocab.mesh_single_words(),
        vocab.word_counts(data.medical.train + data.medical.heldout),
        vocab.word_counts(data.general.train + data.general.heldout),
        include=vocab.load_word_list(vocab.MEDICAL_INCLUDE_PATH),
        exclude=vocab.load_word_list(vocab.MEDICAL_EXCLUDE_PATH),
    )
    vocab.write_medical_vocabulary(build, path)
    return {"words": len(build.words), "candidates": build.candidate_count,
            "min_log2_ratio": build.min_log2_ratio, "min_medical_count": build.min_medical_count}


def warm_embeddings(config: StudyConfig) -> dict[str, Any]:
    """Load the study's embeddings once so the cache exists before the precompute needs it."""
    from core.embeddings import load_embeddings

    kv = load_embeddings(config.embeddings.source, Path(config.embeddings.cache_dir))
    return {"source": config.embeddings.source, "words": len(kv.index_to_key), "dim": int(kv.vector_size)}


def machine() -> dict[str, Any]:
    """Where the timings were measured: CPU model and the threads torch used."""
    import platform

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"model": name, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}


def package_versions() -> dict[str, str]:
    names = ("torch", "transformers", "tokenizers", "sae-lens", "transformer-lens", "gensim")
    return {name: importlib.metadata.version(name) for name in names}
