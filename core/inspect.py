"""Inspect: one text through both arms of a pair, token by token: which features fire where, and where the
fine-tuned model's next-token predictions part from the base model's.

Positions: the text is tokenised with BOS first (as every stage reads the corpus); the BOS position is left out
of everything shown. Token i's next-token distribution is the model's prediction after reading tokens 0..i, so
its KL and its change in log-probability concern token i + 1 (the last token has a KL but no following token).

Why here (`why_here`, computed for the chosen token only): the direct effect of each feature on the logit of the token that follows, through the
final normalisation and W_U: activation × (W_dec[f] centred over d_model, for LayerNorm) @ W_U[:, next] /
ln_final scale at that position. A feature at an early hook also acts through the later layers; this counts only
the direct path, the part the decoder row itself writes into the logit.

Thread safety: each arm runs under `core.steering.model_lock(model)`, so an Inspect never sees another session's
steering hook (hooks are global state on the model).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from core.errors import StudyInputError
from core.hook_reads import run_capturing
from core.loading import LoadedArm
from core.steering import model_lock
from core.words import new_token_texts

SCALE_HOOK = "ln_final.hook_scale"


@dataclass(frozen=True)
class ArmReading:
    """One arm's reading of the text, BOS left out. `active[i]`: (feature ids, activations) of every feature
    firing on token i, strongest first. `final_scale[i]`: the final normalisation's scale at token i (1 without
    one), what `why_here` divides a direct logit effect by. All plain numbers."""

    arm: str
    active: list[tuple[list[int], list[float]]]
    final_scale: list[float]

    def feature_acts(self, feature: int) -> list[float]:
        """The activation of `feature` on every token (0 where it does not fire)."""
        return [dict(zip(ids, acts)).get(feature, 0.0) for ids, acts in self.active]


@dataclass(frozen=True)
class Inspection:
    """Both arms on one text. tokens: the text each token adds (BOS left out); kl[i] = KL(p_base ‖ p_finetuned)
    of the next-token distributions after token i, in nats; logprob_change[i] = log p_finetuned(token i+1) −
    log p_base(token i+1) (None on the last token, which has no following token); notice: why the text was cut, or None."""

    text: str
    token_ids: list[int]
    tokens: list[str]
    base: ArmReading
    finetuned: ArmReading
    kl: list[float]
    logprob_change: list[float | None]
    notice: str | None = None


@dataclass(frozen=True)
class _Pass:
    readings: ArmReading
    logprobs: Tensor  # [T, d_vocab], BOS row dropped


def text_ids(base: LoadedArm, finetuned: LoadedArm, text: str) -> tuple[list[int], str | None]:
    """The text's token ids (BOS first), cut to the smaller context of the two models; and the notice saying so.
    Refuses an empty text and a pair whose tokenizers read it differently."""
    if not text.strip():
        raise StudyInputError("Type a text to inspect (it is empty).")
    ids = [arm.model.to_tokens(text, prepend_bos=True, truncate=False)[0].tolist() for arm in (base, finetuned)]
    if ids[0] != ids[1] or base.model.cfg.d_vocab != finetuned.model.cfg.d_vocab:
        raise StudyInputError(f"{base.name} and {finetuned.name} tokenise this text differently (different "
                              "tokenizers), so their predictions cannot be compared token by token.")
    n_ctx = min(base.model.cfg.n_ctx, finetuned.model.cfg.n_ctx)
    if len(ids[0]) <= n_ctx:
        return ids[0], None
    return ids[0][:n_ctx], (f"The text is {len(ids[0]) - 1} tokens; the models read at most {n_ctx} with BOS, so "
                            f"it was cut after token {n_ctx - 1}.")


@torch.inference_mode()
def _read(arm: LoadedArm, ids: Sequence[int]) -> _Pass:
    """One forward pass of `arm` over `ids` [T + 1] (BOS first) under its model lock."""
    model, sae = arm.model, arm.sae
    tokens = torch.tensor([list(ids)], dtype=torch.long, device=model.cfg.device)
    names = [arm.hook_name] + ([SCALE_HOOK] if SCALE_HOOK in model.hook_dict else [])
    with model_lock(model):
        logits, cache = run_capturing(model, tokens, names)
    feature_acts = sae.encode(cache[arm.hook_name][0, 1:].to(sae.W_dec.device)).float()  # [T, d_sae]
    scale = cache[SCALE_HOOK][0, 1:, 0].float() if SCALE_HOOK in cache else torch.ones(len(ids) - 1)
    pos, feature = torch.nonzero(feature_acts > 0, as_tuple=True)  # every firing, [N] each
    acts = feature_acts[pos, feature]
    order = torch.argsort(acts, descending=True, stable=True)
    order = order[torch.argsort(pos[order], stable=True)]  # by position, strongest first within one
    counts = torch.bincount(pos, minlength=len(ids) - 1).tolist()
    features, values = feature[order].tolist(), acts[order].tolist()
    starts = [0] + list(itertools.accumulate(counts))
    active = [(features[a:b], values[a:b]) for a, b in zip(starts, starts[1:])]
    logprobs = logits[0, 1:].float().log_softmax(-1).cpu()
    return _Pass(ArmReading(arm.name, active, scale.tolist()), logprobs)


def direct_logit_weights(arm: LoadedArm, features: Sequence[int], next_token: int, scale: float) -> list[float]:
    """(W_dec[f] centred for LayerNorm) @ W_U[:, next_token] / scale per feature: the logit a unit activation
    writes directly. Centred because the final LayerNorm removes each vector's mean over d_model. Weights only:
    no forward pass, no lock."""
    model = arm.model
    with torch.no_grad():
        W_dec = arm.sae.W_dec[list(features)].to(model.W_U.device).float()  # [n, d_model]
        if str(getattr(model.cfg, "normalization_type", "")).startswith("LN"):
            W_dec = W_dec - W_dec.mean(-1, keepdim=True)
        return (W_dec @ model.W_U[:, next_token].float() / scale).tolist()


def inspect_text(base: LoadedArm, finetuned: LoadedArm, text: str) -> Inspection:
    """Run `text` once through each arm (each under its own model lock) and compare their predictions."""
    ids, notice = text_ids(base, finetuned, text)
    return inspect_ids(base, finetuned, ids, text, notice)


def inspect_ids(base: LoadedArm, finetuned: LoadedArm, ids: Sequence[int], text: str | None = None,
                notice: str | None = None) -> Inspection:
    """`inspect_text` on token ids (BOS first) as given, e.g. a corpus row exactly as the precompute read it
    (decoding and re-encoding a row need not give its ids back); text: what to call it (default: its tokens)."""
    if base.model.cfg.d_vocab != finetuned.model.cfg.d_vocab:
        raise StudyInputError(f"{base.name} and {finetuned.name} have vocabularies of different sizes, so their "
                              "predictions cannot be compared token by token.")
    n_ctx = min(base.model.cfg.n_ctx, finetuned.model.cfg.n_ctx)
    if len(ids) > n_ctx:
        ids, notice = list(ids)[:n_ctx], f"The tokens were cut to the models' context of {n_ctx} with BOS."
    ids = list(ids)
    a, b = _read(base, ids), _read(finetuned, ids)
    kl = (a.logprobs.exp() * (a.logprobs - b.logprobs)).sum(-1).clamp_min(0.0)  # [T]
    following = torch.tensor(ids[2:], dtype=torch.long)
    positions = torch.arange(len(following))
    change = (b.logprobs[positions, following] - a.logprobs[positions, following]).tolist() + [None]
    tokens = new_token_texts(base.model.tokenizer, ids[:1], ids[1:])
    text = "".join(tokens) if text is None else text
    return Inspection(text, ids[1:], tokens, a.readings, b.readings, kl.tolist(), change, notice)


@dataclass(frozen=True)
class WhyRow:
    """One feature (or persisting pair) at one token: activations in each arm (None: that arm has no partner)
    and its direct effect on the following token's logit in each arm; logit_change = finetuned − base."""

    base_feature: int | None
    finetuned_feature: int | None
    base_act: float
    finetuned_act: float
    base_logit: float
    finetuned_logit: float

    @property
    def act_change(self) -> float:
        return self.finetuned_act - self.base_act

    @property
    def logit_change(self) -> float:
        return self.finetuned_logit - self.base_logit


def why_here(arms: tuple[LoadedArm, LoadedArm], inspection: Inspection, pos: int, forward: Mapping[int, int],
             backward: Mapping[int, int], limit: int = 20) -> list[WhyRow]:
    """The features whose activation at token `pos` differs most between the arms, largest |change| first, with
    their direct effects on the following token's logit (NaN on the last token, which has none).
    arms: the (base, finetuned) the inspection was run with. forward: base feature -> its persisting match in the
    fine-tuned arm; backward: the same from the fine-tuned side (they differ where matches are many-to-one). A
    feature with no persisting match stands alone (its other side 0)."""
    following = inspection.token_ids[pos + 1] if pos + 1 < len(inspection.token_ids) else None
    a, b = (_at(arm, reading, pos, following) for arm, reading in zip(arms, (inspection.base, inspection.finetuned)))
    rows, seen_b = [], set()
    for f_a, (act, logit) in a.items():
        f_b = forward.get(f_a)
        if f_b is not None:
            seen_b.add(f_b)
            act_b, logit_b = b.get(f_b, (0.0, 0.0))
            rows.append(WhyRow(f_a, f_b, act, act_b, logit, logit_b))
        else:
            rows.append(WhyRow(f_a, None, act, 0.0, logit, 0.0))
    for f_b, (act, logit) in b.items():
        if f_b in seen_b:
            continue
        f_a = backward.get(f_b)
        act_a, logit_a = a.get(f_a, (0.0, 0.0)) if f_a is not None else (0.0, 0.0)
        rows.append(WhyRow(f_a, f_b, act_a, act, logit_a, logit))
    rows.sort(key=lambda r: -abs(r.act_change))
    return rows[:limit]


def _at(arm: LoadedArm, reading: ArmReading, pos: int, following: int | None) -> dict[int, tuple[float, float]]:
    """feature -> (activation, direct logit effect on the following token) of every feature firing at `pos`."""
    ids, acts = reading.active[pos]
    weights = (direct_logit_weights(arm, ids, following, reading.final_scale[pos]) if following is not None and ids
               else [float("nan")] * len(ids))
    return {f: (act, act * w) for f, act, w in zip(ids, acts, weights)}
