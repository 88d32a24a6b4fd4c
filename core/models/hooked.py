"""A `transformers` causal LM → a HookedTransformer, through its family's converter, processed as the SAE needs.

HookedTransformer by converter, or TransformerLens's TransformerBridge? Measured with bench/bench_models.py
(a random Llama of SmolLM2's block: 4 layers, width 256, GQA, tied embeddings, vocabulary 8,192; fp32; AMD EPYC,
AVX-512, 2 threads on cores shared with other jobs), fastest of 5 interleaved rounds, ratios to transformers:

                                      HookedTransformer   Bridge           bare transformers
  activations, 8 × 128 tokens to      0.218 s (2.37×)     0.099 s (1.08×)  0.092 s (the same 3 layers)
    blocks.2.hook_resid_post
  50 greedy tokens, KV cache          0.749 s (1.84×)     0.531 s (1.30×)  0.408 s (`generate`)
  parameters + buffers                28.6 MB             20.0 MB          20.0 MB (tied W_E/W_U kept once)

Load from other jobs moves these a lot (a quiet standalone loop once gave 37 ms for ours against 44 ms for the
Bridge; loaded runs gave ours 2–10× transformers): the HookedTransformer materialises its attention scores and
masks, and suffers most when memory bandwidth is shared. On the real SmolLM2-135M (GGUF, load average ~9) ours
took 1.3–2.4× transformers' time for 20 greedy tokens.
The Bridge is faster (it runs transformers' own modules, SDPA attention included) and lighter, and by these
figures ours misses issue 13's activation-pass target (≥ 0.6× transformers' throughput) where the Bridge meets it.
The HookedTransformer is kept for now because everything downstream is written against its interface and is
checked on it for all nine families (log-probs, every hook kind, greedy generation equal to transformers'): the
activation pass and quality's spliced loss (`run_with_cache` / `run_with_hooks` with `stop_at_layer`), the
projection's `W_U`, and weight processing identical to `HookedTransformer.from_pretrained` (gpt2-small-res-jb).
Tried on a Bridge of the same Llama: `cfg.device / d_vocab / n_layers / n_ctx`, `W_U`, `to_tokens`,
`hook_activations` and `sae_quality` work unchanged. Generation no longer runs here: steering generates with the
`transformers` model itself and a torch hook at the module each family names (`core.steering`,
`core.models.hf_hooks`), because this model's per-token forward made 50 steered SmolLM2 tokens 3.0× `generate`.
A move to the Bridge is this module plus per-family hook checks (is its `hook_mlp_out` before or after Gemma 2's
post-MLP norm?).
"""

from __future__ import annotations

from typing import Any

import torch

from core.models.registry import architecture_name, family_for


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
