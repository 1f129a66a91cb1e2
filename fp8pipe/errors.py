"""The errors fp8pipe shows to people: each says what was tried and how to fix it."""

from __future__ import annotations


class ModelLoadError(Exception):
    """A model could not be loaded; the message is meant for the user, not a traceback."""

    def __init__(self, message: str, tried: list[str] | None = None, fix: str | None = None):
        self.message, self.tried, self.fix = message, tried or [], fix
        super().__init__(self.render())

    def render(self) -> str:
        lines = [self.message]
        if self.tried:
            lines.append("Tried: " + "; ".join(self.tried))
        if self.fix:
            lines.append("Fix: " + self.fix)
        return "\n".join(lines)
