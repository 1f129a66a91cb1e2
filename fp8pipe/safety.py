"""Prompt filter for public kiosks: a word list from the preset, checked on the server.

Matching is on whole words after Unicode normalisation (NFKC, case-folded, accents and
zero-width characters removed, common digit-for-letter swaps undone), so "N.U.D.E",
"nüde" and "nud3" match "nude" while "Sussex" does not match "sex".
"""

from __future__ import annotations

import re
import unicodedata

FRIENDLY_MESSAGE = "Let's try a different idea: this kiosk can't draw that. How about an animal, a place or a favourite food?"
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"), None)


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.translate(_ZERO_WIDTH)).casefold()
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = re.sub(r"(?<=\w)[.\-_*](?=\w)", "", text)  # n.u.d.e -> nude
    return text.translate(_LEET)


def blocked_words(prompt: str, words: tuple[str, ...] | list[str]) -> list[str]:
    """The filter words that `prompt` contains, as whole words or phrases."""
    haystack = " " + " ".join(re.findall(r"\w+", normalize(prompt))) + " "
    hits = []
    for word in words:
        needle = " ".join(re.findall(r"\w+", normalize(word)))
        if needle and f" {needle} " in haystack:
            hits.append(word)
    return hits
