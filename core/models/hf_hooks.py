"""Where a TransformerLens hook's activation is in the `transformers` model, and a plain torch hook that adds a
vector there: steering generates with the `transformers` model itself (`core.steering`), so it must add the
steering vector exactly where the HookedTransformer's hook would.

    blocks.L.hook_resid_pre    input of decoder block L            (forward pre-hook)
    blocks.L.hook_resid_post   output of decoder block L           (forward hook)
    blocks.L.hook_attn_out     output of the family's `hf_attn_out` (attention; Gemma 2/3: its post-norm)
    blocks.L.hook_resid_mid    the same module: resid_mid = resid_pre + attn_out, so adding to attn_out adds to
                               resid_mid (refused for parallel attention + MLP, which has no resid_mid)
    blocks.L.hook_mlp_out      output of the family's `hf_mlp_out` (the MLP; Gemma 2/3: its post-norm)

Processed weights: a HookedTransformer with `center_writing_weights` (gpt2-small-res-jb) holds every residual
activation minus its mean over d_model, and the `transformers` model the raw one. Adding v to either is the same
model: every reader of the residual stream (each block's LayerNorm, the final one) removes the mean first, so
LN(centred(r) + v) = LN(r + v). The tests check this numerically against the HookedTransformer with its hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from core.models.registry import architecture_name, family_for

RESIDUAL_SIDES = {"hook_resid_pre": "input", "hook_resid_post": "output"}


def hf_hook_point(hf_model: Any, hook_name: str) -> tuple[torch.nn.Module, str]:
    """The `transformers` submodule holding `hook_name`'s activation, and which side of it ("input": its first
    argument, "output": its output, or the first element of a tuple output)."""
    parts = hook_name.split(".")
    if not (len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit()):
        raise ValueError(f"no transformers module holds hook {hook_name!r}")
    family = family_for(architecture_name(hf_model.config))
    layers = hf_model.get_submodule(family.hf_layers)
    layer_index, kind = int(parts[1]), parts[2]
    if layer_index >= len(layers):
        raise ValueError(f"hook {hook_name!r}: the model has {len(layers)} blocks")
    layer = layers[layer_index]
    if kind in RESIDUAL_SIDES:
        return layer, RESIDUAL_SIDES[kind]
    if kind == "hook_resid_mid" and getattr(hf_model.config, "use_parallel_residual", False):
        raise ValueError(f"hook {hook_name!r}: blocks with parallel attention and MLP have no resid_mid")
    if kind in ("hook_attn_out", "hook_resid_mid"):
        return layer.get_submodule(family.hf_attn_out), "output"
    if kind == "hook_mlp_out":
        return layer.get_submodule(family.hf_mlp_out), "output"
    raise ValueError(f"no transformers module holds hook {hook_name!r}")


def add_vector_hook(hf_model: Any, hook_name: str, vector: Tensor) -> torch.utils.hooks.RemovableHandle:
    """Register a hook adding `vector` [d_model] to `hook_name`'s activation [batch, pos, d_model] at every
    position of every forward pass; the caller removes the returned handle."""
    module, side = hf_hook_point(hf_model, hook_name)
    if side == "input":
        return module.register_forward_pre_hook(_add_to_input(vector), with_kwargs=True)
    return module.register_forward_hook(_add_to_output(vector))


def _add_to_input(vector: Tensor) -> Callable[..., Any]:
    def add(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (args[0] + vector, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + vector}

    return add


def _add_to_output(vector: Tensor) -> Callable[..., Any]:
    def add(module: Any, args: tuple, output: Any) -> Any:
        if isinstance(output, tuple):  # attention: (output, weights)
            return (output[0] + vector, *output[1:])
        return output + vector

    return add
