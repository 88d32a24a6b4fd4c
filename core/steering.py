"""Steering (the paper's causal test): add Σ coefficient_f × W_dec[f] / ‖W_dec[f]‖ at the SAE's hook while the
model generates.

Why the unit direction: the paper steered with `coefficient × W_dec[feature]` on gpt2-small-res-jb, whose decoder
rows have norm 1, so its coefficient 50 was a push of norm 50 along the feature, the same for every feature. SAEs
trained without that constraint (the demo's rows run from 0.46 to 23) would turn the raw formula into pushes from
23 to 1,150, and a pass rate would measure row norms as much as features. Normalising is the paper's formula
wherever its SAE's assumption holds, and keeps the coefficient's meaning wherever it does not.

Where: the steering vector is added at the SAE's hook at every position of every forward pass: the prompt, then
each new token's single-position pass with the KV cache. The study authors' hook added it to `resid[:, :-1]` only
when seq_len > 1, i.e. to the prompt (less its last token) of the first pass; no generated token was steered.

Which model generates: the arm's `transformers` model (`LoadedArm.hf_model`, kept beside the HookedTransformer),
steered by a plain torch hook on the submodule holding the SAE's hook (`core.models.hf_hooks`: the input of block
L for hook_resid_pre, the output of the attention or MLP, after Gemma 2/3's post-norms, for hook_attn_out /
hook_mlp_out). Why: on SmolLM2-135M 50 tokens took 3.0× `transformers`' `generate` with the HookedTransformer's
own KV-cache loop, steered or not: the cost was its per-token forward (einsum attention, masks materialised),
not the hook. The `transformers` model in the small loop here (`_hf_steps`: its own KV cache,
`logits_to_keep=1`) runs at `generate`'s speed (bench/bench_smollm2.py). Without a `transformers` model (an arm
built by hand) the HookedTransformer's loop runs, with TransformerLens hooks; both give the same tokens (tests).
`generate`'s `transformers` loop and the HookedTransformer's differ in raw logits only by a per-position constant
(a centred unembedding), which no sampling step below sees.

Sampling (`SamplingSettings`, defaults = the paper's): TransformerLens's `sample_logits` rule, written out so that
a `torch.Generator` makes it deterministic per seed: temperature 0 → argmax of the raw logits; otherwise
scores = logits / temperature − frequency_penalty × (count of each token so far, prompt and BOS included), then
top-p (the best tokens up to and including the one where their running probability passes top_p), then one
draw with the seeded generator.
For the same seed the draws consume the generator identically, so steered and unsteered outputs differ only
through the steering. With `torch.manual_seed(seed)` instead, TransformerLens's `model.generate` draws the same
tokens (checked by the tests).

Thread safety: hooks are global state on the model. `model_lock(model)` is one re-entrant lock per model object;
an arm's lock is its HookedTransformer's, and its `transformers` model is only hooked and run under it.
`steering` holds it from adding its hook until after removing it, and `generate` holds it for the whole
generation, so two threads sharing a model (dashboard sessions) run one after the other and each gets exactly
what it would get alone. Any other code that runs a shared model while steering may happen must take the lock too.

Semantic similarity (the paper's Table 1 measure, defined here): `semantic_similarity`'s docstring.
"""

from __future__ import annotations

import string
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.coherence import unit_rows
from core.loading import LoadedArm
from core.models.hf_hooks import add_vector_hook
from core.words import new_token_texts, normalize_token

PAPER_PROMPT = "What topic is on your mind?"
PAPER_COEFFICIENT = 50.0

_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


@dataclass(frozen=True)
class SamplingSettings:
    """The paper's knobs; defaults are the paper's (it also never stopped at EOS)."""

    temperature: float = 1.0
    top_p: float | None = 0.3  # None or 1.0: no nucleus filtering
    freq_penalty: float = 1.0
    max_new_tokens: int = 50
    seed: int = 0
    stop_at_eos: bool = False
    prepend_bos: bool = True
    # False: the tokenizer's special tokens (EOS, BOS, chat markers) are never drawn, so a continuation stays prose.
    # A fine-tune on packed short documents learns to end them: SmolLM2's answered the paper's prompt, a question,
    # with "<|im_end|>.<|im_end|>." runs. The paper drew from every token (True).
    special_tokens: bool = True

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be ≥ 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")
        if not np.isfinite(self.freq_penalty):
            raise ValueError(f"freq_penalty must be finite, got {self.freq_penalty}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}")


PAPER_SAMPLING = SamplingSettings()


@dataclass(frozen=True)
class Generation:
    """One sampled continuation. Token lists are the new tokens only; `tokens` are the text each one adds (for
    highlighting; a SentencePiece word keeps its leading space), `text` all of them decoded together. `logprobs`: each new token's natural-log probability under the model as
    run (steered or not), before temperature, penalty and top-p."""

    prompt: str
    prompt_ids: list[int]
    token_ids: list[int]
    tokens: list[str]
    text: str
    logprobs: list[float]
    seed: int
    coefficients: dict[int, float] = field(default_factory=dict)  # feature → coefficient; empty: unsteered


@dataclass(frozen=True)
class SteeringComparison:
    """Unsteered and steered generations from the same prompt, settings and seed."""

    unsteered: Generation
    steered: Generation


@dataclass(frozen=True)
class NextTokenShift:
    """Log-probabilities (natural log) of chosen tokens at the position after the prompt, steered vs unsteered.
    `set_change` = log Σ p_steered − log Σ p_unsteered over the distinct tokens: one number for the whole set."""

    token_ids: list[int]
    unsteered: list[float]
    steered: list[float]
    delta: list[float]
    set_change: float


def model_lock(model: Any) -> threading.RLock:
    """The one lock of `model` (created on first use, dropped with the model); re-entrant, so `generate` inside
    `steering` in the same thread does not block itself."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def steering_vector(W_dec: Tensor, coefficients: Mapping[int, float]) -> Tensor:
    """Σ coefficient_f × W_dec[f] / ‖W_dec[f]‖ (unit rows: the module docstring says why): [d_in], on W_dec's
    device. W_dec [d_sae, d_in]; no coefficients: zeros; an all-zero row adds nothing."""
    d_sae = W_dec.shape[0]
    bad = [f for f in coefficients if not 0 <= int(f) < d_sae]
    if bad:
        raise ValueError(f"features {bad} are outside this SAE's 0..{d_sae - 1}")
    if not coefficients:
        return torch.zeros(W_dec.shape[1], dtype=W_dec.dtype, device=W_dec.device)
    ids = torch.tensor([int(f) for f in coefficients], device=W_dec.device)
    coefs = torch.tensor([float(c) for c in coefficients.values()], dtype=W_dec.dtype, device=W_dec.device)
    rows = W_dec.detach()[ids]  # [n, d_in]
    return coefs @ (rows / rows.norm(dim=1, keepdim=True).clamp(min=1e-12))


def steering_hook(vector: Tensor) -> Callable[..., Tensor]:
    """A TransformerLens hook adding `vector` [d_in] at every position: [batch, pos, d_in] (or [.., heads, d_head]
    for a d_in split over heads, e.g. hook_z)."""

    def add_vector(activation: Tensor, hook: Any) -> Tensor:
        return activation + vector.view(activation.shape[2:])

    return add_vector


@contextmanager
def steering(model: Any, hook_name: str, vector: Tensor, hf_model: Any = None) -> Iterator[None]:
    """Inside the block, every forward pass of `model` (the HookedTransformer), or of `hf_model` (its
    `transformers` twin) when given, gets `vector` added at `hook_name`, at every position.

    Holds `model_lock(model)` for the whole block (hooks are global state on the model); the hook is removed in a
    `finally`, so an error inside leaves the model clean."""
    if hook_name not in model.hook_dict:
        raise ValueError(f"model has no hook {hook_name!r}")
    if hf_model is not None:
        parameter = next(hf_model.parameters())
        with model_lock(model):
            handle = add_vector_hook(hf_model, hook_name, vector.detach().to(parameter.device, parameter.dtype))
            try:
                yield
            finally:
                handle.remove()
        return
    vector = vector.detach().to(device=model.cfg.device, dtype=model.cfg.dtype)
    with model_lock(model), model.hooks(fwd_hooks=[(hook_name, steering_hook(vector))]):
        yield


def sample_next_token(logits: Tensor, counts: Tensor, settings: SamplingSettings,
                      generator: torch.Generator) -> int:
    """One draw from logits [d_vocab] given counts [d_vocab] of tokens so far (see the module docstring)."""
    if settings.temperature == 0:
        return int(logits.argmax())
    scores = logits.float() / settings.temperature - settings.freq_penalty * counts
    probs = scores.softmax(-1)
    if settings.top_p is not None and settings.top_p < 1:
        keep = nucleus(probs, settings.top_p)
        probs = torch.zeros_like(probs).index_copy_(0, keep, scores[keep].softmax(-1))
    # Over the whole vocabulary, as TransformerLens does, so that one seed gives the same tokens.
    return int(torch.multinomial(probs, 1, generator=generator))


def nucleus(probs: Tensor, top_p: float, candidates: int = 64) -> Tensor:
    """Ids of the most probable tokens, best first, up to and including the one where the running sum of
    probabilities [d_vocab] passes top_p (TransformerLens's rule). A top-k of `candidates` replaces the full sort
    (a few ms a token at 50k tokens) whenever the sum passes top_p within it, which is exact. Otherwise (a flat
    distribution) the full sort runs, on the CPU through numpy's argsort, twice as fast as `torch.sort` there
    (2.1 vs 4.7 ms at 50k); equal values may come in another order, as they may from `torch.sort` itself."""
    k = min(candidates, probs.numel())
    top, ids = probs.topk(k)
    passed = (top.cumsum(-1) > top_p).nonzero()
    if passed.numel() == 0 and k < probs.numel():
        if probs.device.type == "cpu":
            ids = torch.from_numpy(np.argsort(-probs.numpy()))
            top = probs[ids]
        else:
            top, ids = probs.sort(descending=True)
        passed = (top.cumsum(-1) > top_p).nonzero()
    return ids[:int(passed[0]) + 1] if passed.numel() else ids


@torch.inference_mode()
def generate(model: Any, prompt: str, settings: SamplingSettings = PAPER_SAMPLING,
             on_token: Callable[[int], None] | None = None, hf_model: Any = None) -> Generation:
    """Sample a continuation of `prompt` with the KV cache: one pass over the prompt, then one single-position pass
    per new token; whatever hooks are on the model that runs (e.g. `steering`) apply to every pass. `model` (the
    HookedTransformer) tokenizes; `hf_model`, its `transformers` twin, runs the passes when given (the module
    docstring says why), else `model` does. Holds `model_lock(model)` throughout. `on_token(token_id)` is called
    after each draw (streaming)."""
    with model_lock(model):
        prompt_ids = model.to_tokens(prompt, prepend_bos=settings.prepend_bos)[0]  # [n_prompt]
        if prompt_ids.numel() == 0:
            raise ValueError("empty prompt: give some text or prepend_bos=True")
        if prompt_ids.numel() + settings.max_new_tokens > model.cfg.n_ctx:
            raise ValueError(f"prompt ({prompt_ids.numel()} tokens) + {settings.max_new_tokens} new tokens exceed "
                             f"the model's context of {model.cfg.n_ctx}")
        eos = model.tokenizer.eos_token_id
        banned = () if settings.special_tokens else tuple(model.tokenizer.all_special_ids)
        if hf_model is None:
            token_ids, logprobs = _sampling_loop(_hooked_steps(model), prompt_ids, model.cfg.d_vocab_out, settings,
                                                 on_token, eos, banned)
        else:
            device = next(hf_model.parameters()).device
            token_ids, logprobs = _sampling_loop(_hf_steps(hf_model), prompt_ids.to(device),
                                                 hf_model.config.vocab_size, settings, on_token, eos, banned)
    tokenizer = model.tokenizer
    return Generation(prompt=prompt, prompt_ids=prompt_ids.tolist(), token_ids=token_ids,
                      tokens=new_token_texts(tokenizer, prompt_ids.tolist(), token_ids), text=tokenizer.decode(token_ids),
                      logprobs=logprobs, seed=settings.seed)


def _sampling_loop(next_logits: Callable[[Tensor], Tensor], prompt_ids: Tensor, d_vocab: int,
                   settings: SamplingSettings, on_token: Callable[[int], None] | None,
                   eos: int | None, banned: tuple[int, ...] = ()) -> tuple[list[int], list[float]]:
    """New token ids and their log-probabilities; prompt_ids [n_prompt] on the model's device. `next_logits`
    takes the new positions ([1, n_prompt], then [1, 1]), extends its model's KV cache and returns the last
    position's logits [d_vocab]: `_hooked_steps` or `_hf_steps`, so both models make the same draws. `banned`
    token ids are never drawn (their logits set to -inf before sampling; the log-probability is the model's)."""
    device = prompt_ids.device
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    counts = torch.bincount(prompt_ids, minlength=d_vocab).float()  # [d_vocab]
    step_input = prompt_ids[None]  # [1, n_prompt], then [1, 1]
    token_ids: list[int] = []
    logprobs: list[float] = []
    for _ in range(settings.max_new_tokens):
        logits = next_logits(step_input)
        allowed = logits
        if banned:
            allowed = logits.clone()
            allowed[list(banned)] = -torch.inf
        token = sample_next_token(allowed, counts, settings, generator)
        token_ids.append(token)
        logprobs.append(float(logits.float().log_softmax(-1)[token]))
        if on_token is not None:
            on_token(token)
        if settings.stop_at_eos and token == eos:
            break
        counts[token] += 1
        step_input = torch.tensor([[token]], device=device)
    return token_ids, logprobs


def _hooked_steps(model: Any) -> Callable[[Tensor], Tensor]:
    """`next_logits` on the HookedTransformer, with TransformerLens's KV cache."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)

    def next_logits(step_input: Tensor) -> Tensor:
        # An explicit all-ones mask: TransformerLens would otherwise mask a generated token equal to the pad token.
        residual = model(step_input, past_kv_cache=cache, attention_mask=torch.ones_like(step_input),
                         stop_at_layer=model.cfg.n_layers)
        return last_position_logits(model, residual)

    return next_logits


def _hf_steps(hf_model: Any) -> Callable[[Tensor], Tensor]:
    """`next_logits` on the `transformers` model: its own KV cache (created by the first pass, sliding windows
    included), logits of the last position only (`logits_to_keep=1`)."""
    cache = None

    def next_logits(step_input: Tensor) -> Tensor:
        nonlocal cache
        out = hf_model(input_ids=step_input, cache=cache, use_cache=True, logits_to_keep=1)
        cache = out.cache
        return out.logits[0, -1]  # [d_vocab]

    return next_logits


def last_position_logits(model: Any, residual: Tensor) -> Tensor:
    """Logits [d_vocab] of the last position from the residual after the last block, [1, pos, d_model]: ln_final
    and unembed (their hooks fire, on that position only) as TransformerLens's forward does, but without its
    `W_U.T.contiguous()` per call, a 154 MB copy at gpt2-small (0.1–0.3 s a token on the CI CPU)."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    x = residual[:, -1:]
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x)
    unembed = model.unembed
    logits = unembed.hook_out(unembed.hook_in(x) @ unembed.W_U + unembed.b_U)
    return apply_softcap(logits, model.cfg.output_logits_soft_cap)[0, -1]


def generate_steered(arm: LoadedArm, coefficients: Mapping[int, float], prompt: str = PAPER_PROMPT,
                     settings: SamplingSettings = PAPER_SAMPLING,
                     on_token: Callable[[int], None] | None = None) -> Generation:
    """`generate` with Σ coefficient × W_dec[feature] / ‖W_dec[feature]‖ added at the arm's SAE hook; empty
    coefficients: unsteered. Runs the arm's `transformers` model when it has one."""
    coefficients = {int(f): float(c) for f, c in coefficients.items()}
    if not coefficients:
        return generate(arm.model, prompt, settings, on_token, arm.hf_model)
    vector = steering_vector(arm.sae.W_dec, coefficients)
    with steering(arm.model, arm.hook_name, vector, arm.hf_model):
        generation = generate(arm.model, prompt, settings, on_token, arm.hf_model)
    return replace(generation, coefficients=coefficients)


def compare_steering(arm: LoadedArm, coefficients: Mapping[int, float], prompt: str = PAPER_PROMPT,
                     settings: SamplingSettings = PAPER_SAMPLING) -> SteeringComparison:
    """Unsteered and steered generations with the same prompt, settings and seed."""
    return SteeringComparison(unsteered=generate_steered(arm, {}, prompt, settings),
                              steered=generate_steered(arm, coefficients, prompt, settings))


@torch.inference_mode()
def next_token_shift(arm: LoadedArm, coefficients: Mapping[int, float], prompt: str, token_ids: Sequence[int],
                     prepend_bos: bool = True) -> NextTokenShift:
    """How steering (at every prompt position) moves the log-probability of `token_ids` (e.g. the feature's top
    tokens) at the position after `prompt`."""
    model = arm.model
    ids = list(dict.fromkeys(int(t) for t in token_ids))  # distinct, in the given order
    with model_lock(model):
        tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)  # [1, n_prompt]
        clean = _next_logprobs(model, tokens)  # [d_vocab]
        with steering(model, arm.hook_name, steering_vector(arm.sae.W_dec, coefficients)):
            steered = _next_logprobs(model, tokens)
    index = torch.tensor(ids, dtype=torch.long, device=clean.device)
    before, after = clean[index], steered[index]
    set_change = float(torch.logsumexp(after, 0) - torch.logsumexp(before, 0)) if ids else float("nan")
    return NextTokenShift(ids, before.tolist(), after.tolist(), (after - before).tolist(), set_change)


def _next_logprobs(model: Any, tokens: Tensor) -> Tensor:
    """Log-probabilities [d_vocab] of the token after `tokens` [1, pos]."""
    residual = model(tokens, attention_mask=torch.ones_like(tokens), stop_at_layer=model.cfg.n_layers)
    return last_position_logits(model, residual).float().log_softmax(-1)


def text_words(text: str) -> list[str]:
    """The valid words of a text, in order, repeats kept: split on whitespace, surrounding ASCII punctuation
    stripped ("heart." → "heart"), then `core.words.normalize_token` (lower-case ASCII letters only; "heart-rate",
    "don't", "123" are not words)."""
    words = (normalize_token(piece.strip(string.punctuation)) for piece in text.split())
    return [word for word in words if word is not None]


def feature_word_weights(top_tokens: Sequence[str], top_values: Sequence[float], kv: Any) -> dict[str, float]:
    """A feature's valid top words → weight. Tokens as the tokenizer spells them ("Ġheart") or as text (" heart");
    valid: `normalize_token` gives a word, the embedding has it, and the value (projection) is > 0 (a token the
    feature does not promote would point the target away from its word). Case and space variants are one word
    with the larger weight, as in `core.coherence`."""
    weights: dict[str, float] = {}
    for token, value in zip(top_tokens, top_values):
        word = normalize_token(token)
        if word is not None and value > 0 and word in kv.key_to_index:
            weights[word] = max(weights.get(word, 0.0), float(value))
    return weights


def semantic_similarity(text: str, top_tokens: Sequence[str], top_values: Sequence[float], kv: Any) -> float:
    """The paper's steering score: how close an output text is in meaning to a feature's top tokens.

        similarity = cos( (1/n) Σ_{w ∈ W} ê(w),  Σ_{v ∈ V} a_v ê(v) )

    W: the text's valid words embedded in `kv`, every occurrence counted (`text_words`); ê: unit embedding;
    V, a_v: the feature's valid top words and their weights, the projection values (`feature_word_weights`),
    which must come from the same arm's decoder projection (the authors scored the base model against the
    fine-tuned model's tokens). In [-1, 1]; NaN (no score, never 0) when W or V is empty. Scale-free: the mean
    over W and the weights' scale do not change it. (The authors' notebook compared mean-pooled bert-base-uncased
    states of the text and of the joined top tokens, unweighted; this uses the study's word embedding instead,
    as coherence does.)"""
    target = feature_word_weights(top_tokens, top_values, kv)
    words = [word for word in text_words(text) if word in kv.key_to_index]
    if not target or not words:
        return float("nan")

    def unit_embeddings(some_words: Iterable[str]) -> np.ndarray:  # [n, dim], float64
        return unit_rows(np.stack([kv[w] for w in some_words]).astype(np.float64))

    text_vector = unit_embeddings(words).mean(0)
    target_vector = np.array(list(target.values())) @ unit_embeddings(target)
    denominator = np.linalg.norm(text_vector) * np.linalg.norm(target_vector)
    return float(text_vector @ target_vector / denominator) if denominator > 0 else float("nan")
