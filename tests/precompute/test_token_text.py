"""The text shown for each token id: byte tokens are told apart, never all "\ufffd"."""

from factories import byte_tokenizer, gpt2_tokenizer
from core.token_text import vocabulary_strings


def test_every_gpt2_token_reads_differently_and_byte_tokens_show_their_byte():
    tokenizer = gpt2_tokenizer()
    raw, text = vocabulary_strings(tokenizer, len(tokenizer))
    assert len(set(text)) == len(tokenizer)  # 50,257 ids, 50,257 texts
    # GPT-2 has tokens for a real U+FFFD in its training text (id 4210); a byte token never reads like one.
    assert text[4210] == "\ufffd"
    single_bytes = [i for i, token in enumerate(raw) if len(token) == 1 and text[i].startswith("<0x")]
    assert len(single_bytes) == 128  # the single-byte tokens 0x80-0xFF: none is a whole UTF-8 character
    byte_8f = tokenizer.convert_tokens_to_ids("\u0131")  # GPT-2 writes byte 0x8F as "ı"
    assert text[byte_8f] == "<0x8F>"
    assert text[tokenizer.convert_tokens_to_ids("\u0120heart")] == " heart"


def test_a_vocabulary_wider_than_the_tokenizer_pads_with_empty_text():
    tokenizer = byte_tokenizer()
    raw, text = vocabulary_strings(tokenizer, len(tokenizer) + 3)
    assert list(text[-3:]) == ["", "", ""] and raw[-1] == ""
