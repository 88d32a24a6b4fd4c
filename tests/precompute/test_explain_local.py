"""The local backend on a tiny model: running the judge's shared prompt prefix once (a reused key/value cache)
gives the same P(yes) as running every question whole, and greedy replies come back as text."""

import pytest
import torch

from factories import build_gpt2_folder, byte_tokenizer
from precompute.explain.local import LocalChat, _common_prefix_length

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = byte_tokenizer(("Yes No yes no the heart and the kidney", "Feature: Text: Does the last token"))
    folder = build_gpt2_folder(tmp_path_factory.mktemp("judge"), tokenizer, n_positions=256)
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(str(folder))
    hf_tokenizer.chat_template = TEMPLATE
    return LocalChat(model, hf_tokenizer, "local:tiny", batch_size=3)


def question(text):
    return [{"role": "system", "content": "Answer Yes or No."},
            {"role": "user", "content": f"Feature: the heart\nText: {text}\nYes or No?"}]


def test_the_shared_prefix_gives_the_same_answers_as_whole_questions(chat):
    questions = [question(t) for t in ("the", "the heart", "the heart and the kidney", "a", "kidney and heart")]
    shared = chat.yes_probability(questions)
    whole = chat.yes_probability(questions, share_prefix=False)
    assert shared == pytest.approx(whole, abs=1e-5)
    assert all(0.0 < p < 1.0 for p in shared) and len(set(round(p, 6) for p in shared)) > 1


def test_common_prefix_leaves_a_token_to_run():
    assert _common_prefix_length([[1, 2, 3], [1, 2, 4, 5]]) == 2
    assert _common_prefix_length([[1, 2], [1, 2, 3]]) == 1
    assert _common_prefix_length([[7], [8]]) == 0


def test_greedy_replies_are_text(chat):
    torch.manual_seed(0)
    replies = chat.complete([question("the heart")], max_tokens=3)
    assert len(replies) == 1 and isinstance(replies[0], str)
