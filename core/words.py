"""The paper's valid-word rule for vocabulary tokens, shared by coherence scoring and medical matching.

Tokenizers spell a leading space differently: byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM2) writes 'Ġ'
(U+0120), SentencePiece (Llama 2, Gemma, Mistral) writes '▁' (U+2581). `space_marker` reads which one a
vocabulary uses, so that "Ġheart" and "▁heart" are the same word and coherence and medical matches do not depend
on the tokenizer that spelled them.
"""

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

BPE_SPACE_MARKER = "\u0120"  # byte-level BPE
SENTENCEPIECE_SPACE_MARKER = "\u2581"  # SentencePiece
SPACE_MARKERS = (BPE_SPACE_MARKER, SENTENCEPIECE_SPACE_MARKER)


def space_marker(vocabulary: Sequence[str]) -> str:
    """The space marker a vocabulary (tokens as `convert_ids_to_tokens` spells them) starts its words with:
    whichever of 'Ġ' and '▁' leads more tokens ('Ġ' when neither does)."""
    leading = Counter(token[:1] for token in vocabulary if token[:1] in SPACE_MARKERS)
    return SENTENCEPIECE_SPACE_MARKER if leading[SENTENCEPIECE_SPACE_MARKER] > leading[BPE_SPACE_MARKER] else BPE_SPACE_MARKER


def normalize_token(token: str, marker: str | None = None) -> str | None:
    """Return the lower-case word a token stands for, or None when it is not a plain word.

    The space marker (`marker`, or both 'Ġ' and '▁' when None: plain text has neither) and surrounding
    whitespace are stripped; what remains must be non-empty and made only of ASCII letters ("ĠHeart",
    "▁Heart" -> "heart"; "Ġ123", "Ġheart-rate", "café" -> None). Give the vocabulary's own marker when it may
    hold the other character as a letter (SentencePiece vocabularies hold Maltese 'Ġ').
    """
    for each in SPACE_MARKERS if marker is None else (marker,):
        token = token.replace(each, " ")
    word = token.strip().lower()
    # isascii() first: str.isalpha alone accepts letters of every script ("é", "ж").
    if word and word.isascii() and word.isalpha():
        return word
    return None


def normalize_tokens(tokens: Iterable[str], marker: str | None = None) -> list[str | None]:
    """normalize_token over a sequence; the result has one entry per token, in order."""
    return [normalize_token(token, marker) for token in tokens]


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2 byte-level BPE's printable stand-in character for each byte, inverted: char -> byte.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are mapped, in order, to U+0100 onwards
    (so a space, byte 32, is written 'Ġ', U+0120)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {byte: chr(byte) for byte in printable}
    extra = (byte for byte in range(256) if byte not in chars)
    chars.update({byte: chr(256 + n) for n, byte in enumerate(extra)})
    return {char: byte for byte, char in chars.items()}


def byte_text(data: bytes) -> str:
    """A token's bytes as text to show: UTF-8 where they decode, and each byte that is not part of a whole
    UTF-8 character as `<0x8F>` (the byte-fallback spelling), so byte tokens never all read "\ufffd".

    b" caf\xc3\xa9" -> " café"; b"\xe2\x80" (the start of "’") -> "<0xE2><0x80>"; b"a\x8fb" -> "a<0x8F>b"."""
    parts, start = [], 0
    while start < len(data):
        try:
            parts.append(data[start:].decode("utf-8"))
            break
        except UnicodeDecodeError as err:
            parts.append(data[start:start + err.start].decode("utf-8"))
            parts.append("".join(f"<0x{byte:02X}>" for byte in data[start + err.start:start + err.end]))
            start += err.end
    return "".join(parts)


def sentencepiece_text(token: str) -> str:
    """The text a SentencePiece piece stands for, leading space kept ("▁heart" -> " heart"), which decoding one
    token alone drops; a byte-fallback piece is its byte where that is a whole character ("<0x0A>" -> "\n") and
    keeps its spelling where it is not ("<0xC3>"), as `byte_text` shows bytes."""
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        return byte_text(bytes([int(token[3:5], 16)]))
    return token.replace(SENTENCEPIECE_SPACE_MARKER, " ")


def new_token_texts(tokenizer: Any, prefix_ids: Sequence[int], new_ids: Sequence[int]) -> list[str]:
    """The text each of `new_ids` adds after `prefix_ids`, for showing tokens one by one: joined, they are the
    text the new tokens add. Decoding a token alone loses a SentencePiece word's leading space ("▁heart" ->
    "heart"), so each piece is the difference of decoding with and without it, after the prefix."""
    ids, texts = list(prefix_ids), []
    before = tokenizer.decode(ids)
    for token in new_ids:
        ids.append(int(token))
        after = tokenizer.decode(ids)
        texts.append(after[len(before):] if after.startswith(before) else tokenizer.decode([int(token)]))
        before = after
    return texts
