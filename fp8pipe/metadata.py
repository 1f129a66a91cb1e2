"""The PNG `parameters` text chunk, in the layout other SD tools read and write.

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 28, CFG scale: 4.5, Seed: 42, Size: 1024x1024, Model: sd3.5-medium, Precision: fp8
"""

from __future__ import annotations

import re

from PIL.PngImagePlugin import PngInfo

CHUNK = "parameters"
_SETTING = re.compile(r"\s*([\w ]+):\s*([^,]+)")


def format_parameters(prompt: str, negative_prompt: str, settings: dict) -> str:
    """The chunk's text: prompt, the negative prompt line, then one line of `Key: value` pairs."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {v}" for k, v in settings.items()))
    return "\n".join(lines)


def png_info(parameters: str) -> PngInfo:
    info = PngInfo()
    info.add_text(CHUNK, parameters)
    return info


def parse_parameters(text: str) -> dict:
    """Read the chunk back: {'prompt', 'negative_prompt', and each setting by its key}."""
    lines = text.strip("\n").split("\n")
    settings_line = lines.pop() if lines and _SETTING.match(lines[-1]) and "Steps:" in lines[-1] else ""
    negative = [ln for ln in lines if ln.startswith("Negative prompt:")]
    prompt_lines = [ln for ln in lines if not ln.startswith("Negative prompt:")]
    result = {
        "prompt": "\n".join(prompt_lines),
        "negative_prompt": negative[0].removeprefix("Negative prompt:").strip() if negative else "",
    }
    for key, value in _SETTING.findall(settings_line):
        result[key.strip()] = value.strip()
    return result
