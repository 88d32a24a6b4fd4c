"""Model architectures: a registry keyed by the HF `architectures[0]` name, one adapter file per family.

    family_for("LlamaForCausalLM") -> ModelFamily   (unknown: StudyInputError naming the known ones)
    load_hf_model(ref) -> (transformers model, tokenizer)   hub name | save_pretrained folder | .gguf file
    hooked_transformer_from_hf(hf, tok, processing, device) -> processed HookedTransformer
    verify_against_hf(model, hf) -> max |Δ log-prob|
"""

from core.models import gemma, gpt2, llama, mistral, neox, qwen  # noqa: F401  (each registers its family)
from core.models.hooked import attention_weights_as_linear_layout, hooked_transformer_from_hf, tl_config_for
from core.models.registry import ModelFamily, family_for, known_architectures, register
from core.models.sources import load_hf_model
from core.models.verify import LOGPROB_TOLERANCE, verify_against_hf

__all__ = ["ModelFamily", "family_for", "known_architectures", "register", "load_hf_model",
           "hooked_transformer_from_hf", "tl_config_for", "attention_weights_as_linear_layout",
           "verify_against_hf", "LOGPROB_TOLERANCE"]
