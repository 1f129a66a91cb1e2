"""Unicode hygiene for text people send: lone surrogates, and which characters are invisible.

Shared by request validation (fp8pipe.requests) and the prompt filter (fp8pipe.safety), so
"empty" and "what the filter reads" agree on what a person can see.
"""

from __future__ import annotations

import unicodedata

# Letters and symbols that render as nothing although Unicode does not class them as format
# characters: Hangul fillers, the braille blank, the combining grapheme joiner, variation selectors.
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800\u034f\u180e\u17b4\u17b5") | frozenset(map(chr, range(0xFE00, 0xFE10)))
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})  # controls, format, surrogates, private use, unassigned


def lone_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate (not encodable as UTF-8), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def is_invisible(char: str) -> bool:
    """True for a character that shows nothing and is not a space (controls, format characters
    such as zero-width joiners and direction marks, fillers, variation selectors)."""
    return char in _INVISIBLE or (unicodedata.category(char) in _INVISIBLE_CATEGORIES and not char.isspace())


def has_visible(text: str) -> bool:
    """True when `text` holds at least one character a person can see."""
    return any(not c.isspace() and not is_invisible(c) and unicodedata.category(c) not in ("Mn", "Me") for c in text)
