"""Corpus rows: BOS-led packing, an equal share per file, and a clear error when the text is too short."""

import pytest
import torch

from core.config import CorpusConfig
from core.corpus import corpus_row, corpus_sources, load_corpus_rows, pack_rows, rows_needed, token_set
from core.errors import StudyInputError
from factories import byte_tokenizer


def test_pack_rows_is_bos_then_the_eos_separated_stream():
    tokenizer = byte_tokenizer()
    texts = ["the heart", "a kidney", "the artery"]
    rows = pack_rows(texts, tokenizer, context_size=4)
    stream = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream += ids + [tokenizer.eos_token_id]
    n = len(stream) // 3
    assert rows.shape == (n, 4)
    assert (rows[:, 0] == tokenizer.bos_token_id).all()
    assert rows[:, 1:].flatten().tolist() == stream[: 3 * n]


def test_each_file_gives_an_equal_share_of_rows(tmp_path):
    tokenizer = byte_tokenizer()
    (tmp_path / "a.txt").write_text("the heart and the kidney\n" * 200)
    (tmp_path / "b.txt").write_text("\na pulmonary artery\n" * 200)
    corpus = CorpusConfig(kind="text_files", paths=(str(tmp_path / "a.txt"), str(tmp_path / "b.txt")),
                          n_tokens=16 * 9, context_size=16)
    rows = load_corpus_rows(corpus, tokenizer)
    assert rows.shape == (rows_needed(corpus), 16) == (9, 16)
    first_a = tokenizer("the heart and the kidney", add_special_tokens=False)["input_ids"][0]
    first_b = tokenizer("a pulmonary artery", add_special_tokens=False)["input_ids"][0]
    assert rows[0, 1] == first_a and rows[5, 1] == first_b  # 5 rows from a.txt, then 4 from b.txt
    assert torch.equal(rows, load_corpus_rows(corpus, tokenizer))
    for row in range(9):  # one row alone, as a shared Inspect link reads it: the same ids
        assert torch.equal(corpus_row(corpus, tokenizer, row), rows[row])
    with pytest.raises(StudyInputError, match="row 9: the corpus has rows 0 to 8"):
        corpus_row(corpus, tokenizer, 9)


def test_a_token_sample_keeps_every_files_share_spread_over_the_file():
    """A 10-row corpus, 5 rows per file: a 4-row sample takes 2 rows of each file, spread evenly (not the first
    4 rows, which are all the first file's)."""
    corpus = CorpusConfig(kind="text_files", paths=("general.txt", "medical.txt"), n_tokens=16 * 10, context_size=16)
    assert corpus_sources(corpus) == [("general", 5), ("medical", 5)]
    sample = token_set(corpus, 16 * 4)
    assert sample.name == "sample-4" and sample.rows == (1, 3, 6, 8)
    assert dict(sample.sources) == {"general": 2, "medical": 2} and sample.n_tokens == 4 * 15
    rows = torch.arange(10).unsqueeze(1).repeat(1, 16)
    assert sample.select(rows)[:, 0].tolist() == [1, 3, 6, 8]
    odd = token_set(corpus, 16 * 3)  # 1.5 rows each: the remainder goes to one file, never lost
    assert odd.n_rows == 3 and sum(n for _, n in odd.sources) == 3 and len(set(odd.rows)) == 3
    for everything in (token_set(corpus, 0), token_set(corpus, 10**6)):
        assert everything.name == "corpus" and everything.rows == tuple(range(10)) and everything.n_tokens == 150
    assert token_set(corpus, 16 * 4) == sample  # the same request names the same rows


def test_a_corpus_too_short_names_the_field_and_the_file(tmp_path):
    (tmp_path / "a.txt").write_text("the heart\n")
    corpus = CorpusConfig(kind="text_files", paths=(str(tmp_path / "a.txt"),), n_tokens=10_000, context_size=16)
    with pytest.raises(StudyInputError, match=r"corpus.n_tokens: file .*a.txt gives only 0 rows"):
        load_corpus_rows(corpus, byte_tokenizer())


def test_a_missing_corpus_file_says_how_to_build_it(tmp_path):
    corpus = CorpusConfig(kind="text_files", paths=(str(tmp_path / "missing.txt"),), n_tokens=100)
    with pytest.raises(StudyInputError, match="corpus.paths: .*missing.txt does not exist"):
        load_corpus_rows(corpus, byte_tokenizer())
