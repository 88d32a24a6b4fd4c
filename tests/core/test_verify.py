"""The load check reads a row as the study's rows start (BOS, then real text), never a pad id TransformerLens would
mask (issue 26: a probe that began with id 0, a left-padding tokenizer's pad, gave max |Δ log-prob| 30.8)."""

import pytest
import torch

from core.loading import NO_CENTRING
from core.models import LOGPROB_TOLERANCE, hooked_transformer_from_hf, verify_against_hf
from core.models.verify import PROBE_TEXT, verification_tokens
from factories import byte_tokenizer, left_padding_tokenizer
from tiny_models import tiny_hf_model


@pytest.fixture(scope="module")
def left_padded(tmp_path_factory):
    """A tiny Llama whose tokenizer pads on the left with pad id 0 (`<pad>` 0, `<s>` 1, `</s>` 2)."""
    tokenizer = left_padding_tokenizer(tmp_path_factory.mktemp("left-padding-tokenizer"))
    hf = tiny_hf_model("LlamaForCausalLM", vocab_size=len(tokenizer))
    return hf, hooked_transformer_from_hf(hf, tokenizer, NO_CENTRING, "cpu")


def max_logprob_diff(model, hf, probe):
    with torch.no_grad():
        return (hf(probe).logits.log_softmax(-1) - model(probe).log_softmax(-1)).abs().max().item()


def test_the_tokenizer_pads_on_the_left_with_id_0(left_padded):
    _, model = left_padded
    assert (model.tokenizer.padding_side, model.tokenizer.pad_token_id, model.tokenizer.bos_token_id) == ("left", 0, 1)


def test_the_old_fixed_probe_fails_on_a_correct_model_and_the_text_probe_passes(left_padded):
    hf, model = left_padded
    old_probe = (torch.arange(16) * 7919 % hf.config.vocab_size).unsqueeze(0)  # the probe before issue 26
    assert old_probe[0, 0] == 0  # the pad id: TransformerLens masks it, transformers reads it
    assert max_logprob_diff(model, hf, old_probe) > 100 * LOGPROB_TOLERANCE  # the bug, reproduced (3.8 here)
    body = old_probe[:, 1:]
    assert max_logprob_diff(model, hf, body) < 1e-4  # the same model agrees once no pad leads
    assert verify_against_hf(model, hf) < 1e-4


def test_the_probe_is_bos_then_the_text_with_no_pad_or_special_id(left_padded):
    hf, model = left_padded
    tokenizer = model.tokenizer
    probe = verification_tokens(tokenizer, hf.config, 16)
    assert probe.shape == (1, 16) and probe[0, 0].item() == tokenizer.bos_token_id
    special = set(tokenizer.all_special_ids) | {tokenizer.pad_token_id, 0, 1, 2}
    assert not special & set(probe[0, 1:].tolist())
    assert PROBE_TEXT.startswith(tokenizer.decode(probe[0, 1:]))
    assert tokenizer.decode(probe[0, 1:]).startswith("The patient had")


def test_a_long_probe_repeats_the_text():
    tokenizer = byte_tokenizer()
    config = tiny_hf_model("GPT2LMHeadModel", vocab_size=len(tokenizer)).config
    n_text = len(tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"])
    probe = verification_tokens(tokenizer, config, n_text + 11)[0]
    assert probe[0].item() == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert probe[1:].tolist() == (probe[1:n_text + 1].tolist() * 2)[:n_text + 10]


def test_an_instruct_tokenizer_leads_with_the_plain_end_of_text_and_is_left_as_it_was():
    """Its BOS opens a chat turn, so the rows (and the probe) start with `<|endoftext|>` (use_plain_text_bos)."""
    tokenizer = byte_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.bos_token = "<|im_start|>"
    tokenizer.chat_template = "{% for m in messages %}<|im_start|>{{ m['content'] }}{% endfor %}"
    config = tiny_hf_model("GPT2LMHeadModel", vocab_size=len(tokenizer)).config
    probe = verification_tokens(tokenizer, config, 12)[0]
    assert probe[0].item() == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") not in probe.tolist()
    assert tokenizer.bos_token == "<|im_start|>"  # the model's tokenizer is not changed by the check


def test_without_a_tokenizer_the_probe_is_the_config_bos_then_ids_that_skip_the_special_ones():
    config = tiny_hf_model("LlamaForCausalLM").config  # pad 0, BOS 1, EOS 2, 96 ids
    probe = verification_tokens(None, config, 16)[0].tolist()
    assert probe[0] == 1 and len(probe) == 16
    assert not {0, 1, 2} & set(probe[1:]) and max(probe) < 96
