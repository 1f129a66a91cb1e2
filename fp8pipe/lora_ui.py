"""The advanced mode's LoRA panel: pick files from the LoRA folder and set their strengths.

A few slots, each a file (from the folder, listed afresh by "Rescan") and a strength slider;
what they hold becomes the request's `loras` ([{"name", "strength"}]), which is what the HTTP
API takes too. The names only: the server resolves them in its folder
(fp8pipe.lora_library), and validates them with the rest of the request.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from .lora_library import MAX_REQUEST_LORAS, MAX_STRENGTH

NONE = "(none)"


@dataclass
class LoraPanel:
    """The panel's components: `inputs` go into the Generate event, in slot order."""

    names: list  # one gr.Dropdown per slot
    strengths: list  # one gr.Slider per slot
    rescan: object  # gr.Button

    @property
    def inputs(self) -> list:
        return [c for pair in zip(self.names, self.strengths) for c in pair]

    def fill(self, loras) -> list:
        """Updates that show `loras` [(name, strength)] (read from a PNG) in the slots."""
        loras = list(loras or [])[: len(self.names)]
        padded = loras + [(NONE, 1.0)] * (len(self.names) - len(loras))
        return [gr.update(value=v) for name, strength in padded for v in (name, strength)]


def requested(values) -> list[dict]:
    """The slots' (name, strength, name, strength, ...) as the request's `loras`."""
    pairs = zip(values[0::2], values[1::2])
    return [{"name": name, "strength": float(strength)} for name, strength in pairs if name and name != NONE]


def lora_panel(library, slots: int = MAX_REQUEST_LORAS) -> LoraPanel:
    """The panel, inside an accordion that says which folder it lists."""
    names = library.names()
    with gr.Accordion(f"LoRAs ({len(names)} in the folder '{library.folder.name}')", open=False, elem_id="lora-panel") as accordion:
        gr.Markdown(
            f"LoRA `.safetensors` files in the folder `{library.folder.name}` (`--lora-dir`): diffusers/PEFT, kohya or ComfyUI keys. "
            f"Strength -{MAX_STRENGTH:g} to {MAX_STRENGTH:g}; the stats say which mode ran (runtime or merge).",
            elem_id="lora-help",
        )
        dropdowns, sliders = [], []
        for i in range(slots):
            with gr.Row():
                dropdowns.append(gr.Dropdown([NONE, *names], value=NONE, label=f"LoRA {i + 1}", elem_id=f"lora-name-{i + 1}", scale=3, allow_custom_value=True))
                sliders.append(gr.Slider(-MAX_STRENGTH, MAX_STRENGTH, value=1.0, step=0.05, label="Strength", elem_id=f"lora-strength-{i + 1}", scale=2))
        rescan = gr.Button("Rescan the LoRA folder", size="sm", elem_id="lora-rescan")

    def refresh():
        found = library.names()
        label = f"LoRAs ({len(found)} in the folder '{library.folder.name}')"
        return [gr.update(label=label), *[gr.update(choices=[NONE, *found]) for _ in dropdowns]]

    rescan.click(refresh, None, [accordion, *dropdowns], api_visibility="private", queue=False)
    return LoraPanel(dropdowns, sliders, rescan)
