"""Prompt filter for public kiosks: a word list from the preset, checked on the server.

It reads text the way a model would see it, so a disguise that the model reads through does
not get past it. First the text is normalised: NFKC (full-width and styled letters become
plain ones), controls, format characters (zero-width joiners, direction marks) and other
invisible characters removed, case folded, accents dropped, look-alike Cyrillic and Greek
letters and common digit-for-letter swaps mapped to the Latin letter. Then whole words are
matched, in their common forms (plural, -ing, -ed, -y), with separators inside a word
("n.u.d.e", "nu-de") and spaced-out letters ("n u d e") read through. "Sussex" does not match
"sex": a word that merely contains a filter word passes.

Callers filter the final text: the prompt with its style suffix, and the negative prompt
(fp8pipe.service.build_request), on every path (kiosk page and API alike).
"""

from __future__ import annotations

import re
import unicodedata

from .text import is_invisible

FRIENDLY_MESSAGE = "Let's try a different idea: this kiosk can't draw that. How about an animal, a place or a favourite food?"
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
# Cyrillic, Greek and other Latin-looking letters (after case folding) -> the Latin letter.
_CONFUSABLES = str.maketrans(
    {
        **dict(zip("аеорсхуіјѕԁһԛԝӏкмнтвɡ", "aeopcxyijsdhqwlkmhtbg")),  # Cyrillic (and the Latin script g)
        **dict(zip("αεικνορτυχγϲ", "aeikvoptuxyc")),  # Greek
        **dict(zip("ıɑℓ", "ial")),
    }
)
_JOINERS = re.compile(r"(?<=\w)[.\-_*'`\u2019]+(?=\w)")  # n.u.d.e, nu-de, nu_de: one word
_WORD = re.compile(r"[^\W_]+")


def normalize(text: str) -> str:
    """The text as the filter reads it (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(" " if c.isspace() else c for c in text if not is_invisible(c))
    text = unicodedata.normalize("NFKD", text.casefold())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return text.translate(_CONFUSABLES).translate(_LEET)


def word_forms(word: str) -> frozenset[str]:
    """A word and its common inflections: plural, -ing, -ed, -y (with the usual spelling rules)."""
    forms = {word, word + "s", word + "es", word + "d", word + "ed", word + "ing", word + "y"}
    if word.endswith("e"):
        forms |= {word[:-1] + "ing", word[:-1] + "ed", word[:-1] + "y"}
    if word.endswith("y"):
        forms |= {word[:-1] + "ies", word[:-1] + "ied"}
    if len(word) > 2 and word[-1] not in "aeiouwxy" and word[-2] in "aeiou":
        forms |= {word + word[-1] + suffix for suffix in ("ing", "ed", "y")}
    return frozenset(forms)


def _variants(text: str) -> list[list[str]]:
    """The words of the normalised text, read two ways: separators inside a word removed
    (n.u.d.e -> nude), and as separate words (gore-filled -> gore, filled)."""
    text = normalize(text)
    return [_WORD.findall(_JOINERS.sub("", text)), _WORD.findall(text)]


def _spelled_out(words: list[str]) -> list[str]:
    """Runs of two or more one-letter words joined ("n u d e" -> "nude")."""
    runs, run = [], []
    for w in [*words, ""]:
        if len(w) == 1:
            run.append(w)
            continue
        if len(run) > 1:
            runs.append("".join(run))
        run = []
    return runs


def _contains(words: list[str], needle: list[frozenset[str]]) -> bool:
    n = len(needle)
    return any(all(words[i + j] in needle[j] for j in range(n)) for i in range(len(words) - n + 1))


def blocked_words(prompt: str, words: tuple[str, ...] | list[str]) -> list[str]:
    """The filter words that `prompt` contains, as whole words or phrases, in any common form."""
    variants = _variants(prompt)
    spelled = _spelled_out(variants[1])
    hits = []
    for word in words:
        needle = [word_forms(w) for w in _WORD.findall(_JOINERS.sub("", normalize(word)))]
        if not needle:
            continue
        if any(_contains(v, needle) for v in variants) or (len(needle) == 1 and any(f in run for run in spelled for f in needle[0])):
            hits.append(word)
    return hits
