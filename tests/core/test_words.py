"""The paper's valid-word rule: BPE space marker stripped, lower-cased, ASCII letters only."""

import pytest

from core.words import byte_text, normalize_token, normalize_tokens


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
