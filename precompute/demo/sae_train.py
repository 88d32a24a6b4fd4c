"""Train a demo arm's SAE with SAELens's own training runner, on the model loaded the way the study loads it.

Three kinds (DemoRecipe.sae_architecture): "batchtopk" (the default) and "topk" set the number of active features k
and revive dead features with SAELens's auxiliary loss (top-k of the dead latents reconstruct the residual), so
nothing needs tuning per model; "standard" is the L1-penalised ReLU SAE, whose coefficient does (issue 26: the
coefficient tuned for one model left 43-47% of another's features dead). SAELens saves a BatchTopK SAE for
inference as a JumpReLU SAE (its learned global threshold in every feature) and a TopK SAE as a TopK SAE."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from core.config import DemoRecipe

logger = logging.getLogger(__name__)

# Recorded in the SAE's metadata, so core.loading processes the model exactly as during training; the same
# flags gpt2-small-res-jb carries (HookedTransformer defaults with centred writing weights).
TRAINING_PROCESSING = {"center_writing_weights": True}
from core.config import SAE_ARCHITECTURES  # noqa: E402,F401  (re-exported)


def training_config(recipe: DemoRecipe, d_in: int, n_steps: int, continued: bool, device: str) -> Any:
    """The SAELens training-SAE config of the recipe's kind. Standard: the L1 penalty warms up over the first
    steps (without it 20-40% of features die), except when training goes on from a trained SAE, whose features
    already exist. TopK / BatchTopK: k active features, on whitened activations when recipe.sae_whitening (a random
    init only); BatchTopK's global threshold (an average of each batch's smallest kept activation) moves fast
    enough to settle within a short run."""
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAEConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    # Whitening only from a random init: going on from a saved SAE undoes a scalar normalisation exactly
    # (unfolded_training_sae), a whitening estimated anew by the trainer it could not.
    whiten = recipe.sae_whitening and not continued and recipe.sae_architecture != "standard"
    common = dict(d_in=d_in, d_sae=recipe.d_sae, device=device,
                  normalize_activations="covariance_whitening" if whiten else "expected_average_only_in")
    if recipe.sae_architecture == "standard":
        return StandardTrainingSAEConfig(
            l1_coefficient=recipe.sae_l1_coefficient,
            l1_warm_up_steps=0 if continued else int(recipe.sae_l1_warm_up_share * n_steps), **common)
    if recipe.sae_architecture == "topk":
        return TopKTrainingSAEConfig(k=recipe.sae_k, **common)
    return BatchTopKTrainingSAEConfig(k=float(recipe.sae_k), topk_threshold_lr=max(0.01, min(0.1, 20 / n_steps)),
                                      **common)


def train_sae(model: Any, rows: torch.Tensor, recipe: DemoRecipe, seed: int, device: str, model_name: str,
              init: Any = None, tokens: int | None = None) -> Any:
    """An SAE of recipe.sae_architecture at `recipe.hook_name`, trained on `rows` [n, ctx] of token ids through
    `model` (a HookedTransformer) for `tokens` (default recipe.sae_tokens).

    `init`: a trained SAE of the same kind (SAELens, normalisation folded in, as saved) to go on training instead
    of a random init (`unfolded_training_sae`)."""
    import datasets
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig

    context_size = rows.shape[1]
    tokens = tokens or recipe.sae_tokens
    n_steps = tokens // recipe.sae_batch_tokens
    # The buffer holds n_batches_in_buffer x store_batch_size_prompts rows and must cover several SAE batches.
    n_batches_in_buffer = max(8, 4 * recipe.sae_batch_tokens // (context_size * 32))
    with tempfile.TemporaryDirectory() as scratch:
        cfg = LanguageModelSAERunnerConfig(
            sae=training_config(recipe, model.cfg.d_model, n_steps, init is not None, device),
            model_name=model_name,
            model_class_name="HookedTransformer",
            hook_name=recipe.hook_name,
            dataset_path="in-memory",
            is_dataset_tokenized=True,
            streaming=False,
            context_size=context_size,
            prepend_bos=True,
            exclude_special_tokens=recipe.sae_exclude_special_tokens,
            training_tokens=tokens,
            train_batch_size_tokens=recipe.sae_batch_tokens,
            n_batches_in_buffer=n_batches_in_buffer,
            store_batch_size_prompts=32,
            n_batches_for_norm_estimate=10,
            lr=recipe.sae_lr,
            lr_warm_up_steps=max(1, n_steps // 20),
            lr_decay_steps=int(recipe.sae_lr_decay_share * n_steps),
            # A feature that fired on none of the last sae_dead_window_tokens is dead: the TopK auxiliary loss
            # trains it on the residual (SAELens's 1,000-step default is longer than a demo's whole run).
            dead_feature_window=max(1, recipe.sae_dead_window_tokens // recipe.sae_batch_tokens),
            model_from_pretrained_kwargs=dict(TRAINING_PROCESSING),
            device=device,
            seed=seed,
            logger=LoggingConfig(log_to_wandb=False),
            n_checkpoints=0,
            checkpoint_path=str(Path(scratch) / "checkpoints"),
            output_path=str(Path(scratch) / "output"),
            verbose=False,
        )
        dataset = datasets.Dataset.from_dict({"input_ids": rows.tolist()})
        start = None if init is None else unfolded_training_sae(init, cfg.sae, model, rows, recipe.hook_name)
        runner = LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=model,
                                                override_sae=start)
        sae = runner.run()
    return sae


@torch.no_grad()
def unfolded_training_sae(init: Any, sae_cfg: Any, model: Any, rows: torch.Tensor, hook_name: str) -> Any:
    """A training SAE (`sae_cfg`, normalising its input to norm √d_in) holding `init`'s weights, unfolded so that
    on normalised input it is the same function `init` is on raw input.

    SAELens trains on x·c (c = √d_in / mean ‖x‖, estimated at the start of training) and, at the end, folds c into
    the weights (W_enc·c, W_dec/c, b_dec/c). Going on from a saved SAE undoes that fold with c measured here, on this
    model's activations, the way the trainer measures it: the pre-activation (cx − c·b_dec)(W_enc/c) + b_enc is
    init's, and the reconstruction is c times init's. A TopK / BatchTopK SAE keeps W_enc and W_dec as saved (W_enc
    divided by c, its entries fell below one Adam step and a continued SAE lost a third of its explained variance
    in 32 steps): with b_enc·c and b_dec·c its pre-activations and activations are c times init's (scaled by ‖W_dec‖
    only where the saved rows are unit vectors, where that changes nothing), its reconstruction c times init's, and
    BatchTopK's threshold (JumpReLU's, once saved) is c times the saved one. The trainer's own estimate differs from
    this c by the sampling of its first batches only (a fraction of a percent), which training absorbs."""
    from sae_lens.registry import get_sae_training_class

    from core.sae_metrics import hook_activations

    sample = hook_activations(model, rows[: min(len(rows), 64)], hook_name)
    c = float(sae_cfg.d_in) ** 0.5 / float(sample.norm(dim=-1).mean())
    if sae_cfg.architecture() in ("topk", "batchtopk"):
        # Decoder rows saved as unit vectors (a TopK SAE trained unwhitened) may go on scaling pre-activations by
        # ‖W_dec‖; rows a whitening fold stretched may not, or the same features would no longer be the top k.
        norms = init.W_dec.detach().float().norm(dim=-1)
        sae_cfg.rescale_acts_by_decoder_norm = bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-3))
    sae = get_sae_training_class(sae_cfg.architecture())[0](sae_cfg)
    state = {name: value.detach().clone().float() for name, value in init.state_dict().items()}
    threshold = state.pop("threshold", None)
    if sae_cfg.architecture() == "batchtopk":
        if threshold is None:
            raise ValueError("a BatchTopK SAE goes on from a saved BatchTopK (JumpReLU) SAE, not from "
                             f"{init.cfg.architecture()}")
        state["topk_threshold"] = (threshold.mean() * c).double()
    if sae_cfg.architecture() in ("topk", "batchtopk"):  # W_enc and W_dec as saved: see the docstring
        state["b_enc"] *= c
    else:
        state["W_enc"] /= c
        state["W_dec"] *= c
    state["b_dec"] *= c
    sae.load_state_dict(state)
    logger.info("SAE training goes on from a trained SAE (unfolded with c = %.4f)", c)
    return sae
