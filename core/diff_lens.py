"""The activation difference lens (ADL; diffing-toolkit's `activation_difference_lens`, *Narrow finetuning leaves
clearly readable traces in activation differences*): the mean of (b − a) residual activations of two models on the
same rows, over the first k positions after BOS ("first") and over every position but BOS ("all"), at the SAE's
hook and at later layers, read through each model's unembedding (logit lens) and against SAE decoder directions.

Sites: the SAE's hook, then `blocks.L.hook_resid_post` for each L of `diff.lens_layers` (by default the block at
3/4 depth and the last block), in depth order; a site that is the SAE's hook under another name
(`blocks.L.hook_resid_post` is `blocks.{L+1}.hook_resid_pre`) is read once.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from core.errors import StudyInputError
from core.running_top import np_array

KINDS = ("first", "all")  # the first k positions after BOS; every position but BOS


def default_lens_layers(n_layers: int) -> tuple[int, ...]:
    """The block at 3/4 depth (the residual after ⌈3n/4⌉ blocks) and the last block."""
    return tuple(sorted({math.ceil(3 * n_layers / 4) - 1, n_layers - 1}))


def lens_sites(hook_name: str, n_layers: int, lens_layers: tuple[int, ...] = ()) -> tuple[str, ...]:
    """The hook names the lens reads: the SAE's hook first, then `blocks.L.hook_resid_post` per layer, by depth."""
    layers = lens_layers or default_lens_layers(n_layers)
    wrong = [layer for layer in layers if not 0 <= layer < n_layers]
    if wrong:
        raise StudyInputError(f"diff.lens_layers: {wrong} are not blocks of a model of {n_layers} layers "
                              f"(0 to {n_layers - 1}); each L reads blocks.L.hook_resid_post")
    same = _resid_pre_layer(hook_name)
    posts = sorted({layer for layer in layers if same is None or layer + 1 != same})
    return (hook_name, *(f"blocks.{layer}.hook_resid_post" for layer in posts))


def site_layer(hook_name: str) -> int | None:
    """L of a `blocks.L.*` hook name."""
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) if match else None


def _resid_pre_layer(hook_name: str) -> int | None:
    match = re.fullmatch(r"blocks\.(\d+)\.hook_resid_pre", hook_name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class LensMean:
    """One site and kind: the mean of (b − a) over n_positions positions of every row, [d_model] float64, and the
    mean activation norm of each model there (what a steering slider along the vector is scaled to)."""

    site: str
    kind: str
    n_positions: int  # positions per row
    n_tokens: int  # positions averaged over all rows
    vector: np.ndarray
    norm_a: float
    norm_b: float

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.vector))


class DiffLensAccumulator:
    """Float64 sums of (b − a) and of both models' activation norms per site and kind, mergeable over shards."""

    def __init__(self, sites: tuple[str, ...], d_model: int, k: int, device: str | torch.device = "cpu") -> None:
        self.sites, self.d_model, self.k, self.device = tuple(sites), d_model, k, torch.device(device)
        shape = (len(KINDS), len(self.sites))
        self.sum_diff = torch.zeros(*shape, d_model, dtype=torch.float64, device=self.device)
        self.sum_norm_a = torch.zeros(shape, dtype=torch.float64, device=self.device)
        self.sum_norm_b = torch.zeros(shape, dtype=torch.float64, device=self.device)
        self.n_tokens = [0, 0]  # per kind
        self.n_positions: int | None = None

    @torch.no_grad()
    def update(self, acts_a: dict[str, Tensor], acts_b: dict[str, Tensor]) -> None:
        """Activations [B, T, d_model] at every site (BOS left out) of model a and model b on the same rows."""
        length = acts_a[self.sites[0]].shape[1]
        if self.k > length:
            raise StudyInputError(f"diff.lens_positions is {self.k} but the rows hold {length} tokens after BOS; "
                                  f"set it to at most {length}")
        self.n_positions = length
        for j, site in enumerate(self.sites):
            a, b = acts_a[site].to(self.device).float(), acts_b[site].to(self.device).float()
            diff = b.double() - a.double()  # exact: float32 values differ by a float64 without rounding
            for i, span in enumerate((slice(0, self.k), slice(None))):
                self.sum_diff[i, j] += diff[:, span].sum((0, 1))
                self.sum_norm_a[i, j] += a[:, span].norm(dim=-1).sum(dtype=torch.float64)
                self.sum_norm_b[i, j] += b[:, span].norm(dim=-1).sum(dtype=torch.float64)
        n_rows = acts_a[self.sites[0]].shape[0]
        self.n_tokens[0] += n_rows * self.k
        self.n_tokens[1] += n_rows * length

    def merge(self, other: DiffLensAccumulator) -> DiffLensAccumulator:
        if (other.sites, other.d_model, other.k) != (self.sites, self.d_model, self.k):
            raise ValueError("merging difference-lens accumulators of different sites, widths or k")
        if None not in (self.n_positions, other.n_positions) and self.n_positions != other.n_positions:
            raise ValueError(f"merging rows of {other.n_positions} positions into rows of {self.n_positions}")
        self.n_positions = self.n_positions or other.n_positions
        other.to(self.device)
        for name in ("sum_diff", "sum_norm_a", "sum_norm_b"):
            getattr(self, name).add_(getattr(other, name))
        self.n_tokens = [mine + theirs for mine, theirs in zip(self.n_tokens, other.n_tokens)]
        return self

    def to(self, device: str | torch.device) -> DiffLensAccumulator:
        self.device = torch.device(device)
        for name in ("sum_diff", "sum_norm_a", "sum_norm_b"):
            setattr(self, name, getattr(self, name).to(self.device))
        return self

    def result(self) -> list[LensMean]:
        """One LensMean per site and kind, site by site (first, then all)."""
        means = []
        for j, site in enumerate(self.sites):
            for i, kind in enumerate(KINDS):
                n = max(self.n_tokens[i], 1)
                means.append(LensMean(site, kind, self.k if i == 0 else (self.n_positions or 0), self.n_tokens[i],
                                      np_array(self.sum_diff[i, j]) / n, float(self.sum_norm_a[i, j]) / n,
                                      float(self.sum_norm_b[i, j]) / n))
        return means


def direction_logits(model, vectors: Tensor) -> Tensor:
    """The logit lens of directions [n, d_model] of the final residual: [n, d_vocab].

    The final norm divides by a positive scale (which moves no token's rank) and, for a LayerNorm, removes the
    mean over d_model first: the vectors are centred. Models loaded with TransformerLens's `fold_ln` (as this
    project loads them: core.loading) hold the norm's weight inside W_U (ln_final is LNPre / RMSNormPre); an
    unfolded norm's weight `w` is applied here. The norm's bias and b_U add the same logits whatever the direction,
    so a difference of residuals leaves them out."""
    x = vectors.to(model.W_U.device, torch.float32)
    if str(getattr(model.cfg, "normalization_type", "") or "").startswith("LN"):
        x = x - x.mean(-1, keepdim=True)
    weight = getattr(getattr(model, "ln_final", None), "w", None)
    if weight is not None:
        x = x * weight.float()
    return x @ model.W_U.float()


def ranked_tokens(logits: Tensor, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-k and bottom-k token ids and values of logits [d_vocab]: by value (descending / ascending), equal values
    by token id ascending. Returns top_ids, top_values, bottom_ids, bottom_values."""
    k = min(k, logits.shape[-1])
    top = torch.sort(-logits, stable=True).indices[:k]
    bottom = torch.sort(logits, stable=True).indices[:k]
    return np_array(top), np_array(logits[top]), np_array(bottom), np_array(logits[bottom])


def random_directions(d_model: int, n: int, norm: float, seed: int) -> Tensor:
    """n directions [n, d_model] drawn uniformly on the sphere of radius `norm` (seeded: the same every run)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_model, generator=generator, dtype=torch.float64)
    return (x / x.norm(dim=1, keepdim=True) * norm).float()


def medical_top_counts(model, vectors: Tensor, medical_token: Tensor, k: int) -> list[int]:
    """Medical tokens among the top k of each direction's logit lens (vectors [n, d_model]); medical_token:
    [d_vocab] bool (core.token_text.medical_token_mask)."""
    logits = direction_logits(model, vectors)
    top = torch.stack([torch.sort(-row, stable=True).indices[:k] for row in logits])
    return medical_token.to(top.device)[top].sum(1).tolist()


def aligned_features(vector: Tensor, W_dec: Tensor, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features whose decoder rows W_dec [d_sae, d_model] have the largest and the most negative cosine with
    `vector` [d_model]: top_ids, top_cos, bottom_ids, bottom_cos (ties by feature id)."""
    W = W_dec.detach().float()
    v = vector.to(W.device, torch.float32)
    cos = (W @ v) / (W.norm(dim=1).clamp_min(1e-12) * v.norm().clamp_min(1e-12))
    return ranked_tokens(cos, k)
