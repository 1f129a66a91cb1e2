"""The kiosk's attract screen on a fresh start: example pictures, made at start-up by the
served model from the preset's example prompts, until visitors' own pictures exist. With an
image filter, they pass it like every other picture."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
EXAMPLE_PICTURES = 3


def example_pictures(engine, model: str, preset, spec, precision: str, prompts, outputs, image_filter=None, count: int = EXAMPLE_PICTURES) -> list[str]:
    """PNG paths of up to `count` pictures of `prompts` (fixed seeds, the preset's defaults),
    kept in `outputs` (an fp8pipe.outputs.OutputStore). A prompt that fails, or whose picture
    the image filter flags, is skipped with a log line: the attract screen is a nicety."""
    from .image_filter import screened
    from .service import build_request

    paths = []
    for i, prompt in enumerate(list(prompts)[:count]):
        try:
            request = build_request(preset, spec, prompt, seed=i)
            (result,) = screened([engine.generate(request, model=model, precision=precision)], image_filter)
        except Exception as e:  # noqa: BLE001 - a missing example must not stop the kiosk
            log.warning("attract example %r not made: %s", prompt, e)
            continue
        paths += [str(p) for p in outputs.save(result)]
    return paths
