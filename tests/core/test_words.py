"""The paper's valid-word rule: BPE space marker stripped, lower-cased, ASCII letters only."""

import pytest

from core.words import byte_text, normalize_token, normalize_tokens, space_marker


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("\u0120Heart", "heart"),
        ("heart", "heart"),
        ("KIDNEY", "kidney"),
        ("  fever\n", "fever"),
        ("\u0120 Heart ", "heart"),
        ("\u0120123", None),
        ("\u0120heart-rate", None),
        ("heart\u0120rate", None),
        ("\u0120heart's", None),
        ("\u0120caf\u00e9", None),  # é is a letter, but not ASCII
        ("\u0436\u0438\u0437\u043d\u044c", None),  # Cyrillic letters
        ("\u0120", None),
        ("", None),
        ("   ", None),
        ("x2", None),
    ],
)
def test_normalize_token(token, expected):
    assert normalize_token(token) == expected


def test_normalize_tokens_keeps_one_entry_per_token_in_order():
    tokens = ["\u0120The", "\u0120heart", ",", "\u0120beats", "\u01202024"]
    assert normalize_tokens(tokens) == ["the", "heart", None, "beats", None]


def test_case_variants_collapse_to_one_word():
    # The authors' code counted "Treatment" and "treatment" as two tokens with one vector, inflating coherence.
    assert {normalize_token(t) for t in ["\u0120Treatment", "\u0120treatment", "treatment", "TREATMENT"]} == {
        "treatment"
    }


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b" caf\xc3\xa9", " caf\u00e9"),
        (b"\x8f", "<0x8F>"),
        (b"\xe2\x80", "<0xE2><0x80>"),  # the first two bytes of a three-byte character
        (b"a\x8fb", "a<0x8F>b"),
        (b"\xc3\xa9\xff", "\u00e9<0xFF>"),
        (b"", ""),
    ],
)
def test_byte_text_shows_bytes_outside_whole_characters(data, expected):
    assert byte_text(data) == expected


# The same eight tokens as a byte-level BPE (GPT-2, Llama 3, SmolLM2) and a SentencePiece (Llama 2, Gemma) spell them.
BYTE_LEVEL = ["\u0120heart", "\u0120cardiac", "\u0120kidney", "\u0120123", "\u0120Heart", "ing", "\u0120the", "heart"]
SENTENCEPIECE = [token.replace("\u0120", "\u2581") for token in BYTE_LEVEL]


def test_each_vocabulary_names_its_own_space_marker():
    assert space_marker(BYTE_LEVEL) == "\u0120"
    assert space_marker(SENTENCEPIECE) == "\u2581"
    assert space_marker(["a", "b"]) == "\u0120"  # no marker at all: the byte-level rule (it strips nothing here)


def test_the_same_words_whichever_tokenizer_spelled_them():
    expected = ["heart", "cardiac", "kidney", None, "heart", "ing", "the", "heart"]
    assert normalize_tokens(BYTE_LEVEL, "\u0120") == normalize_tokens(SENTENCEPIECE, "\u2581") == expected
    assert normalize_tokens(SENTENCEPIECE) == expected  # plain text: either marker


def test_a_sentencepiece_vocabulary_keeps_the_letter_that_is_byte_level_space():
    """Maltese 'Ġ' is a letter in a SentencePiece vocabulary (not ASCII, so not a word), never a space there."""
    assert normalize_token("\u2581\u0120ej", "\u2581") is None
    assert normalize_token("\u0120ej", "\u0120") == "ej"


def test_coherence_and_medical_matches_equal_for_both_spellings():
    """Feature 0's top tokens heart, cardiac, kidney; feature 1's 'Heart', '123', 'the': the same scores from the
    Ġ vocabulary and from the ▁ vocabulary."""
    import numpy as np
    from gensim.models import KeyedVectors

    from core.coherence import feature_word_scores, token_words

    kv = KeyedVectors(vector_size=2)
    kv.add_vectors(["heart", "cardiac", "kidney", "the"], np.array([[1, 0], [1, 1], [0, 2], [3, -1]], np.float32))
    top_ids, top_values = np.array([[0, 1, 2], [4, 3, 6]]), np.array([[3.0, 2.0, 1.0], [2.0, 1.5, 1.0]], np.float32)
    scores = [feature_word_scores(top_ids, top_values, token_words(vocabulary, kv, {"heart", "kidney", "cardiac"}))
              for vocabulary in (BYTE_LEVEL, SENTENCEPIECE)]
    assert scores[0].n_valid.tolist() == scores[1].n_valid.tolist() == [3, 2]
    np.testing.assert_array_equal(scores[0].coherence, scores[1].coherence)
    assert scores[0].med_matches.tolist() == scores[1].med_matches.tolist() == [3, 1]
    assert scores[0].matched_words == scores[1].matched_words


def test_a_trained_sentencepiece_tokenizer_gives_words():
    """A real SentencePiece-style BPE (tokenizers' SentencePieceBPETokenizer), trained here in milliseconds."""
    from tokenizers import SentencePieceBPETokenizer

    trainer = SentencePieceBPETokenizer()
    trainer.train_from_iterator(["the heart and the kidney", "a pulmonary artery"] * 20, vocab_size=120)
    vocabulary = list(trainer.get_vocab())
    marker = space_marker(vocabulary)
    assert marker == "\u2581" and "\u2581heart" in vocabulary
    assert {normalize_token(token, marker) for token in vocabulary} >= {"heart", "kidney", "pulmonary", "artery"}


def test_sentencepiece_pieces_read_as_text_with_their_leading_space():
    from core.token_text import vocabulary_strings

    class Pieces:  # the two calls vocabulary_strings makes of a tokenizer
        vocabulary = ["<s>", "\u2581heart", "ing", "<0x0A>", "\u2581the", "<0xC3>"]

        def __len__(self):
            return len(self.vocabulary)

        def convert_ids_to_tokens(self, ids):
            return [self.vocabulary[i] for i in ids]

    raw, text = vocabulary_strings(Pieces(), d_vocab=7)
    assert raw[:6] == Pieces.vocabulary and raw[6] == ""
    assert text.tolist() == ["<s>", " heart", "ing", "\n", " the", "<0xC3>", ""]  # a lone byte: its spelling


def test_new_token_texts_keep_each_sentencepiece_word_s_space():
    """Decoding '▁kidney' alone gives 'kidney'; after a prefix it adds ' kidney', and the pieces join to the text."""
    from tokenizers import SentencePieceBPETokenizer, decoders
    from transformers import PreTrainedTokenizerFast

    from core.words import new_token_texts

    trainer = SentencePieceBPETokenizer()
    trainer.train_from_iterator(["the heart and the kidney"] * 20, vocab_size=60, special_tokens=["<s>"])
    trainer._tokenizer.decoder = decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=trainer._tokenizer, bos_token="<s>")
    prompt, new = tokenizer.encode("the heart"), tokenizer.encode(" and the kidney")
    assert tokenizer.decode([new[-1]]) == "kidney"
    pieces = new_token_texts(tokenizer, prompt, new)
    assert pieces[-1] == " kidney" and "".join(pieces) == " and the kidney"
