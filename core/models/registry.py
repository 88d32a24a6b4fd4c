"""The one place that knows model architectures: a `ModelFamily` per family, registered by the HF
`config.architectures[0]` names it accepts. Adding a family is one file that calls `register`.

A family turns a `transformers` config into `HookedTransformerConfig` fields (`tl_config`) and a loaded
`transformers` model into a TransformerLens state dict (`convert`, TransformerLens's own weight converter), and
names the `transformers` submodules where each hook's activation is (`hf_layers`, `hf_attn_out`, `hf_mlp_out`:
steering generates with the `transformers` model itself, `core.models.hf_hooks`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import StudyInputError


@dataclass(frozen=True)
class ModelFamily:
    """How one architecture family becomes a HookedTransformer."""

    name: str  # "Llama", shown to people
    architectures: tuple[str, ...]  # HF `architectures[0]` names this family loads
    tl_config: Callable[[Any], dict[str, Any]]  # HF config -> HookedTransformerConfig fields
    convert: Callable[[Any, Any], dict[str, Any]]  # (HF model, HookedTransformerConfig) -> TL state dict
    # The `transformers` modules whose outputs are what the hooks name: the decoder blocks (input of block L =
    # blocks.L.hook_resid_pre, its output = hook_resid_post), and in a block what attention and the MLP add to
    # the residual stream (hook_attn_out, hook_mlp_out: after Gemma 2/3's post-norms, as TransformerLens's are).
    hf_layers: str = "model.layers"
    hf_attn_out: str = "self_attn"
    hf_mlp_out: str = "mlp"

    def __post_init__(self) -> None:
        if not self.architectures:
            raise ValueError(f"family {self.name} names no architectures")


_FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    """Make `family` the loader of each of its architectures; a name claimed twice is a programming error."""
    for architecture in family.architectures:
        if architecture in _FAMILIES and _FAMILIES[architecture] is not family:
            raise ValueError(f"{architecture} is already registered by {_FAMILIES[architecture].name}")
        _FAMILIES[architecture] = family
    return family


def known_architectures() -> list[str]:
    return sorted(_FAMILIES)


def architecture_name(hf_config: Any) -> str:
    """`architectures[0]`, or for a config that names none (one read from a GGUF file) the causal-LM class
    transformers maps its `model_type` to ("llama" -> LlamaForCausalLM); "?" when neither says."""
    named = getattr(hf_config, "architectures", None)
    if named:
        return named[0]
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(hf_config, "model_type", ""), "?")


def family_for(architecture: str) -> ModelFamily:
    """The family that loads `architecture`; an unknown one is a user error naming the known ones."""
    family = _FAMILIES.get(architecture)
    if family is None:
        raise StudyInputError(
            f"model architecture {architecture} is not supported (supported: {', '.join(known_architectures())})"
        )
    return family
