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
