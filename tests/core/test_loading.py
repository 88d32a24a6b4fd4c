"""Loading is checked, not hoped: logits equal transformers', processing is the SAE's, errors are clear."""

from pathlib import Path

import pytest
import torch

from core.config import ArmConfig
from core.errors import StudyInputError
from core.loading import (DEFAULT_PROCESSING, hooked_transformer_from_hf, load_arm, load_hf_model, processing_for,
                          verify_against_hf, weights_fingerprint)
from factories import (build_gpt2_folder, build_sae, build_sae_folder, byte_tokenizer, gpt2_tokenizer,
                       perturb_gpt2_folder, study_toml)

RAW = {key: False for key in DEFAULT_PROCESSING}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = byte_tokenizer()
    base = build_gpt2_folder(root / "base", tokenizer)
    return {
        "base": base,
        "finetuned": perturb_gpt2_folder(base, root / "finetuned"),
        "sae": build_sae_folder(root / "sae", d_in=32, hook_name="blocks.1.hook_resid_pre"),
    }


def tokens(d_vocab: int) -> torch.Tensor:
    return torch.randint(0, d_vocab, (3, 12))


def test_logits_equal_transformers(tiny):
    hf, tok = load_hf_model(str(tiny["base"]))
    toks = tokens(hf.config.vocab_size)
    with torch.no_grad():
        reference = hf(toks).logits
        raw = hooked_transformer_from_hf(hf, tok, RAW, "cpu")(toks)
        processed = hooked_transformer_from_hf(hf, tok, DEFAULT_PROCESSING, "cpu")(toks)
    assert (raw - reference).abs().max() < 1e-5
    # Processing (centred unembedding) moves logits by a constant per position: log-probs are unchanged.
    assert (processed.log_softmax(-1) - reference.log_softmax(-1)).abs().max() < 1e-5
    assert (processed - reference).abs().max() > 1e-4


def test_attention_weights_need_no_copy_per_forward_pass(tiny):
    """TransformerLens reshapes W_Q/W_K/W_V to (head_index d_head) × d_model and W_O to d_model × (head_index
    d_head) on every pass; after loading those reshapes are views of the parameters (same memory), not copies,
    and the weights keep their shapes (the logits test above shows they keep their values)."""
    import einops

    hf, tok = load_hf_model(str(tiny["base"]))
    model = hooked_transformer_from_hf(hf, tok, DEFAULT_PROCESSING, "cpu")
    n_heads, d_model, d_head = model.cfg.n_heads, model.cfg.d_model, model.cfg.d_head
    for block in model.blocks:
        for name in ("W_Q", "W_K", "W_V"):
            weight = getattr(block.attn, name)
            assert weight.shape == (n_heads, d_model, d_head)
            as_linear = einops.rearrange(weight, "head_index d_model d_head -> (head_index d_head) d_model")
            assert as_linear.data_ptr() == weight.data_ptr() and as_linear.is_contiguous()
        W_O = block.attn.W_O
        assert W_O.shape == (n_heads, d_head, d_model)
        as_linear = einops.rearrange(W_O, "head_index d_head d_model -> d_model (head_index d_head)")
        assert as_linear.data_ptr() == W_O.data_ptr() and as_linear.is_contiguous()


def test_processing_gives_the_activations_the_sae_was_trained_on(tiny):
    """gpt2-small-res-jb was trained with centred writing weights: resid = raw resid - its mean over d_model."""
    hf, tok = load_hf_model(str(tiny["base"]))
    toks = tokens(hf.config.vocab_size)
    with torch.no_grad():
        hidden = hf(toks, output_hidden_states=True).hidden_states
        _, processed = hooked_transformer_from_hf(hf, tok, DEFAULT_PROCESSING, "cpu").run_with_cache(toks)
        _, raw = hooked_transformer_from_hf(hf, tok, RAW, "cpu").run_with_cache(toks)
    for layer in range(2):
        name = f"blocks.{layer}.hook_resid_pre"
        centred = hidden[layer] - hidden[layer].mean(-1, keepdim=True)
        assert (processed[name] - centred).abs().max() < 1e-5
        assert (raw[name] - hidden[layer]).abs().max() < 1e-5
        assert (processed[name] - hidden[layer]).abs().max() > 1e-3  # the two really differ


def test_processing_follows_sae_metadata():
    assert processing_for(build_sae(model_from_pretrained_kwargs={"center_writing_weights": True})) == DEFAULT_PROCESSING
    flags = processing_for(build_sae(model_from_pretrained_kwargs={"center_writing_weights": False, "n_devices": 1}))
    assert flags == {**DEFAULT_PROCESSING, "center_writing_weights": False}


def test_finetuned_arm_is_not_base(tiny):
    """The authors' strict=False bug loaded base weights as the fine-tuned model; ours must not."""
    arms = {name: load_arm(ArmConfig(name, str(tiny[name]), sae_path=str(tiny["sae"])), "cpu")
            for name in ("base", "finetuned")}
    assert weights_fingerprint(arms["base"].model) != weights_fingerprint(arms["finetuned"].model)
    hf_finetuned, _ = load_hf_model(str(tiny["finetuned"]))
    toks = tokens(hf_finetuned.config.vocab_size)
    with torch.no_grad():
        reference = hf_finetuned(toks).logits.log_softmax(-1)
        ours = arms["finetuned"].model(toks).log_softmax(-1)
        base = arms["base"].model(toks).log_softmax(-1)
    assert (ours - reference).abs().max() < 1e-5
    assert (base - reference).abs().max() > 1e-2


def test_verify_catches_weights_that_did_not_load(tiny):
    from transformer_lens import HookedTransformer

    hf, tok = load_hf_model(str(tiny["base"]))
    loaded = hooked_transformer_from_hf(hf, tok, DEFAULT_PROCESSING, "cpu")
    assert verify_against_hf(loaded, hf) < 1e-5
    unloaded = HookedTransformer(loaded.cfg)  # fresh init: what strict=False with wrong key names leaves
    with pytest.raises(RuntimeError, match="disagrees with transformers"):
        verify_against_hf(unloaded, hf)


def test_loaded_arm_reads_hook_and_width_from_the_sae(tiny):
    arm = load_arm(ArmConfig("base", str(tiny["base"]), sae_path=str(tiny["sae"])), "cpu")
    assert (arm.hook_name, arm.d_sae, arm.device) == ("blocks.1.hook_resid_pre", 64, "cpu")


@pytest.mark.parametrize(
    "sae_kwargs, model_key, message",
    [
        ({"d_in": 48}, "base", "d_in=48"),
        ({"hook_name": "blocks.7.hook_resid_pre"}, "base", "does not have"),
        ({}, "missing", "not a model folder"),
    ],
)
def test_bad_arm_gives_one_clear_line(tiny, tmp_path, sae_kwargs, model_key, message):
    sae = build_sae_folder(tmp_path / "sae", **{"d_in": 32, **sae_kwargs})
    model = str(tiny.get(model_key, tmp_path / "no-model"))
    with pytest.raises(StudyInputError, match=message) as err:
        load_arm(ArmConfig("base", model, sae_path=str(sae)), "cpu")
    assert "\n" not in str(err.value)


def test_missing_sae_folder(tiny, tmp_path):
    with pytest.raises(StudyInputError, match="not an SAE folder"):
        load_arm(ArmConfig("base", str(tiny["base"]), sae_path=str(tmp_path / "nothing")), "cpu")


def test_cuda_without_gpu_is_a_user_error(monkeypatch):
    from core import loading

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loading.resolve_device("auto") == "cpu"
    with pytest.raises(StudyInputError, match="no GPU"):
        loading.resolve_device("cuda")


def test_real_gpt2_tokenizer_path(tmp_path):
    """The real-study path: GPT-2's own tokenizer (50,257 tokens) beside a GPT-2-architecture model."""
    tokenizer = gpt2_tokenizer()
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    folder = build_gpt2_folder(tmp_path / "gpt2ish", tokenizer, n_layer=1, n_embd=16, n_head=2)
    sae = build_sae_folder(tmp_path / "sae", d_in=16, hook_name="blocks.0.hook_resid_pre")
    arm = load_arm(ArmConfig("base", str(folder), sae_path=str(sae)), "cpu")
    assert arm.model.cfg.d_vocab == 50257
    assert arm.model.to_tokens("Hello world").tolist() == [[50256, 15496, 995]]  # BOS prepended, as in training


def test_check_refuses_two_arms_with_identical_weights(tiny, tmp_path, capsys):
    from precompute.cli import main

    arms = [{"name": name, "model": str(tiny["base"]), "sae_path": str(tiny["sae"])} for name in ("base", "finetuned")]
    path = tmp_path / "study.toml"
    path.write_text(study_toml(arms))
    assert main(["check", "--config", str(path)]) == 2
    assert "identical weights" in capsys.readouterr().err
    arms[1]["model"] = str(tiny["finetuned"])
    path.write_text(study_toml(arms))
    assert main(["check", "--config", str(path)]) == 0


def test_unreachable_pretrained_sae_is_one_line(monkeypatch):
    """Offline, a SAELens release cannot be fetched: one line naming the arm and the release, not a traceback."""
    from sae_lens import SAE

    def offline(*args, **kwargs):
        raise OSError("We cannot find the requested files in the local cache.\nPlease check your connection.")

    monkeypatch.setattr(SAE, "from_pretrained", offline)
    arm = ArmConfig("base", "gpt2", sae_release="gpt2-small-res-jb", sae_id="blocks.8.hook_resid_pre")
    with pytest.raises(StudyInputError, match=r"arms\[base\]: could not load SAE gpt2-small-res-jb") as err:
        load_arm(arm, "cpu")
    assert "\n" not in str(err.value)
