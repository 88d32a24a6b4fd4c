"""HookedTransformerConfig fields that most decoder families read the same way from a `transformers` config."""

from __future__ import annotations

from typing import Any

from core.errors import StudyInputError


def head_dim(hf_cfg: Any) -> int:
    """Per-head width: `head_dim` when the config sets one (Gemma, Qwen3, Mistral), else hidden / heads."""
    explicit = getattr(hf_cfg, "head_dim", None)
    return int(explicit) if explicit else hf_cfg.hidden_size // hf_cfg.num_attention_heads


def rope_theta(hf_cfg: Any, layer_type: str | None = None, default: float = 10000.0) -> float:
    """Rotary base. transformers 5 keeps it in `rope_parameters` (per layer type for Gemma 3), older configs
    in `rope_theta`."""
    params = getattr(hf_cfg, "rope_parameters", None) or {}
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta if theta is not None else getattr(hf_cfg, "rope_theta", None) or default)


def rope_scaling_type(hf_cfg: Any) -> str:
    params = getattr(hf_cfg, "rope_parameters", None) or getattr(hf_cfg, "rope_scaling", None) or {}
    if isinstance(params.get("full_attention"), dict):
        params = params["full_attention"]
    return str(params.get("rope_type") or params.get("type") or "default")


def kv_heads(hf_cfg: Any) -> int | None:
    """Grouped-query key/value heads, or None when every head has its own (TransformerLens's convention)."""
    n_kv = getattr(hf_cfg, "num_key_value_heads", None)
    return None if n_kv in (None, hf_cfg.num_attention_heads) else int(n_kv)


def rotary_decoder(hf_cfg: Any, rope_types: tuple[str, ...] = ("default",)) -> dict[str, Any]:
    """The Llama-style block (RMSNorm, rotary, gated MLP, no biases) that Llama, Mistral, Qwen and Gemma share.
    A rotary scaling the family does not read (linear, dynamic, yarn) is refused rather than run unscaled."""
    scaling = rope_scaling_type(hf_cfg)
    if scaling not in rope_types:
        raise StudyInputError(f"rotary scaling {scaling!r} of this {hf_cfg.model_type} model is not supported "
                              f"(supported: {', '.join(rope_types)})")
    d_head = head_dim(hf_cfg)
    return {
        "d_model": hf_cfg.hidden_size,
        "d_head": d_head,
        "n_heads": hf_cfg.num_attention_heads,
        "n_key_value_heads": kv_heads(hf_cfg),
        "d_mlp": hf_cfg.intermediate_size,
        "n_layers": hf_cfg.num_hidden_layers,
        "n_ctx": hf_cfg.max_position_embeddings,
        "eps": hf_cfg.rms_norm_eps,
        "d_vocab": hf_cfg.vocab_size,
        "act_fn": getattr(hf_cfg, "hidden_act", None),  # Gemma 2 and 3 set their own
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "rotary_dim": d_head,
        "rotary_adjacent_pairs": False,
        "rotary_base": rope_theta(hf_cfg),
        "final_rms": True,
        "gated_mlp": True,
    }


def sliding_windows(hf_cfg: Any) -> dict[str, Any]:
    """Local ("sliding_attention") and global layers from `layer_types`; {} when every layer is global."""
    layer_types = getattr(hf_cfg, "layer_types", None)
    window = getattr(hf_cfg, "sliding_window", None)
    if not layer_types or not window or "sliding_attention" not in layer_types:
        return {}
    return {"use_local_attn": True, "window_size": int(window),
            "attn_types": ["local" if kind == "sliding_attention" else "global" for kind in layer_types]}
