"""The paper's valid-word rule for vocabulary tokens, shared by coherence scoring and medical matching."""

from collections.abc import Iterable

# GPT-2's byte-level BPE writes a leading space as 'Ġ' (U+0120).
BPE_SPACE_MARKER = "\u0120"


def normalize_token(token: str) -> str | None:
    """Return the lower-case word a token stands for, or None when it is not a plain word.

    The marker 'Ġ' and surrounding whitespace are stripped; what remains must be non-empty and made only of
    ASCII letters ("ĠHeart" -> "heart"; "Ġ123", "Ġheart-rate", "café" -> None).
    """
    word = token.replace(BPE_SPACE_MARKER, " ").strip().lower()
    # isascii() first: str.isalpha alone accepts letters of every script ("é", "ж").
    if word and word.isascii() and word.isalpha():
        return word
    return None


def normalize_tokens(tokens: Iterable[str]) -> list[str | None]:
    """normalize_token over a sequence; the result has one entry per token, in order."""
    return [normalize_token(token) for token in tokens]


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2 byte-level BPE's printable stand-in character for each byte, inverted: char -> byte.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are mapped, in order, to U+0100 onwards
    (so a space, byte 32, is written 'Ġ', U+0120)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {byte: chr(byte) for byte in printable}
    extra = (byte for byte in range(256) if byte not in chars)
    chars.update({byte: chr(256 + n) for n, byte in enumerate(extra)})
    return {char: byte for byte, char in chars.items()}
