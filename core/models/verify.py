"""The runtime check that a loaded model is the `transformers` model: equal log-probabilities on a row of real text
that starts as the study's rows do."""

from __future__ import annotations

import copy
from typing import Any

import torch

from core.models.sources import use_plain_text_bos

LOGPROB_TOLERANCE = 1e-3
# Plain prose a model of any vocabulary tokenises into ordinary tokens; repeated when a probe needs more.
PROBE_TEXT = ("The patient had a fever and a dry cough for three days. She was given fluids and rest, "
              "and a week later she felt well again.")


@torch.no_grad()
def verify_against_hf(model: Any, hf_model: Any, n_tokens: int = 16) -> float:
    """Max |Δ log-prob| between the HookedTransformer and `transformers` on `verification_tokens`; raises if too large.

    Log-probabilities, not logits: weight processing (a centred unembedding) moves logits by a per-position
    constant only. A half-loaded model (the study authors' `strict=False` bug) fails loudly."""
    probe = verification_tokens(model.tokenizer, hf_model.config, n_tokens)  # [1, n_tokens]
    hf_device = next(hf_model.parameters()).device
    reference = hf_model(probe.to(hf_device)).logits.float().log_softmax(-1).cpu()
    ours = model(probe.to(model.cfg.device)).float().log_softmax(-1).cpu()
    diff = (reference - ours).abs().max().item()
    if not diff <= LOGPROB_TOLERANCE:  # NaN fails too
        raise RuntimeError(f"loaded model disagrees with transformers: max |Δ log-prob| {diff:.3g} "
                           f"> {LOGPROB_TOLERANCE}")
    return diff


def verification_tokens(tokenizer: Any, config: Any, n_tokens: int) -> torch.Tensor:
    """[1, n_tokens] token ids: the BOS the study's rows start with (`use_plain_text_bos`), then `PROBE_TEXT` in the
    model's own tokens with no pad or other special id. A pad id anywhere else would be masked by TransformerLens
    (a left-padding tokenizer masks leading pads) and not by `transformers`: issue 26's Δ of 30.8 from a probe that
    began with id 0, a SentencePiece pad. Without a tokenizer the lead is the config's BOS. If the text gives no
    ordinary id (or there is no tokenizer), the body is ids spread over the vocabulary that skip every special id."""
    d_vocab = config.vocab_size
    special = {getattr(config, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    lead, body = getattr(config, "bos_token_id", None), []
    if tokenizer is not None:
        rows_tokenizer = copy.deepcopy(tokenizer)  # the rows' BOS, without touching the model's tokenizer
        use_plain_text_bos(rows_tokenizer)
        lead = rows_tokenizer.bos_token_id
        special |= set(tokenizer.all_special_ids) | set(rows_tokenizer.all_special_ids) | {tokenizer.pad_token_id}
        body = [i for i in tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
                if i not in special and i < d_vocab]
    if not body:
        body = [i for i in range(d_vocab) if i not in special][::7] or [i for i in range(d_vocab) if i not in special]
    n_body = n_tokens - (lead is not None)
    body = (body * -(-n_body // len(body)))[:n_body]
    return torch.tensor([([lead] if lead is not None else []) + body], dtype=torch.long)
