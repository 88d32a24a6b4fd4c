"""One SAE's features ranked by how their activations change between two models (OpenAI's persona-features
method): the same SAE (arm a's) encodes both models' activations at its hook on the same token rows, BOS left out.

Per feature: the mean activation over every token (zeros included) and the firing rate in each model, the change
of both (b − a), and a paired test whose unit is the row, since tokens of one row are correlated: per row r,
d_r = mean over its tokens of (act_b − act_a); t = mean(d) / (sd(d) / √n_rows) with Student's t on n_rows − 1
degrees of freedom (two-sided), and Benjamini–Hochberg q-values over the live features (fired in either model).
This is the method's noise control: identical models give d_r = 0 in every row, t = 0 and p = q = 1.

Contexts: per feature, the `slots` rows whose d_r is largest (increase) and smallest (decrease), each with a window
around its token of largest (smallest) act_b − act_a, kept by running top sets that merge exactly
(core.running_top). A pair shard is handed token rows without their corpus row ids, so a row is named by a 62-bit
fingerprint of its tokens (`row_fingerprints`); the tie rule between equal d_r goes by the fingerprint, so what is
kept never depends on the sharding, and `locate_rows` turns fingerprints back into rows of the pass."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from core.running_top import Reservoir, np_array, place_key

HASH_MODULUS = 2**31 - 1  # a prime: each of the two 31-bit halves of a fingerprint is a polynomial hash mod it
HASH_BASES = (1_000_003, 998_244_353 % HASH_MODULUS)


def row_fingerprints(rows: Tensor) -> Tensor:
    """int64 [n] per token row [n, T]: two polynomial hashes mod 2³¹ − 1 (different bases) side by side, 62 bits,
    so that two different rows of a corpus share one with probability ~n² / 2⁶³."""
    rows = rows.long()
    halves = []
    for base in HASH_BASES:
        h = torch.zeros(rows.shape[0], dtype=torch.long, device=rows.device)
        for column in rows.T:  # every product stays below 2³¹ × 2³¹: no int64 overflow
            h = (h * base + column + 1) % HASH_MODULUS
        halves.append(h)
    return halves[0] * 2**31 + halves[1]


def locate_rows(fingerprints: np.ndarray, rows: Tensor) -> np.ndarray:
    """Index into `rows` [n, T] of each fingerprint (any shape; -1 stays -1, and so does one not found); rows
    with equal tokens share a fingerprint and give the first of them."""
    known = np_array(row_fingerprints(rows))
    first = {}
    for index, fingerprint in enumerate(known.tolist()):
        first.setdefault(fingerprint, index)
    flat = [first.get(f, -1) if f >= 0 else -1 for f in np.asarray(fingerprints).reshape(-1).tolist()]
    return np.asarray(flat, np.int64).reshape(np.shape(fingerprints))


@dataclass(frozen=True)
class ChangeContexts:
    """Per feature, rows of the largest change in one direction, [d_sae, slots], best first; empty slots have
    fingerprint -1. `pos`: the window's centre (BOS-less position); windows [d_sae, slots, W] in a and in b."""

    row_change: np.ndarray  # float32: d_r of the row (its sign: the direction's)
    fingerprint: np.ndarray  # int64
    pos: np.ndarray  # int64
    acts_a: np.ndarray  # float32, 0 outside the row
    acts_b: np.ndarray


@dataclass(frozen=True)
class FeatureChange:
    """Per feature [d_sae]: activations of arm a's SAE on model a's and model b's activations, over n_tokens
    tokens (BOS left out) of n_rows rows."""

    n_tokens: int
    n_rows: int
    mean_a: np.ndarray  # float64, zeros included
    mean_b: np.ndarray
    n_fired_a: np.ndarray  # int64
    n_fired_b: np.ndarray
    row_change_sd: np.ndarray  # float64: sd of d_r over rows (ddof 1); NaN under 2 rows
    t: np.ndarray  # float64: paired t over rows; 0 where every d_r is 0
    p: np.ndarray  # float64: two-sided
    q: np.ndarray  # float64: Benjamini–Hochberg over live features; NaN for a feature that fired in neither
    increase: ChangeContexts
    decrease: ChangeContexts

    @property
    def change(self) -> np.ndarray:
        return self.mean_b - self.mean_a

    @property
    def frac_a(self) -> np.ndarray:
        return self.n_fired_a / max(self.n_tokens, 1)

    @property
    def frac_b(self) -> np.ndarray:
        return self.n_fired_b / max(self.n_tokens, 1)

    @property
    def live(self) -> np.ndarray:
        return (self.n_fired_a + self.n_fired_b) > 0


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """q-values [m] of p-values [m] (Benjamini–Hochberg 1995): q_(i) = min over j ≥ i of p_(j) · m / j, ≤ 1."""
    p = np.asarray(p, np.float64)
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum.accumulate(scaled[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(q_sorted, 1.0)
    return q


def paired_t(sum_d: np.ndarray, sum_sq_d: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """t, two-sided p and sd of per-row changes from their sums Σd, Σd² over n rows. Every d_r = 0: t = 0, p = 1;
    a constant non-zero d_r (a spread below float64 rounding of Σd², reported as sd 0): t = ±inf, p = 0. Under 2
    rows: t, sd NaN and p = 1."""
    if n < 2:
        nan = np.full(len(sum_d), np.nan)
        return nan, np.ones(len(sum_d)), nan.copy()
    mean = sum_d / n
    var = np.maximum(sum_sq_d - n * mean**2, 0.0) / (n - 1)
    sd = np.sqrt(var)
    # Rounding leaves var ~1e-16 · Σd² when every d_r is equal: below that the spread is none.
    flat = var <= 1e-12 * np.maximum(sum_sq_d / n, np.finfo(float).tiny)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(flat, np.sign(mean) * np.inf, mean / (sd / math.sqrt(n)))
    t = np.where(mean == 0, 0.0, t)
    return t, two_sided_p(t, n - 1), np.where(flat, 0.0, sd)


def two_sided_p(t: np.ndarray, df: int) -> np.ndarray:
    """P(|T| ≥ |t|) for Student's t with df degrees of freedom (scipy), else the normal approximation (erfc)."""
    try:
        from scipy.stats import t as student_t
    except ImportError:  # scipy comes with gensim and umap-learn; the normal tail is close at df ≥ 30
        return np.array([math.erfc(abs(v) / math.sqrt(2.0)) for v in t])
    return 2.0 * student_t.sf(np.abs(t), df)


class FeatureChangeAccumulator:
    """The sums and running top rows of the change pass, mergeable over shards of rows (core.accumulator)."""

    def __init__(self, d_sae: int, slots: int, window_before: int, window_after: int,
                 device: str | torch.device = "cpu") -> None:
        self.d_sae, self.slots, self.device = d_sae, slots, torch.device(device)
        self.offsets = torch.arange(-window_before, window_after + 1, device=self.device)
        self.n_tokens = self.n_rows = 0
        self.n_positions: int | None = None
        zeros = dict(device=self.device)
        self.sum_a = torch.zeros(d_sae, dtype=torch.float64, **zeros)
        self.sum_b = torch.zeros(d_sae, dtype=torch.float64, **zeros)
        self.n_fired_a = torch.zeros(d_sae, dtype=torch.long, **zeros)
        self.n_fired_b = torch.zeros(d_sae, dtype=torch.long, **zeros)
        self.sum_d = torch.zeros(d_sae, dtype=torch.float64, **zeros)  # Σ_r d_r
        self.sum_sq_d = torch.zeros(d_sae, dtype=torch.float64, **zeros)  # Σ_r d_r²
        width = 2 * len(self.offsets)  # the window in a, then in b
        self.increase = Reservoir(slots, d_sae, width, self.device)
        self.decrease = Reservoir(slots, d_sae, width, self.device)

    @torch.no_grad()
    def update(self, acts_a: Tensor, acts_b: Tensor, fingerprints: Tensor) -> None:
        """acts_a, acts_b [B, T, d_sae]: the SAE on model a's and model b's activations (BOS left out) of the same
        B rows; fingerprints [B]: row_fingerprints of those rows."""
        acts_a, acts_b = acts_a.to(self.device).float(), acts_b.to(self.device).float()
        n_rows, length = acts_a.shape[:2]
        if self.n_positions not in (None, length):
            raise ValueError(f"batches of {length} positions after batches of {self.n_positions}")
        self.n_positions = length
        self.n_rows += n_rows
        self.n_tokens += n_rows * length
        diff = acts_b - acts_a  # exact zeros where the models agree
        row_a = acts_a.sum(1, dtype=torch.float64)  # [B, d_sae]
        row_diff = diff.sum(1, dtype=torch.float64)
        self.sum_a += row_a.sum(0)
        self.sum_b += (row_a + row_diff).sum(0)
        # SAE activations are >= 0, so their sign counts firings (exact in float32 below 2²⁴ tokens a batch)
        self.n_fired_a += torch.sign(acts_a).sum((0, 1)).long()
        self.n_fired_b += torch.sign(acts_b).sum((0, 1)).long()
        row_change = row_diff / length  # d_r [B, d_sae]
        self.sum_d += row_change.sum(0)
        self.sum_sq_d += (row_change**2).sum(0)
        window_of = self._window_of(acts_a, acts_b)
        row = fingerprints.to(self.device).unsqueeze(1).expand_as(row_change)
        batch_row = torch.arange(n_rows, device=self.device).unsqueeze(1).expand_as(row_change)
        features = torch.arange(self.d_sae, device=self.device)
        for store, sign in ((self.increase, 1.0), (self.decrease, -1.0)):
            signed = (sign * row_change).float()
            key = torch.where(signed > 0, place_key(signed.view(torch.int32).long(), row % 2**32), -1)
            store.offer(key, sign * signed, self._centres(diff, sign, key, store), row, batch_row, features,
                        window_of)

    @staticmethod
    def _centres(diff: Tensor, sign: float, key: Tensor, store: Reservoir) -> Tensor:
        """[B, d_sae]: each row's token of largest sign · change (the first of equal ones), found only where the row
        can enter the kept set (key not below the set's last; equal: a repeated row): once the set fills, few can."""
        candidate = (key >= store.key[-1]) & (key >= 0)
        if int(candidate.sum()) * 4 > key.numel():  # the first batches: one reduction over all is cheaper
            return diff.max(1).indices if sign > 0 else diff.min(1).indices
        pos = torch.zeros_like(key)
        b, f = candidate.nonzero(as_tuple=True)
        if len(b):
            changes = diff[b, :, f]  # [n, T]
            pos[b, f] = changes.argmax(1) if sign > 0 else changes.argmin(1)
        return pos

    def _window_of(self, acts_a: Tensor, acts_b: Tensor):
        length = acts_a.shape[1]

        def window_of(batch_row: Tensor, feature: Tensor, pos: Tensor) -> Tensor:
            positions = pos.unsqueeze(-1) + self.offsets  # [n, W]
            inside = (positions >= 0) & (positions < length)
            index = (batch_row.unsqueeze(-1), positions.clamp(0, length - 1), feature.unsqueeze(-1))
            return torch.cat([torch.where(inside, acts[index], 0.0) for acts in (acts_a, acts_b)], dim=-1)
        return window_of

    def merge(self, other: FeatureChangeAccumulator) -> FeatureChangeAccumulator:
        """Fold in the accumulator of other rows (same SAE width, slots and window); returns self."""
        if (other.d_sae, other.slots, len(other.offsets)) != (self.d_sae, self.slots, len(self.offsets)):
            raise ValueError("merging feature-change accumulators of different widths, slots or windows")
        if None not in (self.n_positions, other.n_positions) and self.n_positions != other.n_positions:
            raise ValueError(f"merging rows of {other.n_positions} positions into rows of {self.n_positions}")
        self.n_positions = self.n_positions or other.n_positions
        other.to(self.device)
        self.n_tokens += other.n_tokens
        self.n_rows += other.n_rows
        for name in ("sum_a", "sum_b", "n_fired_a", "n_fired_b", "sum_d", "sum_sq_d"):
            getattr(self, name).add_(getattr(other, name))
        self.increase.merge(other.increase)
        self.decrease.merge(other.decrease)
        return self

    def to(self, device: str | torch.device) -> FeatureChangeAccumulator:
        self.device = torch.device(device)
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                setattr(self, name, value.to(self.device))
        self.increase.to(self.device)
        self.decrease.to(self.device)
        return self

    def result(self) -> FeatureChange:
        n = max(self.n_tokens, 1)
        n_fired_a, n_fired_b = np_array(self.n_fired_a), np_array(self.n_fired_b)
        t, p, sd = paired_t(np_array(self.sum_d), np_array(self.sum_sq_d), self.n_rows)
        live = (n_fired_a + n_fired_b) > 0
        q = np.full(self.d_sae, np.nan)
        q[live] = benjamini_hochberg(p[live])
        return FeatureChange(
            n_tokens=self.n_tokens, n_rows=self.n_rows, mean_a=np_array(self.sum_a) / n,
            mean_b=np_array(self.sum_b) / n, n_fired_a=n_fired_a, n_fired_b=n_fired_b, row_change_sd=sd,
            t=t, p=p, q=q, increase=self._contexts(self.increase), decrease=self._contexts(self.decrease))

    def _contexts(self, store: Reservoir) -> ChangeContexts:
        empty = store.key < 0
        width = len(self.offsets)
        window = torch.where(empty.unsqueeze(-1), 0.0, store.window).transpose(0, 1)  # [d_sae, slots, 2W]
        return ChangeContexts(
            row_change=np_array(torch.where(empty, 0.0, store.value).T),
            fingerprint=np_array(torch.where(empty, -1, store.row).T),
            pos=np_array(torch.where(empty, -1, store.pos).T),
            acts_a=np_array(window[..., :width]), acts_b=np_array(window[..., width:]))


def ranked(change: np.ndarray, n: int, direction: str) -> np.ndarray:
    """The n features of largest change (direction "increase") or smallest ("decrease"), only those that moved
    that way; ties by the smaller feature id."""
    sign = 1.0 if direction == "increase" else -1.0
    moved = np.flatnonzero(sign * change > 0)
    order = np.lexsort((moved, -sign * change[moved]))
    return moved[order][:n]
