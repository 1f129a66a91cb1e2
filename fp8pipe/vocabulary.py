"""The demo model's vocabulary: which words it knows, which of a prompt's it does not.

The demo's tokenizers are word-level over the words its captions use
(`fp8pipe.demo.data.vocabulary`); any other word becomes `<unk>` and the picture ignores it.
The app shows these words, draws its example prompts and styles only from them, and warns
when a prompt uses others.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

DEMO_TOKENIZER = Path(__file__).parent / "demo" / "model" / "tokenizer" / "tokenizer.json"
_TOKEN = re.compile(r"\w+|[^\w\s]+")  # the demo tokenizers' Whitespace pre-tokenizer


@lru_cache(maxsize=1)
def demo_words() -> frozenset[str]:
    """Every word the demo tokenizer knows (its special tokens left out)."""
    if DEMO_TOKENIZER.is_file():
        model = json.loads(DEMO_TOKENIZER.read_text())["model"]
        return frozenset(w for w in model["vocab"] if not w.startswith("<"))
    from .demo.data import vocabulary

    return frozenset(vocabulary())


def unknown_words(text: str, known: frozenset[str] | None = None) -> list[str]:
    """The words of `text` (lower-cased, as the tokenizer splits them) that `known` lacks, once each."""
    known = demo_words() if known is None else known
    words = [t for t in _TOKEN.findall((text or "").lower()) if t[0].isalnum() or t[0] == "_"]
    return list(dict.fromkeys(w for w in words if w not in known))


def only_known(texts, known: frozenset[str] | None = None) -> list[str]:
    """The texts made only of known words, in their order."""
    return [t for t in texts if not unknown_words(t, known)]


def demo_word_groups() -> dict[str, list[str]]:
    """The demo's words grouped as a reader looks for them: colors, shapes, backgrounds, places, the rest."""
    from .demo import data

    groups = {
        "colors": list(data.COLORS),
        "shapes": [*data.SHAPES, *(s + "s" for s in data.SHAPES)],
        "backgrounds": list(data.BACKGROUNDS),
        "places": [*data.POSITIONS, "middle"],
        "sizes and counts": [w for ws in data.SIZE_WORDS.values() for w in ws if w] + ["one", "two", "three"],
    }
    grouped = {w for ws in groups.values() for w in ws}
    groups["other words"] = [w for w in data.vocabulary() if w not in grouped and w != ","]
    return groups


def vocabulary_line() -> str:
    """One line for under the prompt box (Markdown)."""
    parts = [f"{name}: {', '.join(words)}" for name, words in demo_word_groups().items() if name != "other words"]
    return ("The demo model knows only a few words (others are ignored): " + "; ".join(parts)
            + ". Example: *a red star on the left on a white background*.")


DEMO_PLACEHOLDER = "a red star on the left on a white background"
GENERAL_PLACEHOLDER = "a lighthouse on a cliff at sunset"


def prompt_hints(serves_demo: bool, examples, styles) -> dict:
    """What the prompt box offers: placeholder, example prompts, styles (name, suffix) and the
    vocabulary line (None unless serving the demo). For the demo, only texts of known words."""
    examples, styles = list(examples), list(styles)
    if not serves_demo:
        return {"placeholder": GENERAL_PLACEHOLDER, "examples": examples, "styles": styles, "vocabulary": None}
    known_examples = only_known(examples)
    return {
        "placeholder": known_examples[0] if known_examples else DEMO_PLACEHOLDER,
        "examples": known_examples or [DEMO_PLACEHOLDER],
        "styles": [s for s in styles if not unknown_words(s.suffix)],
        "vocabulary": vocabulary_line(),
    }


def unknown_words_warning(prompt: str) -> str | None:
    """The stats' warning for a demo prompt with words the demo does not know, or None."""
    unknown = unknown_words(prompt)
    if not unknown:
        return None
    return f"the demo model does not know {', '.join(repr(w) for w in unknown)}: those words are ignored"
