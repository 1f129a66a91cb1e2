"""fp8pipe web app: a kiosk that runs itself, an advanced mode for people who tune, an HTTP API.

Thin by design: flags, layout and events. Every request goes through fp8pipe.service (preset
limits, prompt filter, rate limit) to the engine, which owns the models.

    python app.py                 advanced mode, the preset's model (the embedded demo by default)
    python app.py --kiosk         full-screen kiosk: prompt, styles, a big image, idle reset
    python app.py --share --auth me:secret
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

IDLE_CHECK_SECONDS = 2.0
SLIDESHOW_SECONDS = 5.0
HISTORY_SIZE = 24
HEARTBEAT_SECONDS = 0.25  # a running event yields at least this often, so Gradio can stop it
MAX_UPLOAD = "20mb"  # the advanced mode's PNG drop; the kiosk has no upload field and accepts none
SESSION_CAPACITY = 500  # sessions whose state Gradio keeps (Gradio's default, 10000, can hold a gigabyte)
GPU_QUEUE = "gpu"  # every event that generates shares one queue: one job at a time (per replica with --ray)
log = logging.getLogger("fp8pipe.app")

import gradio as gr  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python app.py", description="fp8pipe: SD3.5 in FP8 as a web app")
    p.add_argument("--kiosk", action="store_true", help="full-screen kiosk mode: no settings, idle reset, prompt filter")
    p.add_argument("--share", action="store_true", help="a public gradio.live link for a week (use --auth with it)")
    # A Space runs `python app.py` with no flags: FP8PIPE_MODEL / FP8PIPE_PRESET (the Space's variables) stand in.
    p.add_argument("--model", default=os.environ.get("FP8PIPE_MODEL") or None, help="override the preset's model (demo, hub id, folder, .safetensors, FP8 checkpoint; env FP8PIPE_MODEL)")
    p.add_argument("--preset", default=os.environ.get("FP8PIPE_PRESET") or None, help="a shipped preset name (cpu-demo, kiosk-8gb, zerogpu, ...) or a .toml file (env FP8PIPE_PRESET)")
    host, port = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), os.environ.get("GRADIO_SERVER_PORT", "7860")
    p.add_argument("--host", default=host, help=f"address to listen on; 0.0.0.0 for every interface (default {host}; env GRADIO_SERVER_NAME)")
    p.add_argument("--port", type=int, default=int(port), help=f"port to listen on (default {port}; env GRADIO_SERVER_PORT)")
    p.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login")
    p.add_argument("--vram", default=None, help="VRAM budget, e.g. 8GiB (default: the GPU's free memory)")
    p.add_argument("--queue-size", type=int, default=None, help="how many requests may wait (default: the preset's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto: a GPU when there is one)")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up generation at start-up")
    p.add_argument("--ray", default=None, metavar="auto|ADDRESS", help="send generations to the replicas that `python -m fp8pipe serve` deployed on a Ray cluster (auto: this machine's; ADDRESS: HOST:PORT); the replicas' preset sets their device, VRAM and LoRAs (default: off, the engine runs in this process)")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]", help="a LoRA .safetensors file on every picture (with the preset's [[loras]]); repeatable")
    p.add_argument("--lora-mode", default=None, choices=("auto", "runtime", "merge"), help="how LoRAs are applied; auto: the planner picks (default: the preset's, else auto)")
    p.add_argument("--lora-budget", default="256MiB", metavar="SIZE", help="runtime-mode memory one request's LoRAs may take beside the weights; the planner counts it (default 256MiB)")
    p.add_argument("--lora-dir", default=os.environ.get("FP8PIPE_LORA_DIR") or None, metavar="DIR",
                   help="advanced mode and API: the folder whose .safetensors LoRAs a request may pick by name (default: env FP8PIPE_LORA_DIR, "
                        "else ./loras; with the demo model and no ./loras, the demo's own LoRA folder; the kiosk takes none)")
    p.add_argument(
        "--trusted-proxy-header",
        default=None,
        metavar="HEADER",
        help="behind a reverse proxy you run (only then): the header it puts the client's address in, e.g. X-Forwarded-For; the rate limit counts by that address",
    )
    p.add_argument("--public-url", default=None, metavar="URL", help="the address visitors' phones reach this server at, e.g. http://192.168.1.20:7860; the kiosk then shows a QR code to take each picture home")
    p.add_argument("--image-filter", default=None, metavar="MODEL", help="the image classifier that checks every picture (hub id or folder); overrides the preset's [image_filter] model")
    p.add_argument("--no-image-filter", action="store_true", help="turn the preset's image filter off explicitly")
    args = p.parse_args(argv)
    if args.image_filter and args.no_image_filter:
        p.error("--image-filter and --no-image-filter exclude each other")
    if args.public_url is not None:
        from fp8pipe.takehome import check_public_url

        try:
            args.public_url = check_public_url(args.public_url)
        except ValueError as e:
            p.error(str(e))
    if args.auth is not None and (":" not in args.auth or not args.auth.split(":", 1)[0] or not args.auth.split(":", 1)[1]):
        p.error("--auth must be USER:PASS with both parts non-empty")
    if args.ray and (args.lora or args.vram):
        p.error("--lora and --vram are the replicas' settings with --ray: put them in the preset that `python -m fp8pipe serve --preset` deploys")
    if args.queue_size is not None and not 1 <= args.queue_size <= 1000:
        p.error("--queue-size must be from 1 to 1000")
    if not 1 <= args.port <= 65535:
        p.error("--port must be from 1 to 65535")
    return args


@dataclass
class App:
    """Everything the events need: the engine, the preset, and the kiosk's slideshow."""

    engine: object
    preset: object
    spec: object
    model: str
    kiosk: bool
    limiter: object
    outputs: object  # fp8pipe.outputs.OutputStore
    proxy_header: str | None = None
    gpu_stream: object = None  # ZeroGPU: the job's stream, run inline inside a @spaces.GPU call
    image_filter: object = None  # fp8pipe.image_filter.ImageFilter, or None when the preset has none
    public_url: str | None = None  # where visitors' phones reach this server: the kiosk shows a QR code
    lora_library: object = None  # fp8pipe.lora_library.LoraLibrary: the LoRAs a request may name (None in the kiosk)
    slots: int = 1  # generations at once: 1 for the in-process engine, the replicas with --ray
    recent: deque = field(default_factory=lambda: deque(maxlen=HISTORY_SIZE))
    examples: list = field(default_factory=list)  # the attract screen's pictures until visitors make some

    @property
    def hints(self) -> dict:
        """Placeholder, example prompts, styles and (for the demo) its vocabulary line."""
        from fp8pipe.vocabulary import prompt_hints

        return prompt_hints(self.model == "demo", self.preset.examples, self.preset.styles)


def client_address(app: App, request) -> str:
    """What the rate limit counts by: the client's address (a session id is the client's to choose)."""
    from fp8pipe.service import client_key

    if request is None:
        return "local"
    return client_key(getattr(getattr(request, "client", None), "host", None), getattr(request, "headers", None), app.proxy_header)


def _as_gradio_error(e: Exception, request=None, values: dict | None = None):
    """The visitor's error. A refused input is one log line (field, value, client) and no
    traceback; a real failure keeps its traceback in the log."""
    from fp8pipe.image_filter import ImageFlagged
    from fp8pipe.requests import RequestError
    from fp8pipe.service import Refused

    if isinstance(e, ImageFlagged):
        log.warning("refused image of prompt=%.80r from %s: flagged %s", (values or {}).get("prompt"), _peer(request), e.detail)
    elif isinstance(e, (Refused, RequestError)):
        name = getattr(e, "field", "request")
        value = (values or {}).get(name)
        log.warning("refused %s=%.80r from %s: %s", name, value, _peer(request), e)
    if isinstance(e, Refused):
        return gr.Error(str(e), title="Let's try something else", print_exception=False)
    if isinstance(e, RequestError):
        return gr.Error(str(e), title=f"Invalid {e.field}", print_exception=False)
    from fp8pipe.outputs import SaveFailed

    if isinstance(e, SaveFailed):
        return gr.Error(str(e), title="Not saved", print_exception=False)
    return gr.Error(f"{type(e).__name__}: {e}", title="Generation failed", print_exception=False)  # logged by the caller


def _peer(request) -> str:
    """The connection's address, for log lines."""
    return getattr(getattr(request, "client", None), "host", None) or "local"


def _run(app: App, prompt, style=None, precision=None, preview=False, request=None, model=None, t5=None, **fields):
    """Validate, filter, rate-limit, then stream (Progress..., Result) from the engine."""
    from fp8pipe import serving
    from fp8pipe.image_filter import screened
    from fp8pipe.requests import RequestError
    from fp8pipe.service import Refused, build_request

    model = model or app.model
    try:
        spec = app.spec if model == app.model else app.engine.spec_for(model)
        choices = app.lora_library.names() if app.lora_library is not None else None  # None: per-request LoRAs refused
        req = build_request(app.preset, spec, prompt, style=style, lora_choices=choices, **fields)
        app.limiter.check(client_address(app, request))
    except (RequestError, Refused) as e:
        raise _as_gradio_error(e, request, {"prompt": prompt, "style": style, **fields}) from None
    try:
        preview = preview and app.image_filter is None  # with an image filter, nothing is shown before its verdict
        args = (req, model, precision or app.preset.precision, preview, None if t5 in (None, "auto") else t5)
        if app.gpu_stream is not None:  # ZeroGPU: the whole job inside one GPU call (a forked child)
            stream = app.gpu_stream(*args)
        else:
            stream = serving.serve_request(app.engine, *args, heartbeat=HEARTBEAT_SECONDS)
        yield from screened(stream, app.image_filter)
    except (RequestError, Refused) as e:
        raise _as_gradio_error(e, request, {"prompt": prompt, **fields}) from None
    except RuntimeError as e:
        log.exception("generation failed for %s", _peer(request))  # a real failure: its traceback
        raise _as_gradio_error(e) from None


def zerogpu_stream(app: App, spaces):
    """The job's stream as a `@spaces.GPU` generator: in the call's forked child the job runs
    inline (the engine's worker thread does not exist there) and streams Progress, heartbeats
    and the Result back as CPU objects; the duration asked for is computed per request
    (fp8pipe.zerogpu). Any failure comes back as one gr.Error with a clear message."""
    from fp8pipe import serving, zerogpu

    def stream(req, model, precision, preview, t5):
        try:
            yield from serving.serve_request(app.engine, req, model, precision, preview, t5, inline=True, heartbeat=HEARTBEAT_SECONDS)
        except gr.Error:
            raise
        except Exception as e:
            log.exception("generation failed in the GPU call")
            raise _as_gradio_error(e) from None

    return spaces.GPU(duration=zerogpu.request_duration(app.engine.spec_for))(stream)


def _keep(app: App, result) -> list[Path]:
    """Save a result's PNGs (once, in the bounded output folder) and remember them for the
    slideshow and history."""
    from fp8pipe.outputs import SaveFailed

    try:
        paths = app.outputs.save(result)
    except SaveFailed as e:
        raise _as_gradio_error(e) from None
    app.recent.extendleft(str(p) for p in paths)
    return paths


def _final(app: App, stream):
    """Drain a stream to its Result, yielding None at each step so that Gradio can stop a
    cancelled or disconnected event between steps (closing the stream cancels the job); the
    last item is (paths, result)."""
    yield None  # before the job is submitted: from here on Gradio holds the event's iterator
    result = None
    for item in stream:
        result = item
        yield None
    yield _keep(app, result), result


def _stats(result, extra: dict | None = None) -> dict:
    """The stats a client sees; with the demo model, a warning for prompt words it does not know."""
    from fp8pipe.serving import public_stats

    return public_stats(result, extra)


# ---- API -----------------------------------------------------------------------------


def api_generate(app: App):
    def generate(prompt, negative_prompt=None, seed=None, steps=None, guidance=None, width=None, height=None, loras=None, request=None):
        """One image. Settings left out take the preset's defaults; the preset's limits hold.
        A generator: at each step the stats output carries {"progress": {"step", "total"}} (a
        streaming client sees them), in between it yields nothing new (gr.skip), so a cancel
        stops the job; the last output is the image and its stats."""
        fields = dict(negative_prompt=negative_prompt, seed=seed, steps=steps, guidance=guidance, width=width, height=height, loras=loras)
        yield gr.skip(), gr.skip()  # before the job is submitted: from here on Gradio holds the event's iterator
        result = None
        for item in _run(app, prompt, request=request, **fields):
            if item is None:
                yield gr.skip(), gr.skip()
            elif hasattr(item, "step"):
                yield gr.skip(), {"progress": {"step": item.step, "total": item.total}}
            else:
                result = item
        paths = _keep(app, result)
        yield str(paths[0]), _stats(result)

    return generate


# ---- kiosk -----------------------------------------------------------------------------

def build_kiosk(app: App):
    """The attract screen, then prompt, styles, Create and the picture (with its take-home QR
    code when there is a --public-url), laid out so that nothing scrolls (fp8pipe.kiosk_css)."""
    preset, hints = app.preset, app.hints
    styles = [s.name for s in hints["styles"]]
    with gr.Blocks(title="fp8pipe kiosk", fill_height=True, delete_cache=(600, 3600)) as demo:
        last_active = gr.State(time.time)
        screen = gr.State("attract")  # or "main"
        ticks = gr.State(0)
        with gr.Column(visible=True, elem_id="attract") as attract:
            gr.Markdown("# Type an idea. Get a picture.", elem_id="attract-title")
            first = app.examples[0] if app.examples else None
            slideshow = gr.Image(first, show_label=False, interactive=False, elem_id="attract-image", buttons=[])
            start = gr.Button("Touch to start", variant="primary", elem_id="start-button")
        with gr.Column(visible=False, elem_id="kiosk-main") as main:
            with gr.Row(elem_id="kiosk-row"):
                with gr.Column(scale=2, min_width=260, elem_id="kiosk-controls"):
                    prompt = gr.Textbox(
                        label="Your idea",
                        placeholder=hints["placeholder"],
                        lines=2,
                        max_length=preset.limits_for(app.spec).max_prompt_chars,
                        elem_id="prompt",
                    )
                    go = gr.Button("Create", variant="primary", elem_id="generate-button")
                    status = gr.Markdown(elem_id="status")
                    style = gr.Radio(styles, value=styles[0] if styles else None, label="Style", elem_id="style", visible=len(styles) > 1)
                    if hints["examples"]:
                        gr.Examples(examples=[[e] for e in hints["examples"]], inputs=[prompt], label="Ideas", elem_id="ideas")
                    if hints["vocabulary"]:
                        gr.Markdown(hints["vocabulary"], elem_id="vocabulary")
                with gr.Column(scale=4, min_width=260, elem_id="kiosk-picture"):
                    drawing = gr.HTML(visible=False, elem_id="drawing")  # progress, over where the picture appears
                    with gr.Row(elem_id="kiosk-picture-row"):
                        image = gr.Image(label="Your picture", type="filepath", format="png", interactive=False, elem_id="result-image", buttons=[], scale=1, min_width=200)
                        with gr.Column(visible=False, scale=0, min_width=200, elem_id="kiosk-takehome") as takehome:
                            # no label: nothing may cover the code's quiet zone
                            qr = gr.Image(show_label=False, type="pil", format="png", interactive=False, elem_id="takehome-qr", buttons=[], height=200)
                            gr.Markdown("**Take it home:** scan this with your phone.", elem_id="takehome-note")

        def begin():
            return gr.update(visible=False), gr.update(visible=True), time.time(), "main"

        start.click(begin, None, [attract, main, last_active, screen], api_visibility="private", queue=False)

        def touch():
            return time.time()

        prompt.input(touch, None, last_active, api_visibility="private", queue=False, show_progress="hidden")

        def create(text, chosen_style, request: gr.Request):
            """Progress shows over the picture's box; the old picture and its QR code go first,
            so a refused or failed request leaves nothing of the last one."""
            from fp8pipe.kiosk_css import progress_html

            skip = gr.skip()
            yield None, "Starting...", time.time(), None, gr.update(visible=False), gr.update(value=progress_html(0, 0), visible=True)
            result = None
            try:
                for item in _run(app, text, style=chosen_style, preview=preset.previews, request=request):
                    if item is None:  # a heartbeat: the event can be stopped here
                        yield skip, skip, skip, skip, skip, skip
                    elif hasattr(item, "step"):
                        picture = item.preview if item.preview is not None else skip
                        yield picture, f"Step {item.step} of {item.total}", time.time(), skip, skip, progress_html(item.step, item.total)
                    else:
                        result = item
                paths = _keep(app, result)
            except gr.Error:
                yield skip, "", time.time(), skip, skip, gr.update(visible=False)  # the bar goes; the message shows
                raise
            code, shown = None, gr.update(visible=False)
            if app.public_url:
                from fp8pipe.takehome import public_link, qr_code

                code, shown = qr_code(public_link(app.public_url, paths[0])), gr.update(visible=True)
            yield str(paths[0]), f"Done in {result.stats['latency_s']:.1f} s", time.time(), code, shown, gr.update(visible=False)

        for trigger in (go.click, prompt.submit):
            trigger(
                create,
                [prompt, style],
                [image, status, last_active, qr, takehome, drawing],
                api_visibility="private",
                concurrency_id=GPU_QUEUE,
                concurrency_limit=app.slots,
                trigger_mode="once",
                show_progress_on=[image],  # the queue's place and ETA show where the picture will appear
            )

        timer = gr.Timer(IDLE_CHECK_SECONDS)

        def tick(since, where, count):
            """Idle for longer than the preset allows: back to the attract screen, prompt cleared;
            on the attract screen, the slideshow moves on every SLIDESHOW_SECONDS."""
            keep = gr.update()
            if where == "main":
                if time.time() - since <= preset.idle_seconds:
                    return keep, keep, keep, keep, keep, keep, keep, where, count
                return gr.update(visible=True), gr.update(visible=False), "", None, "", gr.update(visible=False), keep, "attract", count
            pictures = [p for p in app.recent if os.path.exists(p)] or app.examples
            per_slide = max(1, round(SLIDESHOW_SECONDS / IDLE_CHECK_SECONDS))
            picture = pictures[(count // per_slide) % len(pictures)] if pictures and count % per_slide == 0 else keep
            return keep, keep, keep, keep, keep, keep, picture, where, count + 1

        timer.tick(
            tick,
            [last_active, screen, ticks],
            [attract, main, prompt, image, status, takehome, slideshow, screen, ticks],
            api_visibility="private",
            queue=False,
            show_progress="hidden",
        )
        _add_api(app)
    return demo


# ---- advanced ----------------------------------------------------------------------------

# Small pictures keep their pixels (they are shown at a whole-number scale, see fp8pipe.display).
ADVANCED_CSS = """
#result-gallery img, #history img, #diff-image img {image-rendering: pixelated}
#vocabulary p {font-size: 0.85rem; margin: 0}
#history .grid-container {grid-template-columns: repeat(auto-fill, 128px) !important; grid-auto-rows: 128px !important}
"""


def build_advanced(app: App):
    from fp8pipe.loader import demo_model_shipped
    from fp8pipe.lora_ui import lora_panel, requested
    from fp8pipe.metadata import form_fields
    from fp8pipe.naming import model_display_name
    from fp8pipe.presets import available_presets, load_preset
    from fp8pipe.requests import MAX_SEED, SHIFT_RANGE

    preset, spec = app.preset, app.spec
    limits, defaults = preset.limits_for(spec), preset.defaults_for(spec)
    precisions = ["fp8", "bf16", "fp16", "fp32"]
    hints = app.hints
    shown = {model_display_name(app.model): app.model, "demo": "demo"}  # the page names models, never a path
    with gr.Blocks(title="fp8pipe", delete_cache=(3600, 86400)) as demo:
        gr.Markdown(f"## fp8pipe: {model_display_name(app.model)} ({preset.name})")
        if app.model == "demo" and not demo_model_shipped():
            gr.Markdown("The trained demo model is missing from this install: the demo runs with **random weights**, its images are noise.")
        history_items = gr.State([])  # this browser session's pictures only: nothing of another visitor's
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt", max_length=limits.max_prompt_chars, placeholder=hints["placeholder"])
                if hints["vocabulary"]:
                    gr.Markdown(hints["vocabulary"], elem_id="vocabulary")
                go = gr.Button("Generate", variant="primary", elem_id="generate-button")
                if hints["examples"]:
                    gr.Examples(examples=[[e] for e in hints["examples"]], inputs=[prompt], label="Example prompts", elem_id="examples")
                negative = gr.Textbox(label="Negative prompt", value=defaults["negative_prompt"], lines=1)
                with gr.Row():
                    model = gr.Dropdown(list(shown), value=model_display_name(app.model), label="Model")
                    preset_choice = gr.Dropdown(available_presets(), value=preset.name if preset.name in available_presets() else None, label="Preset (fills the settings)")
                with gr.Row():
                    precision = gr.Radio(precisions, value=preset.precision, label="Transformer precision")
                    t5 = gr.Radio(["auto", "16bit", "fp8", "cpu", "drop"], value=preset.t5, label="T5 text encoder")
                    compare = gr.Checkbox(label="Compare FP8 with BF16 (same seed)", value=False)
                with gr.Row():
                    steps = gr.Slider(1, limits.max_steps, value=defaults["steps"], step=1, label="Steps")
                    guidance = gr.Slider(0, limits.max_guidance, value=defaults["guidance"], step=0.1, label="Guidance")
                with gr.Row():
                    width = gr.Slider(limits.min_size, limits.max_size, value=defaults["width"], step=limits.size_multiple, label="Width")
                    height = gr.Slider(limits.min_size, limits.max_size, value=defaults["height"], step=limits.size_multiple, label="Height")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
                    randomize = gr.Checkbox(value=True, label="Randomize seed")
                    batch = gr.Slider(1, 8, value=1, step=1, label="Batch count")
                    shift = gr.Slider(SHIFT_RANGE[0], SHIFT_RANGE[1], value=spec.shift, step=0.1, label="Shift")
                lora_slots = lora_panel(app.lora_library) if app.lora_library is not None else None
                dropped = gr.Image(type="pil", label="Drop a PNG to read its parameters", sources=["upload"], height=160, format="png", elem_id="parameters-drop")
            with gr.Column(scale=3):
                gallery = gr.Gallery(label="Images", columns=2, height="auto", format="png", object_fit="scale-down", elem_id="result-gallery")
                with gr.Row(visible=False) as compare_row:
                    diff = gr.Image(label="|FP8 - BF16| x4", interactive=False, format="png", elem_id="diff-image")
                stats_table = gr.Markdown(elem_id="stats-table")
                with gr.Accordion("Stats as JSON", open=False, elem_id="stats-json"):
                    stats = gr.JSON(label="Stats")
                history = gr.Gallery(label="History (this browser session)", columns=6, height=200, format="png", object_fit="scale-down", elem_id="history")

        def run(text, neg, chosen_model, prec, t5_mode, comp, n_steps, g, w, h, s, rand, count, sh, kept, request: gr.Request, *slots):
            import secrets

            from fp8pipe.display import display_copy, scale_label
            from fp8pipe.fp8 import psnr
            from fp8pipe.service import difference_image
            from fp8pipe.stats_table import stats_markdown

            first_seed = secrets.randbelow(MAX_SEED + 1) if rand else s
            images, all_stats = [], []
            compare_update, diff_image = gr.update(visible=False), None
            for i in range(int(count)):
                this_seed = (int(first_seed) + i) % (MAX_SEED + 1) if first_seed is not None else None
                fields = dict(negative_prompt=neg, steps=n_steps, guidance=g, width=w, height=h, seed=this_seed, shift=sh, loras=requested(slots))
                variants = ["fp8", "bf16"] if comp else [prec]
                results = []
                for variant in variants:
                    stream = _run(app, text, precision=variant, request=request, model=shown.get(chosen_model, chosen_model), t5=t5_mode, **fields)
                    for done in _final(app, stream):
                        if done is None:
                            yield (gr.skip(),) * 7  # a step: the event can be stopped here
                    paths, result = done
                    picture, scale = display_copy(paths[0])
                    size = scale_label(result.image.width, result.image.height, scale)
                    images.append((picture, f"{variant} seed {result.request.seed} {result.stats['latency_s']:.2f} s, {size}"))
                    results.append(result)
                    all_stats.append(_stats(result))
                if comp:
                    diff_image, mean = difference_image(results[0].image, results[1].image)
                    all_stats.append({"compare": {"mean_abs_diff": round(mean, 3), "psnr_db": round(psnr(results[0].image, results[1].image), 2)}})
                    compare_update = gr.update(visible=True)
            kept = (images + list(kept or []))[:HISTORY_SIZE]
            shown_as = gr.update(value=images, label=f"Images ({size})")  # the label says the display scale
            yield shown_as, stats_markdown(all_stats), all_stats, kept, kept, compare_update, diff_image

        go.click(
            run,
            [prompt, negative, model, precision, t5, compare, steps, guidance, width, height, seed, randomize, batch, shift, history_items, *(lora_slots.inputs if lora_slots else [])],
            [gallery, stats_table, stats, history_items, history, compare_row, diff],
            api_visibility="private",
            concurrency_id=GPU_QUEUE,
            concurrency_limit=app.slots,
        )

        def read_parameters(image):
            slots = lora_slots.inputs if lora_slots else []
            if image is None or not isinstance(getattr(image, "info", {}).get("parameters"), str):
                return [gr.update()] * (7 + len(slots))
            p = form_fields(image.info["parameters"])
            order = ("prompt", "negative_prompt", "steps", "guidance", "seed", "width", "height")
            return (*(p.get(name, gr.update()) for name in order), *(lora_slots.fill(p.get("loras")) if lora_slots else []))

        def apply_preset(name):
            """A shipped preset's defaults, clamped to this app's limits (which stay in force)."""
            chosen = load_preset(name).defaults_for(spec)
            clamp = lambda v, lo, hi: min(max(v, lo), hi)  # noqa: E731
            return (
                chosen["negative_prompt"],
                clamp(chosen["steps"], 1, limits.max_steps),
                clamp(chosen["guidance"], 0, limits.max_guidance),
                clamp(chosen["width"], limits.min_size, limits.max_size),
                clamp(chosen["height"], limits.min_size, limits.max_size),
            )

        preset_choice.input(apply_preset, preset_choice, [negative, steps, guidance, width, height], api_visibility="private")
        dropped.upload(read_parameters, dropped, [prompt, negative, steps, guidance, seed, width, height, *(lora_slots.inputs if lora_slots else [])], api_visibility="private")
        _add_api(app)
    return demo


def _add_api(app: App) -> None:
    """Named endpoints for gradio_client: /generate (and /describe)."""
    from fp8pipe.api_inputs import StrictNumber, StrictText

    with gr.Row(visible=False):
        # No initial values: a setting a client leaves out arrives as None and takes the
        # preset's default on the server, where the preset's limits also hold.
        # Strict: a list as the prompt or true as guidance is refused, not coerced.
        inputs = [
            StrictText(label="prompt"),
            StrictText(label="negative_prompt", value=None),
            StrictNumber(label="seed", value=None, precision=None),
            StrictNumber(label="steps", value=None, precision=None),
            StrictNumber(label="guidance", value=None),
            StrictNumber(label="width", value=None, precision=None),
            StrictNumber(label="height", value=None, precision=None),
            gr.JSON(label="loras", value=None),  # [{"name": file in the LoRA folder, "strength": -4..4}]; refused by a kiosk
        ]
        outputs = [gr.Image(label="image", type="filepath", format="png"), gr.JSON(label="stats")]
        a_button, b_button = gr.Button(visible=False), gr.Button(visible=False)
        a_info = gr.JSON(label="engine")
    fn = api_generate(app)

    def generate(
        prompt: str,
        negative_prompt: str | None = None,
        seed: float | None = None,
        steps: float | None = None,
        guidance: float | None = None,
        width: float | None = None,
        height: float | None = None,
        loras: list | None = None,
        request: gr.Request = None,
    ):
        """One image and its stats; left-out settings take the preset's defaults. `loras`: [{"name", "strength"}] from the LoRA folder."""
        yield from fn(prompt, negative_prompt, seed, steps, guidance, width, height, loras, request=request)

    a_button.click(generate, inputs, outputs, api_name="generate", concurrency_id=GPU_QUEUE, concurrency_limit=app.slots)

    def describe():
        if app.kiosk:  # a public kiosk tells strangers nothing about the machine
            return {"kiosk": True, "ready": app.engine.ready.is_set()}
        from fp8pipe.naming import model_display_name

        engine = app.engine.describe()  # its pool names models as loaded: a folder's path, never shown
        engine["pool"] = [{**entry, "model": model_display_name(entry["model"])} for entry in engine.get("pool", [])]
        loras = app.lora_library.names() if app.lora_library is not None else []  # what /generate's loras may name
        return {"model": model_display_name(app.model), "preset": app.preset.name, "kiosk": app.kiosk, "engine": engine, "loras": loras}

    b_button.click(describe, None, a_info, api_name="describe", queue=False)


# ---- start-up ---------------------------------------------------------------------------


def _loras(args, preset) -> list:
    """The preset's [[loras]] and the --lora flags, files checked before any model is read."""
    from fp8pipe.lora import LoraSpec, check_lora_files, parse_lora_arg

    loras = [LoraSpec(x.file, x.strength) for x in preset.loras] + [parse_lora_arg(text) for text in args.lora]
    check_lora_files(loras)
    return loras


def _default_lora_dir(model: str) -> Path:
    """./loras; for the demo model without one, the folder of LoRAs shipped with it."""
    from fp8pipe.loader import DEMO_MODEL_DIR

    return Path("loras") if Path("loras").is_dir() or model != "demo" else DEMO_MODEL_DIR / "loras"


def create_app(args) -> tuple[object, App]:
    """The Blocks and its App, with the engine started and warm."""
    from gradio.utils import get_upload_folder

    from fp8pipe.engine import Engine
    from fp8pipe.loader import resolve_device
    from fp8pipe.outputs import OutputStore
    from fp8pipe.presets import load_preset
    from fp8pipe.service import RateLimiter
    from fp8pipe.startup import check_port_free, check_writable_folder

    preset = load_preset(args.preset or ("kiosk-8gb" if args.kiosk and args.model not in (None, "demo") else "cpu-demo"))
    model = args.model or preset.model
    # What can fail in a second fails before the minutes of loading a model.
    check_port_free(args.host, args.port)
    cache = check_writable_folder(get_upload_folder(), "Gradio's file cache (GRADIO_TEMP_DIR)")
    check_writable_folder(tempfile.gettempdir(), "the temporary folder (TMPDIR)")
    device = resolve_device(args.device)
    image_filter = _load_image_filter(args, preset, str(device))  # fails closed, before minutes of loading
    known = _known_spec(model)
    if known is not None:
        preset.check_for(known)
    from fp8pipe import zerogpu

    spaces = zerogpu.spaces_module()  # None unless ZeroGPU is active: then no warm-up (it would not carry into the calls), no compile
    loras = _loras(args, preset)
    from fp8pipe.lora_library import LoraLibrary

    # per-request LoRAs: from the LoRA folder in this process; a kiosk's come from its preset only, and
    # with --ray the replicas' preset sets them (their engines hold no LoRA folder)
    library = None if args.kiosk or args.ray else LoraLibrary.at(args.lora_dir or _default_lora_dir(model))
    if args.ray:  # the same request path, the jobs on Ray Serve replicas (fp8pipe.cluster)
        from fp8pipe.cluster.backend import RayBackend

        engine = RayBackend.connect(args.ray)
    else:
        engine = Engine(device=args.device, vram_budget=args.vram or preset.vram, warmup=not args.no_warmup and spaces is None, t5=preset.t5, compile=preset.compile and spaces is None,
                        loras=loras, lora_mode=args.lora_mode or preset.lora_mode, lora_library=library, lora_budget=args.lora_budget)
        engine.start(models=[(model, preset.precision)])
    spec = engine.spec_for(model)
    try:
        preset.check_for(spec)
    except ValueError:
        engine.close()
        raise
    outputs = OutputStore.create(cache)
    app = App(
        engine=engine,
        preset=preset,
        spec=spec,
        model=model,
        kiosk=args.kiosk,
        limiter=RateLimiter(preset.rate_limit_requests, preset.rate_limit_seconds, preset.rate_limit_ceiling),
        outputs=outputs,
        proxy_header=args.trusted_proxy_header,
        image_filter=image_filter,
        public_url=args.public_url,
        lora_library=library,
        slots=getattr(engine, "slots", 1),
    )
    if args.kiosk:  # the attract screen shows pictures from the first second
        from fp8pipe.attract import example_pictures

        app.examples = example_pictures(engine, model, preset, spec, preset.precision, app.hints["examples"], outputs, image_filter)
    demo = build_kiosk(app) if args.kiosk else build_advanced(app)
    if spaces is not None:  # ZeroGPU: each job runs inside a GPU call (the events stay in the parent)
        app.gpu_stream = zerogpu_stream(app, spaces)
    demo.queue(max_size=args.queue_size or preset.queue_size, default_concurrency_limit=1)
    return demo, app


def _load_image_filter(args, preset, device: str):
    """The preset's image classifier (or --image-filter's), None when there is none or
    --no-image-filter; ImageFilterError when a required one cannot be loaded."""
    from fp8pipe.image_filter import filter_device, load_image_filter, planned_peak_vram

    model = None if args.no_image_filter else (args.image_filter or preset.image_filter)
    if model is None:
        if preset.image_filter:
            log.warning("image filter of preset %s turned off by --no-image-filter", preset.name)
        return None
    budget, peak = planned_peak_vram(_known_spec(args.model or preset.model), preset, args.vram or preset.vram, device)
    where = filter_device(preset.image_filter_device, device, budget, peak)
    why = f"that preset {preset.name} requires " if preset.image_filter and not args.image_filter else ""
    return load_image_filter(model, preset.image_filter_labels, preset.image_filter_threshold, where, why)


def _known_spec(model: str):
    from fp8pipe.specs import find_spec

    return find_spec(model)


def launch_kwargs(args, app: App) -> dict:
    kwargs = dict(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        auth=tuple(args.auth.split(":", 1)) if args.auth else None,
        show_error=True,
        footer_links=[] if args.kiosk else ["api", "gradio"],
        run_history=not args.kiosk,  # a shared kiosk must not show one visitor's images to the next
        max_file_size=0 if args.kiosk else MAX_UPLOAD,  # the kiosk has no upload field: it accepts no file
        state_session_capacity=SESSION_CAPACITY,
    )
    from fp8pipe.kiosk_css import KIOSK_CSS

    kwargs["css"] = KIOSK_CSS if args.kiosk else ADVANCED_CSS
    if args.kiosk and app.public_url:  # the QR codes' links: /takehome/<name>.png from the output folder
        from fp8pipe.takehome import route

        kwargs["app_kwargs"] = {"routes": [route(app.outputs.folder)]}
    return kwargs


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.share and not args.auth:
        print(
            "warning: --share without --auth makes this app public to anyone with the link for a week; "
            "add --auth USER:PASS",
            file=sys.stderr,
        )
    from fp8pipe.errors import ModelLoadError
    from fp8pipe.image_filter import ImageFilterError
    from fp8pipe.presets import PresetError

    from fp8pipe.startup import StartupError, exit_cleanly, stop_on_signals

    try:
        demo, app = create_app(args)
    except (ModelLoadError, PresetError, StartupError, ImageFilterError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from fp8pipe.naming import model_display_name

    print(f"fp8pipe ready: model {model_display_name(app.model)}, preset {app.preset.name}, {'kiosk' if app.kiosk else 'advanced'} mode", file=sys.stderr)
    stop_on_signals()  # SIGTERM as Ctrl-C: Gradio closes the server, then the lines below run
    try:
        # quiet: Gradio's own lines include a hint to set `share=True` in launch(); ours is --share.
        _, local_url, share_url = demo.launch(**launch_kwargs(args, app), quiet=True, prevent_thread_lock=True)
        print(f"* Running on local URL:  {local_url}", flush=True)
        if share_url:
            print(f"* Running on public URL: {share_url} (for up to a week)", flush=True)
        demo.block_thread()
    finally:
        exit_cleanly(demo, app.engine, app.outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
