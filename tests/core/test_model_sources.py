"""Arms of any family from a folder or a GGUF file, and the bad inputs around them: each one line, exit 2."""

import pytest
import torch

from core.config import ArmConfig
from core.errors import StudyInputError
from core.loading import load_arm
from factories import build_sae_folder, byte_tokenizer, study_toml
from tiny_models import tiny_hf_model


def save_tiny(folder, architecture):
    tokenizer = byte_tokenizer()
    model = tiny_hf_model(architecture, vocab_size=len(tokenizer))
    model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("llama") / "model", "LlamaForCausalLM")


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.1.hook_mlp_out",
                                  "blocks.0.hook_attn_out"])
def test_a_llama_arm_loads_with_an_sae_at_each_hook_kind(llama, tmp_path, hook):
    """An SAE trained on raw activations (no model_from_pretrained_kwargs) reads transformers' own hidden state."""
    sae = build_sae_folder(tmp_path / "sae", d_in=32, hook_name=hook, model_from_pretrained_kwargs={"fold_ln": True})
    arm = load_arm(ArmConfig("base", str(llama), sae_path=str(sae)), "cpu")
    assert (arm.hook_name, arm.processing["center_writing_weights"]) == (hook, False)
    assert arm.model.cfg.original_architecture == "LlamaForCausalLM"


def test_an_sae_without_processing_metadata_reads_raw_activations(llama, tmp_path):
    from sae_lens import SAE

    sae_dir = build_sae_folder(tmp_path / "sae", d_in=32, hook_name="blocks.1.hook_resid_pre")
    sae = SAE.load_from_disk(str(sae_dir))
    sae.cfg.metadata.model_from_pretrained_kwargs = {}
    sae.save_model(str(sae_dir))
    arm = load_arm(ArmConfig("base", str(llama), sae_path=str(sae_dir)), "cpu")
    assert arm.processing["center_writing_weights"] is False


@pytest.mark.parametrize("hook, message", [
    ("blocks.1.attn.hook_z", "'blocks.1.attn.hook_z', which cannot be projected onto the vocabulary"),
    ("blocks.0.mlp.hook_post", "'blocks.0.mlp.hook_post', which cannot be projected"),
    ("blocks.5.hook_resid_pre", "does not have"),
])
def test_an_sae_at_a_hook_the_product_cannot_use_is_one_line(llama, tmp_path, hook, message):
    sae = build_sae_folder(tmp_path / "sae", d_in=32, hook_name=hook)
    with pytest.raises(StudyInputError, match=message) as err:
        load_arm(ArmConfig("base", str(llama), sae_path=str(sae)), "cpu")
    assert "\n" not in str(err.value)


def test_an_sae_of_another_width_is_one_line(llama, tmp_path):
    sae = build_sae_folder(tmp_path / "sae", d_in=48, hook_name="blocks.1.hook_resid_pre")
    with pytest.raises(StudyInputError, match="d_in=48 at blocks.1.hook_resid_pre but the model gives 32"):
        load_arm(ArmConfig("base", str(llama), sae_path=str(sae)), "cpu")


def test_an_unknown_architecture_is_exit_2_naming_the_known_ones(tmp_path, capsys):
    from transformers import OPTConfig, OPTForCausalLM

    from precompute.cli import main

    tokenizer = byte_tokenizer()
    OPTForCausalLM(OPTConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                             num_attention_heads=2, word_embed_proj_dim=16)).save_pretrained(str(tmp_path / "opt"))
    tokenizer.save_pretrained(str(tmp_path / "opt"))
    sae = build_sae_folder(tmp_path / "sae", d_in=16, hook_name="blocks.0.hook_resid_pre")
    (tmp_path / "study.toml").write_text(study_toml([{"name": "base", "model": str(tmp_path / "opt"),
                                                       "sae_path": str(sae)}]))
    capsys.readouterr()  # save_pretrained's progress bar
    assert main(["check", "--config", str(tmp_path / "study.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "model architecture OPTForCausalLM is not supported (supported: " in err and "Gemma2ForCausalLM" in err
    assert len(err.splitlines()) == 1


def write_gguf_without_a_model(path):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch="embeddings")
    writer.add_tensor("vectors", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("content, message", [
    (None, "is a GGUF file but not a causal language model"),
    (b"not a gguf at all", "is not a GGUF file"),
])
def test_a_gguf_that_is_not_a_model_is_one_line(tmp_path, content, message):
    path = tmp_path / "thing.gguf"
    if content is None:
        write_gguf_without_a_model(path)
    else:
        path.write_bytes(content)
    sae = build_sae_folder(tmp_path / "sae", d_in=32, hook_name="blocks.0.hook_resid_pre")
    with pytest.raises(StudyInputError, match=rf"arms\[base\]\.model: .*{message}") as err:
        load_arm(ArmConfig("base", str(path), sae_path=str(sae)), "cpu")
    assert "\n" not in str(err.value)


def test_generation_of_a_loaded_gemma2_arm_is_deterministic_per_seed(tmp_path):
    """Soft-capped logits and sliding windows through the arm's own loading path."""
    from core.steering import SamplingSettings, generate

    folder = save_tiny(tmp_path / "gemma2", "Gemma2ForCausalLM")
    sae = build_sae_folder(tmp_path / "sae", d_in=32, hook_name="blocks.1.hook_resid_pre")
    arm = load_arm(ArmConfig("base", str(folder), sae_path=str(sae)), "cpu")
    assert arm.model.cfg.output_logits_soft_cap == 3.0 and arm.processing["center_unembed"] is True
    settings = SamplingSettings(max_new_tokens=15, seed=7)
    first, second = generate(arm.model, "the kidney", settings), generate(arm.model, "the kidney", settings)
    assert first.token_ids == second.token_ids and all(torch.isfinite(torch.tensor(first.logprobs)))


def test_a_tokenizer_without_bos_leads_rows_with_its_eos(tmp_path):
    """Qwen's tokenizers have no BOS: corpus rows and prompts start with <|endoftext|>, as GPT-2's do."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from core.corpus import pack_rows

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["the heart and the kidney"] * 20, vocab_size=280, special_tokens=["<|endoftext|>"])
    PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>").save_pretrained(str(tmp_path))
    tiny_hf_model("Qwen2ForCausalLM", vocab_size=280).save_pretrained(str(tmp_path))
    sae = build_sae_folder(tmp_path / "sae", d_in=32, hook_name="blocks.1.hook_resid_pre")
    arm = load_arm(ArmConfig("base", str(tmp_path), sae_path=str(sae)), "cpu")
    eos = arm.model.tokenizer.eos_token_id
    assert arm.model.to_tokens("the heart")[0, 0] == eos
    assert (pack_rows(["the heart and the kidney"] * 10, arm.model.tokenizer, 8)[:, 0] == eos).all()


CHAT = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


@pytest.mark.parametrize("specials, bos, eos, template, want_bos", [
    # SmolLM2-Instruct: BOS opens a chat turn; its plain end-of-text leads rows (the EOS stays the separator).
    (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_start|>", "<|im_end|>", CHAT, "<|endoftext|>"),
    # Qwen2-Instruct: no BOS at all.
    (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", CHAT, "<|endoftext|>"),
    # Llama 3-Instruct spelling, the template writing the BOS through a variable, not literally: BOS stays.
    (["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"], "<|begin_of_text|>", "<|im_end|>", CHAT,
     "<|begin_of_text|>"),
    # A base model (no template): its own BOS stays, even when it has a plain end-of-text besides.
    (["<|endoftext|>", "<s>", "</s>"], "<s>", "</s>", None, "<s>"),
    # A turn opener but no plain end-of-text in the vocabulary: nothing better to use, it stays.
    (["<|im_start|>", "<|im_end|>"], "<|im_start|>", "<|im_end|>", CHAT, "<|im_start|>"),
])
def test_rows_of_an_instruct_tokenizer_start_with_its_plain_end_of_text(specials, bos, eos, template, want_bos):
    """SmolLM2-Instruct's BOS `<|im_start|>` opens a chat turn: its text read worse after it than after
    `<|endoftext|>` (perplexity 130.5 against 118.7). Rows and prompts start with the plain token; documents are
    still joined by the tokenizer's EOS."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from core.corpus import pack_rows
    from core.models.sources import use_plain_text_bos

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["the heart and the kidney"] * 20, vocab_size=280, special_tokens=specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=bos, eos_token=eos)
    tokenizer.chat_template = template
    use_plain_text_bos(tokenizer)
    assert (tokenizer.bos_token, tokenizer.eos_token) == (want_bos, eos)
    rows = pack_rows(["the heart", "the kidney"] * 8, tokenizer, 8)
    ids = tokenizer.convert_tokens_to_ids
    assert (rows[:, 0] == ids(want_bos)).all()
    stream = rows[:, 1:].flatten().tolist()
    doc = tokenizer("the heart", add_special_tokens=False)["input_ids"]
    assert stream[len(doc)] == ids(eos)  # the first document ends with the separator
    assert set(stream) & {ids(t) for t in specials} == {ids(eos)}  # no other special token inside the text
    if template is not None:  # the chat template is left as it was (the explainer formats with it)
        assert "<|im_start|>" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_check_names_each_arms_architecture(llama, tmp_path, capsys):
    from precompute.cli import main

    sae = build_sae_folder(tmp_path / "sae", d_in=32, hook_name="blocks.1.hook_mlp_out")
    (tmp_path / "study.toml").write_text(study_toml([{"name": "base", "model": str(llama), "sae_path": str(sae)}]))
    assert main(["check", "--config", str(tmp_path / "study.toml")]) == 0
    assert f"base: {llama} (LlamaForCausalLM) + SAE" in capsys.readouterr().out
