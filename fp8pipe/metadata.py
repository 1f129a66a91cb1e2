"""The PNG `parameters` text chunk, in the layout other SD tools read and write.

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 28, CFG scale: 4.5, Seed: 42, Size: 1024x1024, Model: sd3.5-medium, Precision: fp8

Reading it back is user input (anyone can drop a PNG): the text is capped at MAX_CHUNK_CHARS
before it is looked at, and the parser is one pass of plain string splits (no regular
expression that can backtrack), so its time is linear in the capped length. Numbers are
read only when they are short runs of ASCII digits.
"""

from __future__ import annotations

from PIL.PngImagePlugin import PngInfo

CHUNK = "parameters"
NEGATIVE = "Negative prompt:"
MAX_CHUNK_CHARS = 64 * 1024  # two 2000-character prompts and the settings fit many times over
MAX_NUMBER_DIGITS = 12
_MAX_KEY_CHARS = 40


def _one_line(text: str) -> str:
    """A prompt on one line: a line break in it could otherwise forge the lines after it
    ("...\\nNegative prompt: ...\\nSteps: 999"). Text encoders read a line break as a space."""
    return " ".join(text.splitlines())


def format_parameters(prompt: str, negative_prompt: str, settings: dict) -> str:
    """The chunk's text: prompt, the negative prompt line, then one line of `Key: value` pairs."""
    lines = [_one_line(prompt)]
    if negative_prompt:
        lines.append(f"{NEGATIVE} {_one_line(negative_prompt)}")
    lines.append(", ".join(f"{k}: {_one_line(str(v)).replace(',', ' ')}" for k, v in settings.items()))
    return "\n".join(lines)


LORA_TAG = "<lora:"
LORA_HASHES = "Lora hashes"


def _lora_name(name: str) -> str:
    """A LoRA name safe inside a tag and the hashes list (no : < > , " or line breaks)."""
    return "".join(c if c not in ':<>,"' else "_" for c in _one_line(name)).strip() or "lora"


def add_loras(parameters: str, loras: list[tuple[str, float, str]]) -> str:
    """The chunk with LoRAs written as other SD tools write them: `<lora:NAME:STRENGTH>` at the end of
    the prompt line and `Lora hashes: "NAME: HASH, ..."` among the settings."""
    if not loras:
        return parameters
    lines = parameters.split("\n")
    lines[0] = (lines[0] + " " + " ".join(f"<lora:{_lora_name(n)}:{s:g}>" for n, s, _ in loras)).strip()
    hashes = ", ".join(f"{_lora_name(n)}: {h}" for n, _, h in loras)
    lines[-1] = f'{lines[-1]}, {LORA_HASHES}: "{hashes}"'
    return "\n".join(lines)


def split_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """(prompt without `<lora:NAME:STRENGTH>` tags, [(NAME, STRENGTH)]); a malformed tag stays
    text. One left-to-right pass (linear in the prompt's length)."""
    out, loras, pos = [], [], 0
    while True:
        start = prompt.find(LORA_TAG, pos)
        end = prompt.find(">", start + 1) if start >= 0 else -1
        if start < 0 or end < 0:
            out.append(prompt[pos:])
            break
        name, _, strength = prompt[start + len(LORA_TAG) : end].rpartition(":")
        negative = strength.startswith("-")
        value = number(strength[1:] if negative else strength)
        if name and value is not None:
            out.append(prompt[pos:start])
            loras.append((name, -value if negative else value))
        else:
            out.append(prompt[pos : end + 1])
        pos = end + 1
    return (" ".join("".join(out).split()) if loras else prompt), loras


def png_info(parameters: str) -> PngInfo:
    info = PngInfo()
    info.add_text(CHUNK, parameters)
    return info


def _settings(line: str) -> dict | None:
    """`Key: value, Key: value` as a dict (a part that is not `Key: value` belongs to the value
    before it, as quoted lists of other tools do), or None when the line does not start so."""
    parts: dict[str, list[str]] = {}
    last, quoted = None, False
    for part in line.split(","):
        key, colon, value = part.partition(":")
        key = key.strip()
        if not quoted and colon and key and len(key) <= _MAX_KEY_CHARS and all(c.isalnum() or c in " _-" for c in key):
            parts[key] = [value]
            last = key
        elif last is None:
            return None
        else:
            parts[last].append(part)  # joined once at the end: repeated += would be quadratic
        quoted ^= part.count('"') % 2 == 1  # inside "...": commas and colons belong to the value
    return {key: ",".join(values).strip() for key, values in parts.items()}


def parse_parameters(text: str) -> dict:
    """Read the chunk back: {'prompt', 'negative_prompt', and each setting by its key}.

    Text beyond MAX_CHUNK_CHARS is not read."""
    text = str(text)[:MAX_CHUNK_CHARS]
    lines = text.strip("\n").split("\n")
    settings = _settings(lines[-1]) if lines and "Steps:" in lines[-1] else None
    if settings is not None:
        lines.pop()
    prompt_lines, negative = [], None
    for line in lines:
        if negative is None and line.startswith(NEGATIVE):
            negative = [line[len(NEGATIVE) :].strip()]
        elif negative is not None:
            negative.append(line)  # a multi-line negative prompt from another tool
        else:
            prompt_lines.append(line)
    return {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(negative or []), **(settings or {})}


def whole_number(text) -> int | None:
    """An int from a short run of ASCII digits, else None (no superscripts, no 4300-digit numbers)."""
    text = str(text).strip()
    if not 0 < len(text) <= MAX_NUMBER_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def number(text) -> float | None:
    """A finite float from a short plain decimal (digits, one point), else None."""
    text = str(text).strip()
    whole, _, fraction = text.partition(".")
    if not whole or len(text) > MAX_NUMBER_DIGITS + 1 or whole_number(whole) is None or (fraction and whole_number(fraction) is None):
        return None
    return float(text)


def form_fields(text: str) -> dict:
    """The settings a form can take from a chunk, each present only when it reads cleanly:
    prompt, negative_prompt, steps, guidance, seed, width, height, and loras [(name, strength)]
    read from `<lora:...>` tags (taken out of the prompt)."""
    p = parse_parameters(text)
    prompt, loras = split_lora_tags(p["prompt"])
    fields = {"prompt": prompt, "negative_prompt": p["negative_prompt"]}
    if loras:
        fields["loras"] = loras
    width, _, height = p.get("Size", "").partition("x")
    for name, value in (("steps", whole_number(p.get("Steps", ""))), ("guidance", number(p.get("CFG scale", ""))), ("seed", whole_number(p.get("Seed", ""))), ("width", whole_number(width)), ("height", whole_number(height))):
        if value is not None:
            fields[name] = value
    return fields
