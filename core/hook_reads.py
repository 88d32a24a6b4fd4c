"""Reading a model at an SAE's hook: the one place that runs a model to a hook, drops BOS and encodes, and the
one loop that measures next-token loss clean, with a hook spliced in, and with the hook zero-ablated.

Every token row starts with BOS; its activation is an outlier tens of times the others' norm, so no stage
reads or reconstructs it (SAELens's `ignore_tokens=[bos]` on rows that hold BOS only at position 0).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

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
def features_at_hook(model: Any, sae: Any, hook_name: str, batch: Tensor) -> Tensor:
    """SAE feature activations [B, T - 1, d_sae] of `sae` at `hook_name` for token rows [B, T], BOS left out,
    on the SAE's device."""
    return sae.encode(activations_at_hook(model, hook_name, batch).to(sae.W_dec.device))


@torch.no_grad()
def logits_and_features(model: Any, sae: Any, hook_name: str, batch: Tensor) -> tuple[Tensor, Tensor]:
    """The whole forward pass: logits [B, T, d_vocab] for token rows [B, T] (BOS first), and `sae`'s feature
    activations [B, T - 1, d_sae] at `hook_name`, BOS left out, on the SAE's device."""
    logits, cache = model.run_with_cache(batch.to(model.cfg.device), names_filter=[hook_name])
    return logits, sae.encode(cache[hook_name][:, 1:].to(sae.W_dec.device))


@dataclass(frozen=True)
class HookLosses:
    """Mean next-token cross-entropy (nats per predicted token) over token rows."""

    clean: float
    spliced: float  # with the splice hook at the hook point
    zero_ablation: float  # with the hook point's activations set to zero


def _zero_ablate(act: Tensor, hook: Any) -> Tensor:
    return torch.zeros_like(act)


@torch.no_grad()
def hook_losses(model: Any, hook_name: str, rows: Tensor, batch_size: int, splice_for: Callable[[int, int], Hook],
                progress: Callable[[Iterable], Iterable] = lambda it: it) -> HookLosses:
    """CE loss clean, spliced and zero-ablated over token rows [n, T]; `splice_for(start, stop)` gives the
    hook for rows start:stop (so a hook can carry per-row state, such as which positions it replaces)."""
    sums = hook_loss_sums(model, hook_name, rows, batch_size, splice_for, progress)
    n_predicted = rows.shape[0] * (rows.shape[1] - 1)
    return HookLosses(sums["clean"] / n_predicted, sums["spliced"] / n_predicted, sums["zero"] / n_predicted)


@torch.no_grad()
def hook_loss_sums(model: Any, hook_name: str, rows: Tensor, batch_size: int, splice_for: Callable[[int, int], Hook],
                   progress: Callable[[Iterable], Iterable] = lambda it: it) -> dict[str, float]:
    """Summed CE loss (nats) "clean", "spliced", "zero" over the n × (T - 1) predicted tokens of rows [n, T]: sums,
    so that shards of the rows add up."""
    sums = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    for start in progress(range(0, rows.shape[0], batch_size)):
        batch = rows[start:start + batch_size].to(model.cfg.device)
        sums["clean"] += model(batch, return_type="loss", loss_per_token=True).sum().item()
        splice = splice_for(start, start + batch.shape[0])
        for name, hook in (("spliced", splice), ("zero", _zero_ablate)):
            loss = model.run_with_hooks(batch, return_type="loss", loss_per_token=True, fwd_hooks=[(hook_name, hook)])
            sums[name] += loss.sum().item()
    return sums
