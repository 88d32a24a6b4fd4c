"""The offline sentence encoder (all-MiniLM-L6-v2 from the PyPI wheel): the numbers ENVIRONMENT.md measured with
sentence-transformers' recipe, unit rows, and batching and threads that change nothing."""

import threading

import numpy as np
import pytest

from core import sentence

FEVER = "The patient had a fever and infection of the liver."


def test_the_environment_numbers_hold():
    assert sentence.similarity(FEVER, "hepatitis liver inflammation") == pytest.approx(0.56, abs=0.01)
    assert sentence.similarity(FEVER, "the of and to in") == pytest.approx(0.07, abs=0.01)


def test_a_text_is_its_own_nearest_with_cosine_one_and_rows_are_unit_float32():
    texts = ["heart attack", FEVER, "the of and to in"]
    vectors = sentence.encode(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert sentence.similarity(FEVER, FEVER) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal((vectors @ vectors.T).argmax(1), [0, 1, 2])


def test_a_batch_with_padding_encodes_each_text_as_alone():
    texts = ["a", FEVER + " " + FEVER, "kidney"]  # lengths 3, 26, 3 word pieces: two rows are mostly padding
    together = sentence.SentenceEncoder(sentence.model_folder()).encode(texts, batch_size=3)
    alone = np.concatenate([sentence.encode([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_rank_by_meaning_scores_each_text_in_the_order_given():
    texts = ["football results", "hepatitis liver inflammation", "the of and to in"]
    scores = sentence.rank_by_meaning(FEVER, texts)
    assert scores.shape == (3,) and int(scores.argmax()) == 1
    assert scores[1] == pytest.approx(sentence.similarity(FEVER, texts[1]), abs=1e-6)
    assert sentence.rank_by_meaning(FEVER, []).shape == (0,)


def test_threads_share_one_encoder_and_get_what_they_would_alone():
    texts = [f"patient {i} had a fever" for i in range(40)]
    expected = sentence.encode(texts)
    results = [None] * 4

    def work(slot: int) -> None:
        results[slot] = (sentence.sentence_encoder(), sentence.encode(texts))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(encoder) for encoder, _ in results}) == 1
    for _, vectors in results:
        np.testing.assert_allclose(vectors, expected, atol=1e-6)
