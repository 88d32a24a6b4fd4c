"""Reading a model at an SAE's hook: the one place that runs a model to a hook, drops BOS and encodes, and the
one loop that measures next-token loss clean, with a hook spliced in, and with the hook zero-ablated.

Every token row starts with BOS; its activation is an outlier tens of times the others' norm, so no stage
reads or reconstructs it (SAELens's `ignore_tokens=[bos]` on rows that hold BOS only at position 0).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from core.chunked_logits import log_softmax_at, unembed_chunks
from core.loading import stop_layer_for

Hook = Callable[[Tensor, Any], Tensor]  # TransformerLens's fn(activation, hook) -> activation


def run_capturing(model: Any, tokens: Tensor, names: Sequence[str], **forward_kwargs: Any) -> tuple[Any, dict[str, Tensor]]:
    """model(tokens, **forward_kwargs) and the activations at the hook points `names`, by name. Plain torch
    forward hooks on those HookPoints, removed after: TransformerLens's run_with_cache also resets the hooks of
    every hook point, which on the demo cost about a millisecond a pass (Inspect's budget is 1.5 bare passes)."""
    captured: dict[str, Tensor] = {}
    handles = [model.hook_dict[name].register_forward_hook(
        lambda module, args, output, name=name: captured.__setitem__(name, output)) for name in names]
    try:
        return model(tokens, **forward_kwargs), captured
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def activations_at_hook(model: Any, hook_name: str, batch: Tensor) -> Tensor:
    """Activations [B, T - 1, d_in] at `hook_name` for token rows [B, T] (BOS first, left out), on the model's
    device; the forward pass stops after the hook's block."""
    _, cache = model.run_with_cache(batch.to(model.cfg.device), names_filter=[hook_name],
                                    stop_at_layer=stop_layer_for(hook_name))
    return cache[hook_name][:, 1:]


@torch.no_grad()
def activations_at_hooks(model: Any, hook_names: Sequence[str], batch: Tensor) -> dict[str, Tensor]:
    """Activations [B, T - 1, d] at each of `hook_names` for token rows [B, T] (BOS first, left out), by name, on
    the model's device: one forward pass that stops after the deepest hook's block (never the unembedding).
    `blocks.L.hook_resid_pre` (L >= 1) is read as `blocks.{L-1}.hook_resid_post`, the same tensor, so that block L
    itself is not run for it."""
    read = {name: _same_before_block(name) for name in hook_names}
    stops = [stop_layer_for(name) for name in read.values()]
    stop = None if None in stops else max(stops)
    _, captured = run_capturing(model, batch.to(model.cfg.device), sorted(set(read.values())), stop_at_layer=stop)
    return {name: captured[read[name]][:, 1:] for name in hook_names}


def _same_before_block(hook_name: str) -> str:
    layer = resume_layer(hook_name)
    return f"blocks.{layer - 1}.hook_resid_post" if layer else hook_name


@torch.no_grad()
def features_at_hook(model: Any, sae: Any, hook_name: str, batch: Tensor) -> Tensor:
    """SAE feature activations [B, T - 1, d_sae] of `sae` at `hook_name` for token rows [B, T], BOS left out,
    on the SAE's device."""
    return sae.encode(activations_at_hook(model, hook_name, batch).to(sae.W_dec.device))


def final_residual(model: Any, input: Tensor, **forward_kwargs: Any) -> Tensor:
    """The normalised final residual [B, T, d_model] (what the unembedding reads) of `model(input, **forward_kwargs)`:
    every block, ln_final, and no logits (core.chunked_logits reads them a slice of the vocabulary at a time)."""
    residual = model(input, stop_at_layer=model.cfg.n_layers, **forward_kwargs)
    return model.ln_final(residual) if model.cfg.normalization_type is not None else residual


@torch.no_grad()
def residual_and_features(model: Any, sae: Any, hook_name: str, batch: Tensor) -> tuple[Tensor, Tensor]:
    """The whole forward pass but the unembedding: the normalised final residual [B, T, d_model] for token rows
    [B, T] (BOS first), and `sae`'s feature activations [B, T - 1, d_sae] at `hook_name`, BOS left out, on the
    SAE's device."""
    residual, captured = run_capturing(model, batch.to(model.cfg.device), [hook_name], stop_at_layer=model.cfg.n_layers)
    if model.cfg.normalization_type is not None:
        residual = model.ln_final(residual)
    return residual, sae.encode(captured[hook_name][:, 1:].to(sae.W_dec.device))


def next_token_loss_sum(model: Any, residual: Tensor, tokens: Tensor) -> float:
    """Summed next-token cross-entropy (nats) over the B × (T - 1) predicted tokens, from the normalised final
    residual [B, T, d_model] of token rows [B, T]: what `return_type="loss"` sums, in vocabulary chunks."""
    flat = residual[:, :-1].reshape(-1, residual.shape[-1])
    return -log_softmax_at(unembed_chunks(model, flat), tokens[:, 1:].reshape(-1)).sum().item()


@dataclass(frozen=True)
class HookLosses:
    """Mean next-token cross-entropy (nats per predicted token) over token rows."""

    clean: float
    spliced: float  # with the splice hook at the hook point
    zero_ablation: float  # with the hook point's activations set to zero


def _zero_ablate(act: Tensor, hook: Any) -> Tensor:
    return torch.zeros_like(act)


@torch.no_grad()
def hook_loss_sums(model: Any, hook_name: str, rows: Tensor, batch_size: int, splice_for: Callable[[int, int], Hook],
                   progress: Callable[[Iterable], Iterable] = lambda it: it) -> dict[str, float]:
    """Summed CE loss (nats) "clean", "spliced", "zero" over the n × (T - 1) predicted tokens of rows [n, T]: sums,
    so that shards of the rows add up."""
    return hook_loss_sums_each(model, hook_name, rows, batch_size,
                               lambda start, stop: {"spliced": splice_for(start, stop)}, progress)


def resume_layer(hook_name: str) -> int | None:
    """L for `blocks.L.hook_resid_pre`: the whole residual stream enters block L there, so a pass can start at
    block L from a replaced activation. None for hooks inside a block (its other branch is not in the activation)."""
    match = re.fullmatch(r"blocks\.(\d+)\.hook_resid_pre", hook_name)
    return int(match.group(1)) if match else None


@torch.no_grad()
def hook_loss_sums_each(model: Any, hook_name: str, rows: Tensor, batch_size: int,
                        splices_for: Callable[[int, int], dict[str, Hook]],
                        progress: Callable[[Iterable], Iterable] = lambda it: it) -> dict[str, float]:
    """Summed CE loss (nats) "clean", "zero" (the hook zero-ablated) and one per splice over rows [n, T]:
    `splices_for(start, stop)` gives rows start:stop's hooks by name (several SAEs at one hook share the clean and
    the zero-ablated pass; the transfer stage runs two SAEs on each model). Each hook is called once a batch.

    At `blocks.L.hook_resid_pre` the clean pass keeps the activation there and each replaced pass starts at block L
    (`start_at_layer`) instead of at the embedding: on SmolLM2 at block 10 of 30 a replaced pass costs 2/3 of a
    whole one. It gives the losses of the whole pass with the hook (tested against `run_with_hooks`)."""
    layer = resume_layer(hook_name)
    sums: dict[str, float] = {"clean": 0.0, "zero": 0.0}
    for start in progress(range(0, rows.shape[0], batch_size)):
        batch = rows[start:start + batch_size].to(model.cfg.device)
        hooks = {**splices_for(start, start + batch.shape[0]), "zero": _zero_ablate}
        if layer is None:
            sums["clean"] += next_token_loss_sum(model, final_residual(model, batch), batch)
            losses = {}
            for name, hook in hooks.items():
                with model.hooks(fwd_hooks=[(hook_name, hook)]):
                    losses[name] = next_token_loss_sum(model, final_residual(model, batch), batch)
        else:
            clean, captured = run_capturing(model, batch, [hook_name], stop_at_layer=model.cfg.n_layers)
            if model.cfg.normalization_type is not None:
                clean = model.ln_final(clean)
            sums["clean"] += next_token_loss_sum(model, clean, batch)
            act, point = captured[hook_name], model.hook_dict[hook_name]
            losses = {name: next_token_loss_sum(model, final_residual(model, hook(act.clone(), point),
                                                                      start_at_layer=layer, tokens=batch), batch)
                      for name, hook in hooks.items()}
        for name, loss in losses.items():
            sums[name] = sums.get(name, 0.0) + loss
    return sums
