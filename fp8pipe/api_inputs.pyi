"""Gradio input components for the HTTP API that refuse wrong JSON types instead of coercing
them: Gradio's own Textbox turns a list into its text and Number turns `true` into 1.0.
The error names the field, as every other request error does.

With fp8pipe.lora_ui (the LoRA panel), the only modules under fp8pipe/ that import Gradio; only app.py uses them.
"""

from __future__ import annotations

import gradio as gr


def _wrong_type(label: str, wanted: str, payload) -> gr.Error:
    return gr.Error(f"{label}: must be {wanted}; got {type(payload).__name__}", title=f"Invalid {label}")

from gradio.events import Dependency

class StrictText(gr.Textbox):
    """Text or nothing (null); anything else is refused."""

    def preprocess(self, payload):
        if payload is not None and not isinstance(payload, str):
            raise _wrong_type(self.label, "text", payload)
        return payload
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class StrictNumber(gr.Number):
    """A JSON number or nothing (null); true/false, text and lists are refused. Range checks
    stay with the request's validation, which names the allowed range."""

    def preprocess(self, payload):
        if payload is not None and (isinstance(payload, bool) or not isinstance(payload, (int, float))):
            raise _wrong_type(self.label, "a number", payload)
        return payload
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component