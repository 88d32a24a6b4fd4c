"""Scoring a steered text: fluency (perplexity under the unsteered model) against a token-by-token reference and a
shuffled text, and the sentence measure's target text, NaN rules and agreement with the encoder by hand."""

import math

import numpy as np
import pytest
import torch

from core import sentence
from core.loading import DEFAULT_PROCESSING, hooked_transformer_from_hf, load_hf_model
from core.steer_scores import meaning_scores, perplexity, top_tokens_text
from core.steering import SamplingSettings, generate, steering
from factories import build_gpt2_folder, byte_tokenizer

PROMPT = "the heart"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The 2-layer GPT-2 of test_steering (std 0.5 weights: peaked next-token distributions)."""
    folder = build_gpt2_folder(tmp_path_factory.mktemp("fluency") / "model", byte_tokenizer(), n_positions=64,
                               initializer_range=0.5)
    hf, tok = load_hf_model(str(folder))
    return hooked_transformer_from_hf(hf, tok, DEFAULT_PROCESSING, "cpu")


def test_perplexity_is_the_generations_own_logprobs_under_the_unsteered_model(model):
    """The generation's logprobs (KV cache, one pass a token) are the same model's: exp(−mean) of them is the
    perplexity that one forward pass over prompt + text computes."""
    made = generate(model, PROMPT, SamplingSettings(max_new_tokens=20, seed=3))
    by_hand = math.exp(-np.mean(made.logprobs))
    assert perplexity(model, made.prompt_ids, made.token_ids) == pytest.approx(by_hand, rel=1e-4)


def test_greedy_text_is_more_fluent_than_the_same_tokens_shuffled(model):
    greedy = generate(model, PROMPT, SamplingSettings(temperature=0.0, max_new_tokens=24))
    shuffled = list(np.random.default_rng(0).permutation(greedy.token_ids))
    assert shuffled != greedy.token_ids
    own, mixed = (perplexity(model, greedy.prompt_ids, ids) for ids in (greedy.token_ids, shuffled))
    # the greedy text's perplexity is exp(-mean) of the logprobs its generation chose by (measured 4.2); the same
    # tokens shuffled read ~48x worse (200.4): ask for 10x
    assert own == pytest.approx(math.exp(-np.mean(greedy.logprobs)), rel=1e-4)
    assert mixed > 10 * own
    assert math.isnan(perplexity(model, greedy.prompt_ids, []))


def test_perplexity_holds_the_model_lock_so_steering_elsewhere_waits(model):
    """Inside a steering block of this thread the model is steered: the number changes. Outside, it is back."""
    made = generate(model, PROMPT, SamplingSettings(max_new_tokens=10, seed=1))
    plain = perplexity(model, made.prompt_ids, made.token_ids)
    vector = torch.randn(model.cfg.d_model) * 50
    with steering(model, "blocks.1.hook_resid_pre", vector):
        pushed = perplexity(model, made.prompt_ids, made.token_ids)
    assert pushed != pytest.approx(plain, rel=1e-3)
    assert perplexity(model, made.prompt_ids, made.token_ids) == pytest.approx(plain, rel=1e-6)


def test_the_target_text_is_the_promoted_top_tokens_stripped_once_each_in_rank_order():
    tokens = [" heart", "Ġkidney", "<|endoftext|>", " Heart", "<0xDE>", " liver", " blood", "  "]
    values = [3.0, 2.5, 2.0, 1.5, 1.2, 1.0, -0.5, 0.5]
    assert top_tokens_text(tokens, values) == "heart kidney liver"  # blood: value ≤ 0, not promoted


def test_the_sentence_measure_is_the_encoders_cosine_and_nan_when_there_is_nothing_to_score():
    texts = ["The patient had a fever and infection of the liver.", "   ", "the of and to in"]
    scores = meaning_scores(texts, [" hepatitis", " liver", " inflammation"], [3.0, 2.0, 1.0])
    assert scores[0] == pytest.approx(sentence.similarity(texts[0], "hepatitis liver inflammation"), abs=1e-6)
    assert scores[0] == pytest.approx(0.56, abs=0.01) and math.isnan(scores[1]) and scores[2] < 0.2
    assert all(math.isnan(s) for s in meaning_scores(texts, [" x"], [-1.0]))  # no promoted top token
    marked = texts[0].replace("fever and", "fever<|endoftext|>and") + "<|endoftext|>"  # as the demo's models write
    read, blank = meaning_scores([marked, "<|endoftext|>"], [" hepatitis", " liver", " inflammation"], [3.0, 2.0, 1.0])
    assert read == pytest.approx(scores[0], abs=1e-6) and math.isnan(blank)
    assert meaning_scores(["hepatitis liver inflammation"], [" hepatitis", " liver", " inflammation"],
                          [1.0, 1.0, 1.0])[0] == pytest.approx(1.0, abs=1e-6)  # the target itself


def test_an_unknown_measure_or_glove_without_embeddings_is_refused():
    with pytest.raises(ValueError, match="unknown steering measure 'bert': use one of sentence, glove"):
        meaning_scores(["a"], [" a"], [1.0], "bert")
    with pytest.raises(ValueError, match="glove measure needs the study's word embeddings"):
        meaning_scores(["a"], [" a"], [1.0], "glove")


def test_the_config_and_the_scores_know_the_same_measures():
    from core.config import STEERING_MEASURES
    from core.steer_scores import MEASURES

    assert tuple(MEASURES) == STEERING_MEASURES
