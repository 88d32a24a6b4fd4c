"""SAE reconstruction quality over a set of activations: L0, explained variance, MSE, dead features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from core.loading import stop_layer_for


@dataclass(frozen=True)
class ReconstructionStats:
    n_tokens: int
    l0: float  # mean number of active features per token
    explained_variance: float  # 1 - Σ‖x - x̂‖² / Σ‖x - mean(x)‖², over all tokens
    mse: float  # mean over tokens and dimensions of (x - x̂)²
    dead_fraction: float  # features that never fired on these tokens


@torch.no_grad()
def hook_activations(model: Any, rows: torch.Tensor, hook_name: str, batch_size: int = 32,
                     skip_bos: bool = True) -> torch.Tensor:
    """Activations `[n_tokens, d_in]` at `hook_name` for token rows `[n, ctx]`.

    The BOS position is skipped by default: its norm is an outlier (tens of times the others) that would
    dominate variance-based metrics."""
    out: list[torch.Tensor] = []
    stop = stop_layer_for(hook_name)
    for start in range(0, rows.shape[0], batch_size):
        batch = rows[start:start + batch_size].to(model.cfg.device)
        _, cache = model.run_with_cache(batch, names_filter=[hook_name], stop_at_layer=stop)
        acts = cache[hook_name][:, 1:] if skip_bos else cache[hook_name]
        out.append(acts.reshape(-1, acts.shape[-1]).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def reconstruction_stats(sae: Any, activations: torch.Tensor, batch_size: int = 4096) -> ReconstructionStats:
    """Quality of `sae` on `activations` [n_tokens, d_in] (raw: SAELens folds normalisation into the weights)."""
    device = sae.W_dec.device
    mean = activations.mean(0).to(device)
    sq_err = total_var = active = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=device)
    for start in range(0, activations.shape[0], batch_size):
        x = activations[start:start + batch_size].to(device)
        feature_acts = sae.encode(x)
        x_hat = sae.decode(feature_acts)
        sq_err += (x - x_hat).pow(2).sum().item()
        total_var += (x - mean).pow(2).sum().item()
        active += (feature_acts > 0).sum().item()
        fired |= (feature_acts > 0).any(0)
    n = activations.shape[0]
    return ReconstructionStats(
        n_tokens=n,
        l0=active / n,
        explained_variance=1.0 - sq_err / total_var,
        mse=sq_err / (n * activations.shape[1]),
        dead_fraction=1.0 - fired.float().mean().item(),
    )
