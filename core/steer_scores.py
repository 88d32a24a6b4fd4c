"""How a steered text is scored: how close it is in meaning to the feature (Table 1's measure), and how fluent it is.

Against what: the tokens the study's candidate rule read (`scoring_target`): the top logit-lens tokens (decoder
projection), the paper's, or the tokens the feature fires on most, where the rule made it a candidate by those. At
a mid layer of a real model the logit lens shows mostly frequent tokens: SmolLM2's kidney feature, candidate by
firing, moved the text toward "doctor / brain / body" while its score against its decoder tokens fell.

Meaning, two measures (`MEASURES`), both against those tokens:
- "sentence" (the default): cosine of the all-MiniLM-L6-v2 sentence embeddings (`core.sentence`) of the text and
  of the feature's top tokens joined into one text (`top_tokens_text`). The authors' notebook did the same with
  mean-pooled bert-base-uncased states and the joined, unweighted top tokens; a sentence encoder is trained for
  exactly this comparison.
- "glove": `core.steering.semantic_similarity`, the mean GloVe vector of the text's words against the weighted top
  words. It reads words one by one, so any English text sits near 0.97 against top tokens that are function
  words, whatever the steering did.

Fluency: `perplexity` of the generated tokens under the unsteered model, exp(mean negative log-likelihood, nats),
from one forward pass over prompt + text. A strength that breaks the model shows as a jump in perplexity even
when the text moves towards the feature.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from core import sentence
from core.coherence import CANDIDATE_RULES
from core.steering import model_lock, semantic_similarity

MEASURES = {
    "sentence": "meaning: cosine of the all-MiniLM-L6-v2 sentence embeddings of the text and of the top tokens "
                "joined",
    "glove": "words: cosine of the text's mean GloVe word vector and the weighted top words",
}
DEFAULT_MEASURE = "sentence"
_SPECIAL_IN_TEXT = re.compile(r"<\|[^<>|\s]*\|>")
_SPECIAL_TOKEN = re.compile(r"^<\|?/?[^<>\s]*\|?>$")  # <|endoftext|>, </s>, byte tokens <0x8F>: no meaning


# What a feature's steering is scored against: its top logit-lens tokens, or the tokens it fires on most.
TARGETS = {"decoder": "the top tokens (decoder)", "fired": "the tokens it fires on most"}


def scoring_target(rule: str, candidate_by: str | None, has_fired: bool = True) -> str:
    """"decoder" or "fired": the tokens a feature's steering is scored against under the study's candidate rule
    (core.coherence.CANDIDATE_RULES). decoder: its top logit-lens tokens (the paper's); fired: the tokens it fires on
    most; either: fired where its `candidate_by` is "fired" or "both", else decoder. A feature that never fired
    (`has_fired` False) has no fired tokens: decoder."""
    if rule not in CANDIDATE_RULES:
        raise ValueError(f"candidate rule must be one of {CANDIDATE_RULES}, got {rule!r}")
    by_firing = rule == "fired" or (rule == "either" and candidate_by in ("fired", "both"))
    return "fired" if by_firing and has_fired else "decoder"


def check_measure(measure: str) -> str:
    if measure not in MEASURES:
        raise ValueError(f"unknown steering measure {measure!r}: use one of {', '.join(MEASURES)}")
    return measure


def top_tokens_text(top_tokens: Sequence[str], top_values: Sequence[float]) -> str:
    """The feature's top tokens as one text for the sentence encoder: those the feature promotes (value > 0),
    stripped of surrounding spaces (" heart" → "heart"; "Ġheart" as the tokenizer spells it, too), special and
    byte tokens and repeats (case-insensitive) left out, in the order given (rank), joined by spaces. Unweighted,
    as the paper's notebook."""
    words: dict[str, str] = {}
    for token, value in zip(top_tokens, top_values):
        text = token.replace("Ġ", " ").replace("▁", " ").strip()
        if value > 0 and text and not _SPECIAL_TOKEN.match(text):
            words.setdefault(text.lower(), text)
    return " ".join(words.values())


def sentence_similarities(texts: Sequence[str], target: str) -> list[float]:
    """Cosine of each text's sentence embedding with the target's; NaN (no score) for a blank text or target.
    Special tokens written out in a text ("<|endoftext|>", which the demo's models emit between sentences) are
    read as spaces: the encoder would otherwise read them as seven word pieces of noise."""
    texts = [_SPECIAL_IN_TEXT.sub(" ", text) for text in texts]
    if not target.strip():
        return [float("nan")] * len(texts)
    vectors = sentence.encode([target, *texts])
    scores = (vectors[1:] @ vectors[0]).astype(np.float64)
    return [float(s) if t.strip() else float("nan") for s, t in zip(scores, texts)]


def meaning_scores(texts: Sequence[str], top_tokens: Sequence[str], top_values: Sequence[float],
                   measure: str = DEFAULT_MEASURE, kv: Any = None) -> list[float]:
    """Each text's closeness in meaning to the feature's top tokens, by `measure` (see the module docstring);
    "glove" needs the study's word vectors `kv`. NaN: no score (nothing in the text, or the feature, to compare)."""
    if check_measure(measure) == "glove":
        if kv is None:
            raise ValueError("the glove measure needs the study's word embeddings")
        return [semantic_similarity(text, top_tokens, top_values, kv) for text in texts]
    return sentence_similarities(texts, top_tokens_text(top_tokens, top_values))


@torch.inference_mode()
def perplexity(model: Any, prompt_ids: Sequence[int], token_ids: Sequence[int]) -> float:
    """exp(−(1/n) Σ_i log p(token_i | prompt, token_<i)) over the n new tokens, under `model` as it stands: one
    forward pass over prompt_ids + token_ids (prompt_ids with the BOS the generation had). Holds `model_lock`, so
    that it runs between, never inside, another thread's steering: called outside a `steering` block, this is
    the unsteered model. NaN when there are no new tokens."""
    if not token_ids:
        return float("nan")
    if not prompt_ids:
        raise ValueError("perplexity needs at least one prompt token (the BOS) to predict the first new token")
    with model_lock(model):
        ids = torch.tensor([list(prompt_ids) + list(token_ids)], device=model.cfg.device)  # [1, pos]
        logits = model(ids, attention_mask=torch.ones_like(ids))  # [1, pos, d_vocab]
    n_prompt = len(prompt_ids)
    logprobs = logits[0, n_prompt - 1:-1].float().log_softmax(-1)  # [n, d_vocab]: the prediction of each new token
    chosen = logprobs.gather(1, ids[0, n_prompt:, None])[:, 0]
    return math.exp(-float(chosen.double().mean()))
