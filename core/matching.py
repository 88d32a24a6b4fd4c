"""Feature matching across two SAEs: Pearson correlation of every feature of arm A with every feature of arm B.

Two features are the same when their activations over the same tokens correlate at or above a threshold (0.8,
from the feature-evolution study, seed 004): a base (A) feature with no such partner *disappears*, a fine-tuned
(B) feature with none *emerges*, and a matched one *persists*. A feature that never fired on the tokens compared
is `dead` and one that fired fewer than `min_firings` times is `rare`: neither has a fate (a correlation over a
handful of firings means little), and neither counts as another feature's partner. Every pair at or above the
threshold is kept (`MatchPairs`): one base feature can be the partner of many fine-tuned ones. The correlation is
exact (up to fp64 rounding) and is built only from co-activations: per feature the count, Σa and Σa², and per
pair Σ a_i b_j, which the sparse product Aᵀ B of each batch adds into one d_sae_a × d_sae_b matrix. Nothing of
size tokens × d_sae is ever held: 24,576 × 12,288 features take 2.4 GB in fp64 whatever the number of tokens.
fp64 because r = (n Σab − Σa Σb) / … cancels for features that fire on nearly every token, and fp32 sums then
drift by 1e-5.
The sums are mergeable (`CoactivationAccumulator`): shards of the corpus summed apart and added give the same
Coactivations, so the pass can be split across workers.

When one SAE was trained on from the other (SmolLM2's fine-tuned SAE goes on from the base SAE), feature i on both
sides is one feature that the fine-tune may have moved: `same_index_corr` (the diagonal of the matrix) says how far,
without a threshold, and `same_index_share` (how many best matches are the feature's own index; 1 / d_sae by chance
for SAEs trained apart) says whether the SAEs share that lineage at all.

Secondary measures for given pairs: decoder cosine (same d_in) and logit-weight similarity, the cosine of
W_dec[a] @ W_U_a and W_dec[b] @ W_U_b over a shared vocabulary, computed in chunks of pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.hook_reads import features_at_hook

DEFAULT_THRESHOLD = 0.8
# One SAE went on from the other when at least this share of best matches is the feature's own index (SAEs
# trained apart: about 1 / d_sae; SmolLM2's fine-tuned SAE from the base SAE: 0.98).
LINEAGE_SHARE = 0.5
CONSTANT_TOLERANCE = 1e-9  # n Σa² − (Σa)² below this share of n Σa² is rounding: the feature is constant


@dataclass(frozen=True)
class MatchPairs:
    """Every (A feature, B feature) pair whose correlation is at or above the threshold, both features neither
    dead nor rare; sorted by A then B. Arrays are [n_pairs]."""

    a: np.ndarray  # int64
    b: np.ndarray  # int64
    corr: np.ndarray  # float32

    def partner_counts(self, d_sae_a: int, d_sae_b: int) -> tuple[np.ndarray, np.ndarray]:
        """Partners of each A feature [d_sae_a] and of each B feature [d_sae_b] (int64)."""
        return np.bincount(self.a, minlength=d_sae_a), np.bincount(self.b, minlength=d_sae_b)


@dataclass(frozen=True)
class FeatureMatches:
    """Best partner of every feature in the other arm. A-arrays are [d_sae_a], B-arrays [d_sae_b].

    A dead or rare feature (n_fired < min_firings), or one that fired with one constant value, has no match:
    match -1, corr NaN. Statuses: "persist" | "disappear" (A) or "emerge" (B) | "dead" | "rare"."""

    threshold: float
    n_tokens: int
    a_match: np.ndarray  # int64: best B feature, -1 if none is defined
    a_corr: np.ndarray  # float32: its Pearson correlation, NaN if undefined
    a_status: np.ndarray  # str
    a_n_fired: np.ndarray  # int64: tokens on which the A feature is > 0
    b_match: np.ndarray  # int64: best A feature, -1 if none is defined
    b_corr: np.ndarray  # float32
    b_status: np.ndarray  # str
    b_n_fired: np.ndarray  # int64
    pairs: MatchPairs
    min_firings: int = 1
    # [min(d_sae_a, d_sae_b)] float32: corr(A feature i, B feature i), NaN where either is dead, rare or constant
    same_index_corr: np.ndarray | None = None

    def same_index_share(self, side: str) -> float:
        """Share of `side`'s ("a" or "b") features with a best match whose best match is their own index: near 1
        when one SAE went on from the other, about 1 / d_sae for SAEs trained apart; NaN with no match at all."""
        match = getattr(self, f"{side}_match")
        matched = match >= 0
        return float((match[matched] == np.arange(len(match))[matched]).mean()) if matched.any() else float("nan")

    def counts(self) -> dict[str, int]:
        """Number of features per status: persist_a, disappear, dead_a, rare_a, persist_b, emerge, dead_b, rare_b."""
        a, b = self.a_status, self.b_status
        return {"persist_a": int((a == "persist").sum()), "disappear": int((a == "disappear").sum()),
                "dead_a": int((a == "dead").sum()), "rare_a": int((a == "rare").sum()),
                "persist_b": int((b == "persist").sum()), "emerge": int((b == "emerge").sum()),
                "dead_b": int((b == "dead").sum()), "rare_b": int((b == "rare").sum())}


def feature_status(corr: np.ndarray, n_fired: np.ndarray, threshold: float, min_firings: int,
                   unmatched: str) -> np.ndarray:
    """Per feature: "dead" (never fired), "rare" (< min_firings), else "persist" at corr >= threshold, else
    `unmatched` ("disappear" for A, "emerge" for B)."""
    status = np.where(corr >= threshold, "persist", unmatched).astype(object)
    status[n_fired < min_firings] = "rare"
    status[n_fired == 0] = "dead"
    return status.astype(str)


def _sparse_parts(acts: Tensor, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(token, feature, value) of the non-zeros of `acts` [n, d_sae], dense or sparse; sorted by token."""
    if acts.layout == torch.strided:
        index = acts.nonzero()  # on the activations' own device: cheap on a GPU, and only the non-zeros move
        values = acts[index[:, 0], index[:, 1]]
        token, feature = index[:, 0], index[:, 1]
    else:
        coo = acts.to_sparse_coo().coalesce()
        token, feature = coo.indices()
        values = coo.values()
        keep = values != 0
        token, feature, values = token[keep], feature[keep], values[keep]
    return token.to(device), feature.to(device), values.to(device, dtype)


@dataclass(frozen=True)
class Coactivations:
    """The sums Pearson needs, over `n_tokens` tokens both arms read: per feature the count of firings, Σa and
    Σa² ([d_sae_a] for A, [d_sae_b] for B), and per pair Σ_t a_i(t) b_j(t) ([d_sae_a, d_sae_b]). float64 sums,
    int64 counts, all numpy on the CPU."""

    n_tokens: int
    sum_a: np.ndarray
    sum_sq_a: np.ndarray
    n_fired_a: np.ndarray
    sum_b: np.ndarray
    sum_sq_b: np.ndarray
    n_fired_b: np.ndarray
    cross: np.ndarray

    @property
    def d_sae_a(self) -> int:
        return len(self.sum_a)

    @property
    def d_sae_b(self) -> int:
        return len(self.sum_b)

    def correlation(self, rows: slice = slice(None)) -> np.ndarray:
        """Pearson correlation [len(rows), d_sae_b] of A features `rows` with every B feature, NaN if undefined."""
        return _np(_Sums(self, torch.device("cpu")).correlation_block(rows).clamp(-1, 1))  # ±1 + rounding: clamped


class _Sums:
    """Coactivations as float64 tensors on one device, for the blockwise correlation."""

    def __init__(self, coactivations: Coactivations, device: torch.device) -> None:
        def on(array: np.ndarray) -> Tensor:
            return torch.from_numpy(array).to(device)  # no copy on the CPU

        c = coactivations
        self.n_tokens, self.device = c.n_tokens, device
        self.sum_a, self.sum_sq_a, self.n_fired_a = on(c.sum_a), on(c.sum_sq_a), on(c.n_fired_a)
        self.sum_b, self.sum_sq_b, self.n_fired_b = on(c.sum_b), on(c.sum_sq_b), on(c.n_fired_b)
        self.cross = on(c.cross)

    def correlation_block(self, rows: slice) -> Tensor:
        """[rows, d_sae_b] fp64, unclamped (within rounding of ±1); NaN where undefined."""
        corr = torch.addr(self.cross[rows], self.sum_a[rows], self.sum_b, beta=self.n_tokens, alpha=-1)
        corr.mul_(self.inverse_spread(self.sum_a[rows], self.sum_sq_a[rows]).unsqueeze(1))
        return corr.mul_(self.inverse_spread(self.sum_b, self.sum_sq_b))  # in place: one block-sized buffer

    def inverse_spread(self, total: Tensor, total_sq: Tensor) -> Tensor:
        """1 / sqrt(n Σa² − (Σa)²), NaN for a feature that never fired or is constant (no defined correlation)."""
        var = self.n_tokens * total_sq - total**2
        return torch.where(var > CONSTANT_TOLERANCE * self.n_tokens * total_sq, var.clamp(min=0).rsqrt(), torch.nan)


_SUMS = ("sum_a", "sum_sq_a", "n_fired_a", "sum_b", "sum_sq_b", "n_fired_b", "cross")


class CoactivationAccumulator:
    """The Coactivations of both arms' feature activations over the tokens folded in.

    A batch is the two arms' feature activations on the same n tokens (rows flattened, BOS left out):
    acts_a [n, d_sae_a] and acts_b [n, d_sae_b], dense or torch sparse, on any device. Every sum is over tokens,
    so no row index is needed: any split of the rows into shards, merged in any order, gives the single pass
    (counts exactly, float64 sums to rounding). The state is float64 / int64 numpy on the CPU. Each batch's
    sparse product runs on `device` in `dtype`: float64 by default, today's path (an fp32 product would put 1e-7
    of error into sums that Pearson then cancels). Off the CPU the running sums stay on `device` in float64 and
    are added into the numpy state when the accumulator is merged, pickled or read (copying a 2.4 GB
    cross-product to the CPU after every batch would dominate the pass)."""

    def __init__(self, d_sae_a: int, d_sae_b: int, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float64, max_cross_bytes: float = 3e9) -> None:
        size = d_sae_a * d_sae_b * 8
        if size > max_cross_bytes:
            raise ValueError(f"the {d_sae_a} × {d_sae_b} cross-product needs {size / 1e9:.1f} GB in float64 > "
                             f"max_cross_bytes={max_cross_bytes / 1e9:.1f} GB; compare fewer features or raise it")
        self.d_sae_a, self.d_sae_b, self.device, self.dtype = d_sae_a, d_sae_b, torch.device(device), dtype
        self.n_tokens = 0
        self.sum_a, self.sum_sq_a = np.zeros(d_sae_a), np.zeros(d_sae_a)
        self.sum_b, self.sum_sq_b = np.zeros(d_sae_b), np.zeros(d_sae_b)
        self.n_fired_a = np.zeros(d_sae_a, dtype=np.int64)
        self.n_fired_b = np.zeros(d_sae_b, dtype=np.int64)
        self.cross = np.zeros((d_sae_a, d_sae_b))  # Σ_t a_i(t) b_j(t)
        self._on_state = self.device.type == "cpu"  # on the CPU, batches add straight into the numpy state
        self._staged: dict[str, Tensor] | None = None

    def _staging(self) -> dict[str, Tensor]:
        """Where batches add their sums: views of the numpy state on the CPU, zeroed buffers on a GPU."""
        if self._staged is None:
            if self._on_state:
                self._staged = {name: torch.from_numpy(getattr(self, name)) for name in _SUMS}
            else:
                self._staged = {name: torch.zeros(getattr(self, name).shape, device=self.device,
                                                  dtype=torch.long if name.startswith("n_") else torch.float64)
                                for name in _SUMS}
        return self._staged

    def _flush(self) -> None:
        """Add the sums held on the device into the numpy state (nothing to do on the CPU)."""
        if self._staged is not None and not self._on_state:
            for name, staged in self._staged.items():
                getattr(self, name)[...] += _np(staged)
            self._staged = None

    @torch.no_grad()
    def update(self, acts_a: Tensor, acts_b: Tensor) -> None:
        """acts_a [n, d_sae_a] and acts_b [n, d_sae_b] on the same n tokens; dense or torch sparse, mostly zeros."""
        n = acts_a.shape[0]
        if acts_b.shape[0] != n or acts_a.shape[1] != self.d_sae_a or acts_b.shape[1] != self.d_sae_b:
            raise ValueError(f"expected [n, {self.d_sae_a}] and [n, {self.d_sae_b}] on the same tokens, "
                             f"got {list(acts_a.shape)} and {list(acts_b.shape)}")
        token_a, feature_a, value_a = _sparse_parts(acts_a, self.device, self.dtype)
        token_b, feature_b, value_b = _sparse_parts(acts_b, self.device, self.dtype)
        staged = self._staging()
        self.n_tokens += n
        for side, feature, value in (("a", feature_a, value_a), ("b", feature_b, value_b)):
            staged[f"sum_{side}"].index_add_(0, feature, value.double())
            staged[f"sum_sq_{side}"].index_add_(0, feature, value.double() ** 2)
            staged[f"n_fired_{side}"].add_(torch.bincount(feature, minlength=staged[f"n_fired_{side}"].numel()))
        # COO, not CSR: torch 2.13's MKL CSR × CSR product leaks ~16 MB a call on CPU (6 GB over 1M tokens).
        a_t = torch.sparse_coo_tensor(torch.stack([feature_a, token_a]), value_a, (self.d_sae_a, n),
                                      check_invariants=False).coalesce()  # explicit: silences a per-process notice
        b = torch.sparse_coo_tensor(torch.stack([token_b, feature_b]), value_b, (n, self.d_sae_b),
                                    check_invariants=False).coalesce()
        staged["cross"].add_(torch.sparse.mm(a_t, b).double())  # sparse × sparse: only co-firing pairs are touched

    def merge(self, other: CoactivationAccumulator) -> CoactivationAccumulator:
        if (other.d_sae_a, other.d_sae_b) != (self.d_sae_a, self.d_sae_b):
            raise ValueError(f"cannot merge co-activations of {other.d_sae_a} × {other.d_sae_b} features into "
                             f"{self.d_sae_a} × {self.d_sae_b}")
        self._flush()
        other._flush()
        self.n_tokens += other.n_tokens
        for name in _SUMS:
            getattr(self, name)[...] += getattr(other, name)
        return self

    def result(self) -> Coactivations:
        """The sums so far (the state's own arrays, not copies: a later update changes them)."""
        self._flush()
        return Coactivations(self.n_tokens, *(getattr(self, name) for name in _SUMS))

    def __getstate__(self) -> dict[str, Any]:
        self._flush()
        return {**self.__dict__, "_staged": None}  # tensors on a device do not travel; the numpy state does


@torch.no_grad()
def match_features(coactivations: Coactivations, threshold: float = DEFAULT_THRESHOLD, block_rows: int = 512,
                   min_firings: int = 1, progress: Callable[[Iterable], Iterable] = lambda it: it,
                   device: str | torch.device = "cpu") -> FeatureMatches:
    """Best match, status and every above-threshold pair of both arms' features, from the correlation matrix a
    block of rows at a time, on `device`. Features that fired fewer than `min_firings` times are nobody's match."""
    sums = _Sums(coactivations, torch.device(device))
    d_sae_a, d_sae_b = coactivations.d_sae_a, coactivations.d_sae_b
    a_best = torch.full((d_sae_a,), -torch.inf, dtype=torch.float64, device=sums.device)
    a_arg = torch.full((d_sae_a,), -1, dtype=torch.long, device=sums.device)
    b_best = torch.full((d_sae_b,), -torch.inf, dtype=torch.float64, device=sums.device)
    b_arg = torch.full((d_sae_b,), -1, dtype=torch.long, device=sums.device)
    excluded_a = torch.isnan(sums.inverse_spread(sums.sum_a, sums.sum_sq_a)) | (sums.n_fired_a < min_firings)
    excluded_b_mask = torch.isnan(sums.inverse_spread(sums.sum_b, sums.sum_sq_b)) | (sums.n_fired_b < min_firings)
    excluded_b = excluded_b_mask.nonzero().squeeze(1)
    same = torch.full((min(d_sae_a, d_sae_b),), torch.nan, dtype=torch.float64, device=sums.device)
    pairs = []
    for start in progress(range(0, d_sae_a, block_rows)):
        rows = slice(start, min(start + block_rows, d_sae_a))
        corr = sums.correlation_block(rows)
        diagonal = torch.arange(start, min(rows.stop, d_sae_b), device=sums.device)  # feature i against B's i
        same[diagonal] = corr[diagonal - start, diagonal].clamp(-1, 1)
        corr[excluded_a[rows]] = -torch.inf  # max() would return NaN over undefined features: no match
        corr.index_fill_(1, excluded_b, -torch.inf)
        a_best[rows], a_arg[rows] = corr.max(dim=1)
        col_best, col_arg = corr.max(dim=0)
        better = col_best > b_best  # strict: the first A feature wins a tie, as argmax would
        b_best[better], b_arg[better] = col_best[better], col_arg[better] + start
        above = (corr >= threshold).nonzero()
        pairs.append((above[:, 0] + start, above[:, 1], corr[above[:, 0], above[:, 1]].clamp(-1, 1)))
    a_corr, a_match = _defined(a_best, a_arg)
    b_corr, b_match = _defined(b_best, b_arg)
    n_fired_a, n_fired_b = coactivations.n_fired_a.copy(), coactivations.n_fired_b.copy()
    pair_a, pair_b, pair_corr = (torch.cat(part) for part in zip(*pairs))
    n_same = len(same)
    same[excluded_a[:n_same] | excluded_b_mask[:n_same]] = torch.nan
    return FeatureMatches(
        threshold=threshold, n_tokens=coactivations.n_tokens,
        a_match=a_match, a_corr=a_corr, a_status=feature_status(a_corr, n_fired_a, threshold, min_firings, "disappear"),
        a_n_fired=n_fired_a,
        b_match=b_match, b_corr=b_corr, b_status=feature_status(b_corr, n_fired_b, threshold, min_firings, "emerge"),
        b_n_fired=n_fired_b,
        pairs=MatchPairs(_np(pair_a), _np(pair_b), _np(pair_corr).astype(np.float32)),
        min_firings=min_firings, same_index_corr=_np(same).astype(np.float32),
    )


def _defined(best: Tensor, arg: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(corr float32 with NaN, match int64 with -1) where no correlation was defined (best = -inf)."""
    defined = torch.isfinite(best)
    corr = torch.where(defined, best.clamp(-1, 1), torch.nan)  # rounding can step just past ±1
    return _np(corr).astype(np.float32), _np(torch.where(defined, arg, -1))


def _np(x: Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


@torch.no_grad()
def collect_coactivations(model_a: Any, sae_a: Any, hook_a: str, model_b: Any, sae_b: Any, hook_b: str,
                          rows: Tensor, batch_size: int = 16, device: str | torch.device = "cpu",
                          dtype: torch.dtype = torch.float64,
                          progress: Callable[[Iterable], Iterable] = lambda it: it) -> CoactivationAccumulator:
    """Both arms over the same token rows [n, T] (BOS first, left out): each SAE encodes its own model's hook.

    One shard's pass: rows are any subset of the corpus, and the accumulators of disjoint row sets merge into
    the pass over their union. Each batch's product runs on `device` (the SAEs' device); the sums are numpy."""
    acc = CoactivationAccumulator(sae_a.cfg.d_sae, sae_b.cfg.d_sae, device, dtype)
    for start in progress(range(0, rows.shape[0], batch_size)):
        batch = rows[start:start + batch_size]
        acc.update(_encode(model_a, sae_a, hook_a, batch), _encode(model_b, sae_b, hook_b, batch))
    return acc


def _encode(model: Any, sae: Any, hook_name: str, batch: Tensor) -> Tensor:
    """Feature activations [B × (T − 1), d_sae] of `sae` at `hook_name`, BOS position left out."""
    feature_acts = features_at_hook(model, sae, hook_name, batch)
    return feature_acts.reshape(-1, feature_acts.shape[-1])


def _pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if a.shape != b.shape:
        raise ValueError(f"pairs need as many A as B indices, got {a.shape} and {b.shape}")
    valid = (a >= 0) & (b >= 0)
    return a, b, valid


@torch.no_grad()
def decoder_cosine(W_dec_a: Tensor, W_dec_b: Tensor, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of W_dec_a[a[k]] and W_dec_b[b[k]] ([d_sae, d_in] each) per pair [k]; NaN where an index is -1."""
    if W_dec_a.shape[1] != W_dec_b.shape[1]:
        raise ValueError(f"decoder cosine needs the same d_in, got {W_dec_a.shape[1]} and {W_dec_b.shape[1]}")
    a, b, valid = _pairs(a, b)
    out = np.full(a.shape, np.nan, dtype=np.float32)
    rows_a = W_dec_a[torch.as_tensor(a[valid], device=W_dec_a.device)].double()
    rows_b = W_dec_b[torch.as_tensor(b[valid], device=W_dec_b.device)].double().to(rows_a.device)
    out[valid] = _np(torch.nn.functional.cosine_similarity(rows_a, rows_b, dim=1, eps=1e-12))
    return out


@torch.no_grad()
def logit_weight_similarity(W_dec_a: Tensor, W_U_a: Tensor, W_dec_b: Tensor, W_U_b: Tensor,
                            a: np.ndarray, b: np.ndarray, shared_a: np.ndarray | None = None,
                            shared_b: np.ndarray | None = None, chunk: int = 1024) -> np.ndarray:
    """Cosine of the logit weights W_dec_a[a[k]] @ W_U_a and W_dec_b[b[k]] @ W_U_b per pair [k], NaN for -1.

    W_dec: [d_sae, d_in]; W_U: [d_in, d_vocab] (TransformerLens `model.W_U`). `shared_a[v]`, `shared_b[v]` are
    the token ids of one shared vocabulary in each model (default: the identity, which needs equal d_vocab).
    Only `chunk` pairs × vocabulary logits exist at a time, never d_sae × d_vocab."""
    if (shared_a is None) != (shared_b is None):
        raise ValueError("give both shared_a and shared_b (the shared vocabulary's ids in each model), or neither")
    if shared_a is None:
        if W_U_a.shape[1] != W_U_b.shape[1]:
            raise ValueError("the vocabularies differ in size: give shared_a and shared_b, the shared token ids")
        shared_a = shared_b = np.arange(W_U_a.shape[1])
    vocab_a = W_U_a[:, torch.as_tensor(shared_a, device=W_U_a.device)].float()
    vocab_b = W_U_b[:, torch.as_tensor(shared_b, device=W_U_b.device)].float()
    a, b, valid = _pairs(a, b)
    index = np.flatnonzero(valid)
    out = np.full(a.shape, np.nan, dtype=np.float32)
    for start in range(0, index.size, chunk):
        k = index[start:start + chunk]
        logits_a = W_dec_a[torch.as_tensor(a[k], device=W_dec_a.device)].float().to(vocab_a.device) @ vocab_a
        logits_b = W_dec_b[torch.as_tensor(b[k], device=W_dec_b.device)].float().to(vocab_b.device) @ vocab_b
        out[k] = _np(torch.nn.functional.cosine_similarity(logits_a, logits_b.to(logits_a.device), dim=1, eps=1e-12))
    return out
