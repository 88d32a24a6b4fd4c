"""The runtime check that a loaded model is the `transformers` model: equal log-probabilities on a fixed probe."""

from __future__ import annotations

from typing import Any

import torch

LOGPROB_TOLERANCE = 1e-3


@torch.no_grad()
def verify_against_hf(model: Any, hf_model: Any, n_tokens: int = 16) -> float:
    """Max |Δ log-prob| between the HookedTransformer and `transformers` on a fixed probe; raises if too large.

    Log-probabilities, not logits: weight processing (a centred unembedding) moves logits by a per-position
    constant only. A half-loaded model (the study authors' `strict=False` bug) fails loudly."""
    d_vocab = hf_model.config.vocab_size
    probe = (torch.arange(n_tokens) * 7919 % d_vocab).unsqueeze(0)  # [1, n] deterministic, spread over the vocab
    hf_device = next(hf_model.parameters()).device
    reference = hf_model(probe.to(hf_device)).logits.float().log_softmax(-1).cpu()
    ours = model(probe.to(model.cfg.device)).float().log_softmax(-1).cpu()
    diff = (reference - ours).abs().max().item()
    if not diff <= LOGPROB_TOLERANCE:  # NaN fails too
        raise RuntimeError(f"loaded model disagrees with transformers: max |Δ log-prob| {diff:.3g} > {LOGPROB_TOLERANCE}")
    return diff
