"""Train a demo arm's SAE with SAELens's own training runner, on the model loaded the way the study loads it."""

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


def train_sae(model: Any, rows: torch.Tensor, recipe: DemoRecipe, seed: int, device: str, model_name: str,
              init: Any = None, tokens: int | None = None) -> Any:
    """A StandardSAE at `recipe.hook_name`, trained on `rows` [n, ctx] of token ids through `model` (a
    HookedTransformer) for `tokens` (default recipe.sae_tokens). The L1 penalty warms up over the first steps
    (without it 20-40% of features die).

    `init`: a trained SAE (SAELens, normalisation folded in, as saved) to go on training instead of a random
    init; it has no L1 warm-up, since its features already exist (`unfolded_training_sae`)."""
    import datasets
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAEConfig

    context_size = rows.shape[1]
    tokens = tokens or recipe.sae_tokens
    n_steps = tokens // recipe.sae_batch_tokens
    # The buffer holds n_batches_in_buffer x store_batch_size_prompts rows and must cover several SAE batches.
    n_batches_in_buffer = max(8, 4 * recipe.sae_batch_tokens // (context_size * 32))
    with tempfile.TemporaryDirectory() as scratch:
        cfg = LanguageModelSAERunnerConfig(
            sae=StandardTrainingSAEConfig(
                d_in=model.cfg.d_model,
                d_sae=recipe.d_sae,
                l1_coefficient=recipe.sae_l1_coefficient,
                l1_warm_up_steps=0 if init is not None else int(recipe.sae_l1_warm_up_share * n_steps),
                normalize_activations="expected_average_only_in",
                device=device,
            ),
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
    model's activations, the way the trainer measures it: f = ReLU((cx − c·b_dec)(W_enc/c) + b_enc) is init's f,
    and its reconstruction is c times init's. The trainer's own estimate differs from this c by the sampling of
    its first batches only (a fraction of a percent), which training absorbs."""
    from sae_lens.saes.standard_sae import StandardTrainingSAE

    from core.sae_metrics import hook_activations

    sample = hook_activations(model, rows[: min(len(rows), 64)], hook_name)
    c = float(sae_cfg.d_in) ** 0.5 / float(sample.norm(dim=-1).mean())
    sae = StandardTrainingSAE(sae_cfg)
    state = {name: value.detach().clone().float() for name, value in init.state_dict().items()}
    state["W_enc"] /= c
    state["W_dec"] *= c
    state["b_dec"] *= c
    sae.load_state_dict(state)
    logger.info("SAE training goes on from a trained SAE (unfolded with c = %.4f)", c)
    return sae
