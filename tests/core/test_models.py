"""Every registered architecture family, on a tiny random model built from a `transformers` config: the loaded
HookedTransformer equals `transformers` in log-probabilities, its hooks hold the activations they name, the
projection finds a planted feature through its unembedding, its generation equals `transformers`', and steering
through the `transformers` model (as arms generate) equals the HookedTransformer with its hook, at every hook kind."""

from functools import cache

import pytest
import torch

from core.errors import StudyInputError
from core.loading import DEFAULT_PROCESSING, NO_CENTRING, LoadedArm
from core.models import family_for, hooked_transformer_from_hf, known_architectures, verify_against_hf
from core.projection import decoder_projection_topk
from core.sae_metrics import hook_activations
from core.steering import SamplingSettings, generate, generate_steered, steering_hook
from factories import build_sae, byte_tokenizer
from tiny_models import TINY_CONFIGS, tiny_hf_model

ARCHITECTURES = list(TINY_CONFIGS)
RAW = {key: False for key in DEFAULT_PROCESSING}


def test_every_family_the_issue_names_is_registered():
    assert set(ARCHITECTURES) <= set(known_architectures())


@cache
def tokenizer():
    """A ~300-token byte-level BPE, reloaded from a folder (TransformerLens re-reads it from its name_or_path)."""
    import tempfile

    from transformers import AutoTokenizer

    folder = tempfile.mkdtemp(prefix="tiny-tokenizer-")
    byte_tokenizer().save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


@cache
def hf_model(architecture):
    model = tiny_hf_model(architecture, vocab_size=len(tokenizer()))
    model.config.bos_token_id, model.config.eos_token_id = tokenizer().bos_token_id, tokenizer().eos_token_id
    return model


@cache
def hooked(architecture, centred=False):
    processing = DEFAULT_PROCESSING if centred else NO_CENTRING
    return hooked_transformer_from_hf(hf_model(architecture), tokenizer(), processing, "cpu")


def token_rows(n_rows=2, length=20):
    """[n, length] ids, BOS first; longer than the tiny sliding windows (8), so local attention is exercised."""
    rows = torch.randint(3, len(tokenizer()), (n_rows, length), generator=torch.Generator().manual_seed(1))
    rows[:, 0] = tokenizer().bos_token_id
    return rows


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_log_probs_equal_transformers_raw_and_processed(architecture):
    rows = token_rows()
    with torch.no_grad():
        reference = hf_model(architecture)(rows).logits.log_softmax(-1)
        for processing in (RAW, NO_CENTRING, DEFAULT_PROCESSING):
            model = hooked_transformer_from_hf(hf_model(architecture), tokenizer(), processing, "cpu")
            assert (model(rows).log_softmax(-1) - reference).abs().max() < 1e-4, processing
    assert verify_against_hf(hooked(architecture), hf_model(architecture)) < 1e-4


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_hooks_hold_the_activations_they_name(architecture):
    """resid_pre / resid_post are transformers' hidden states; attn_out and mlp_out are what each sublayer adds
    to the residual stream. Read as the stages read them (`hook_activations`, BOS left out)."""
    model, rows = hooked(architecture), token_rows()
    with torch.no_grad():
        hidden = hf_model(architecture)(rows, output_hidden_states=True).hidden_states

    def at(hook):
        return hook_activations(model, rows, hook).reshape(rows.shape[0], -1, model.cfg.d_model)

    for layer in range(model.cfg.n_layers):
        pre, post = at(f"blocks.{layer}.hook_resid_pre"), at(f"blocks.{layer}.hook_resid_post")
        assert (pre - hidden[layer][:, 1:]).abs().max() < 1e-4
        if layer + 1 < model.cfg.n_layers:  # transformers' last hidden state is after the final norm
            assert (post - hidden[layer + 1][:, 1:]).abs().max() < 1e-4
        attn, mlp = at(f"blocks.{layer}.hook_attn_out"), at(f"blocks.{layer}.hook_mlp_out")
        assert (pre + attn + mlp - post).abs().max() < 1e-4
        assert attn.abs().max() > 1e-2 and mlp.abs().max() > 1e-2


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_projection_finds_a_planted_feature(architecture):
    """Feature 0 writes the unembedding column of the token with the longest one (so its top token, by
    Cauchy-Schwarz), feature 1 its negative (its bottom token); feature 2 writes nothing."""
    W_U = hooked(architecture).W_U.detach()  # [d_model, d_vocab], the unembedding the model applies
    token = int(W_U.norm(dim=0).argmax())
    W_dec = torch.stack([W_U[:, token], -W_U[:, token], torch.zeros(W_U.shape[0])])
    result = decoder_projection_topk(W_dec, W_U, k=3)
    assert result.top_ids[0, 0] == token and result.bottom_ids[1, 0] == token
    assert result.top_values[0, 0] == pytest.approx(float(W_U[:, token].norm() ** 2), rel=1e-5)
    assert result.top_values[2].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_greedy_generation_equals_transformers(architecture):
    """The KV-cache loop (rotary positions, sliding windows, Gemma's soft caps) gives transformers' tokens."""
    settings = SamplingSettings(temperature=0, max_new_tokens=12)
    ours = generate(hooked(architecture), "the heart", settings)
    prompt = torch.tensor([ours.prompt_ids])
    reference = hf_model(architecture).generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                                max_new_tokens=12, min_new_tokens=12, pad_token_id=0)
    assert ours.token_ids == reference[0, prompt.shape[1]:].tolist()


def arm_of(architecture):
    """An arm that generates with its `transformers` model, as `load_arm` gives."""
    model = hooked(architecture)
    sae = build_sae(d_in=model.cfg.d_model, d_sae=8, hook_name="blocks.1.hook_resid_pre")
    return LoadedArm("tiny", model, sae, "blocks.1.hook_resid_pre", 8, "cpu", NO_CENTRING, hf_model(architecture))


def brute_force_steered_greedy(model, prompt_ids, hook_name, vector, n_new):
    """The reference: the HookedTransformer with a TransformerLens hook adding `vector` at `hook_name`, one full
    pass (no cache) per new token, argmax of the last position."""
    ids = list(prompt_ids)
    with model.hooks(fwd_hooks=[(hook_name, steering_hook(vector))]):
        for _ in range(n_new):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt_ids):]


STEERED_HOOKS = ["blocks.1.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.1.hook_resid_post",
                 "blocks.1.hook_attn_out", "blocks.0.hook_mlp_out"]


# Centring writing weights (gpt2-small-res-jb's processing) applies to the LayerNorm families only.
STEERED_CASES = [(a, False) for a in ARCHITECTURES] + [("GPT2LMHeadModel", True), ("GPTNeoXForCausalLM", True)]


@pytest.mark.parametrize("architecture, centred", STEERED_CASES, ids=lambda v: {False: "raw", True: "centred"}.get(v, v))
def test_steered_generation_through_transformers_equals_the_hooked_transformer_brute_force(architecture, centred):
    """For each hook kind, greedy tokens with the vector added by a torch hook on the `transformers` module the
    hook names (KV cache) equal the HookedTransformer's with a TransformerLens hook at that name (no cache): the
    module and side each family's adapter names are right, Gemma 2/3's post-norms included. Centred: the
    processed weights of gpt2-small-res-jb (residual minus its mean), where the raw residual is steered."""
    with torch.no_grad():
        hidden = hf_model(architecture)(token_rows(1, 8), output_hidden_states=True).hidden_states[1]
    scale = float(hidden.norm(dim=-1).mean())
    vector = torch.randn(32, generator=torch.Generator().manual_seed(2))
    vector *= 3 * scale / vector.norm()  # three times a typical residual: enough to change the greedy tokens
    settings = SamplingSettings(temperature=0, max_new_tokens=4)
    unsteered = generate(hooked(architecture, centred), "the heart", settings).token_ids
    unchanged = []
    sae = build_sae(d_in=32, d_sae=8, hook_name=STEERED_HOOKS[0])
    sae.W_dec.data[0] = vector  # coefficient ‖vector‖ on a row along it: exactly `vector` added
    coefficients = {0: float(vector.norm())}
    for hook_name in STEERED_HOOKS:
        arm = LoadedArm("tiny", hooked(architecture, centred), sae, hook_name, 8, "cpu", {}, hf_model(architecture))
        if hook_name.endswith("resid_mid") and getattr(arm.hf_model.config, "use_parallel_residual", False):
            with pytest.raises(ValueError, match="no hook|no resid_mid"):  # TransformerLens has none there either
                generate_steered(arm, coefficients, "the heart", settings)
            continue
        steered = generate_steered(arm, coefficients, "the heart", settings)
        reference = brute_force_steered_greedy(arm.model, steered.prompt_ids, hook_name, vector, 4)
        assert steered.token_ids == reference, hook_name
        if steered.token_ids == unsteered:
            unchanged.append(hook_name)
    assert not unchanged  # every steering moved the tokens, so equal tokens check where the vector went


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_steering_with_coefficient_zero_equals_unsteered(architecture):
    arm = arm_of(architecture)
    settings = SamplingSettings(max_new_tokens=10, seed=3)
    unsteered = generate_steered(arm, {}, "the heart", settings)
    assert generate_steered(arm, {3: 0.0}, "the heart", settings).token_ids == unsteered.token_ids
    assert generate_steered(arm, {3: 200.0}, "the heart", settings).token_ids != unsteered.token_ids


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_sampling_through_transformers_equals_the_hooked_transformers_loop_for_the_same_seed(architecture):
    """The same seed gives the same sampled tokens twice, and the same as the HookedTransformer's own KV-cache loop
    (with a TransformerLens hook), steered; another seed other tokens."""
    arm = arm_of(architecture)
    coefficients = {3: 20.0}
    settings = SamplingSettings(max_new_tokens=10, seed=4, top_p=0.9)
    first = generate_steered(arm, coefficients, "the heart", settings)
    assert generate_steered(arm, coefficients, "the heart", settings) == first
    hooked_only = LoadedArm("tiny", arm.model, arm.sae, arm.hook_name, 8, "cpu", NO_CENTRING)
    assert generate_steered(hooked_only, coefficients, "the heart", settings).token_ids == first.token_ids
    other = generate_steered(arm, coefficients, "the heart", SamplingSettings(max_new_tokens=10, seed=5, top_p=0.9))
    assert other.token_ids != first.token_ids


def test_an_unknown_architecture_is_one_line_naming_the_known_ones():
    with pytest.raises(StudyInputError, match="OPTForCausalLM is not supported") as err:
        family_for("OPTForCausalLM")
    assert "LlamaForCausalLM" in str(err.value) and "\n" not in str(err.value)


def test_llama3_rotary_scaling_equals_transformers():
    """Llama 3.1's NTK-by-parts frequencies; positions past the original context show a wrong reading."""
    import transformers

    config = transformers.LlamaConfig(**{**TINY_CONFIGS["LlamaForCausalLM"][1], "vocab_size": 96},
                                      architectures=["LlamaForCausalLM"],
                                      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                       "original_max_position_embeddings": 8})
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    model = hooked_transformer_from_hf(hf, None, NO_CENTRING, "cpu")
    assert model.cfg.use_NTK_by_parts_rope and model.cfg.NTK_by_parts_factor == 8.0
    assert verify_against_hf(model, hf, n_tokens=40) < 1e-4


def test_an_unread_rotary_scaling_is_refused():
    import transformers

    config = transformers.Qwen2Config(**TINY_CONFIGS["Qwen2ForCausalLM"][1], architectures=["Qwen2ForCausalLM"],
                                      rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                       "original_max_position_embeddings": 32})
    with pytest.raises(StudyInputError, match="rotary scaling 'yarn' of this qwen2 model is not supported"):
        hooked_transformer_from_hf(transformers.Qwen2ForCausalLM(config), None, NO_CENTRING, "cpu")


@pytest.mark.parametrize("architecture, fields", [
    # google/gemma-2b's config.json names both: exact GELU in hidden_act, tanh GELU in hidden_activation.
    ("GemmaForCausalLM", {"hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh"}),
    ("GemmaForCausalLM", {"hidden_act": "gelu"}),
    ("Gemma2ForCausalLM", {"hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh"}),
])
def test_gemma_reads_the_activation_transformers_runs(architecture, fields):
    import transformers

    config_class, base = TINY_CONFIGS[architecture]
    config = getattr(transformers, config_class)(**{**base, **fields, "intermediate_size": 256},
                                                 architectures=[architecture])
    torch.manual_seed(0)
    hf = getattr(transformers, architecture)(config).eval()
    with torch.no_grad():
        for param in hf.parameters():
            param.normal_(0, 0.5)  # wide pre-activations: exact and tanh GELU differ by up to ~1e-3 each
    model = hooked_transformer_from_hf(hf, None, NO_CENTRING, "cpu")
    runs_tanh = type(hf.model.layers[0].mlp.act_fn).__name__ == "GELUTanh"  # what transformers really runs
    assert model.cfg.act_fn == ("gelu_pytorch_tanh" if runs_tanh else "gelu")
    rows = token_rows()[:, :12] % 96
    with torch.no_grad():
        assert (model(rows).log_softmax(-1) - hf(rows).logits.log_softmax(-1)).abs().max() < 1e-4


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("hook_name", ["blocks.1.hook_resid_pre", "blocks.0.hook_resid_pre", "blocks.1.hook_mlp_out"])
def test_losses_resumed_at_the_hook_equal_whole_passes_with_the_hook(architecture, hook_name):
    """hook_loss_sums_each starts each replaced pass at block L from the clean pass's activation at
    blocks.L.hook_resid_pre (rotary positions, Gemma's scaled embedding and soft-capping must not notice); hooks
    inside a block run whole. Both give the summed losses of `run_with_hooks`, with each hook called once."""
    from core.hook_reads import hook_loss_sums_each, resume_layer

    model = hooked(architecture, centred=True)
    rows = token_rows(n_rows=3)
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(2))
    calls = []

    def shift(scale):
        def hook(act, hook):
            calls.append(scale)
            return act + scale * direction
        return hook

    hooks = {"half": lambda act, hook: calls.append("half") or act * 0.5, "shifted": shift(3.0)}
    sums = hook_loss_sums_each(model, hook_name, rows, batch_size=2, splices_for=lambda start, stop: hooks)
    with torch.no_grad():
        def whole(hook=None):
            hooks_ = [] if hook is None else [(hook_name, hook)]
            return model.run_with_hooks(rows, return_type="loss", loss_per_token=True, fwd_hooks=hooks_).sum().item()
        expected = {"clean": whole(), "half": whole(lambda act, hook: act * 0.5),
                    "shifted": whole(lambda act, hook: act + 3.0 * direction),
                    "zero": whole(lambda act, hook: torch.zeros_like(act))}
    assert resume_layer(hook_name) == (None if "mlp" in hook_name else int(hook_name.split(".")[1]))
    assert calls.count("half") == calls.count(3.0) == 2  # once a batch
    assert set(sums) == set(expected)
    for name, value in expected.items():
        assert sums[name] == pytest.approx(value, rel=1e-5), name
    assert len({round(v, 3) for v in expected.values()}) == 4  # the four passes differ: the check can tell them apart
