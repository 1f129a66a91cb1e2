"""Shared fixtures: one tiny SD3 pipeline, written to disk as a real diffusers folder.

Its tokenizers come from files the fixture writes itself (a CLIP vocab.json/merges.txt and a
T5 tokenizer.json), so nothing touches the network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

from fp8pipe import specs, tiny  # noqa: E402

# Eight blocks of width 256: small enough for a fast CPU test, deep enough that the blocks
# (not the embeddings the policy keeps) hold most bytes, as in the real models.
TEST_TRANSFORMER = {
    **specs.DEMO_TRANSFORMER,
    "num_layers": 8,
    "num_attention_heads": 4,
    "attention_head_dim": 64,
    "caption_projection_dim": 256,
    "sample_size": 16,
    "pos_embed_max_size": 16,
}
DEMO_SPEC = specs.SPECS["demo"]
DEMO_SIDE = DEMO_SPEC.resolution  # the demo model's native size, the cpu-demo preset's default


def size_error(limits) -> str:
    """What a size outside `limits` is told (see GenerationRequest.create)."""
    return f"must be {limits.min_size} to {limits.max_size} in steps of {limits.size_multiple}"


def demo_app_limits():
    from fp8pipe.presets import load_preset

    return load_preset("cpu-demo").limits_for(DEMO_SPEC)


TEST_SPEC = dataclasses.replace(specs.SPECS["demo"], name="tiny-test", resolution=64, min_resolution=32, steps=4, transformer_config=TEST_TRANSFORMER)


def write_tokenizer_files(folder):
    """CLIP vocab.json + merges.txt and a T5 tokenizer.json, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(tiny.clip_vocab()))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    t5 = Tokenizer(models.Unigram(tiny.t5_unigram_vocab(), unk_id=2, byte_fallback=False))
    t5.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    t5.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    t5.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    t5.save(str(folder / "tokenizer.json"))
    return folder


def tokenizers_from_files(folder):
    from transformers import CLIPTokenizer, T5Tokenizer

    clip = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77)
    t5 = T5Tokenizer(tokenizer_file=str(folder / "tokenizer.json"), extra_ids=0, model_max_length=512)
    return clip, t5


def _build_tiny_pipeline_dir(root: Path) -> Path:
    clip, t5 = tokenizers_from_files(write_tokenizer_files(root / "tokenizer-files"))
    pipe = tiny.build_tiny_pipeline(TEST_SPEC, seed=0, clip_tokenizer=clip, t5_tokenizer=t5)
    pipe.save_pretrained(root / "pipeline", safe_serialization=True)
    return root / "pipeline"


def _cached_tiny_pipeline_dir(cache: Path) -> Path:
    """The tiny pipeline kept in `cache` across test processes: scripts/mutation.py runs a fresh
    pytest per mutant, and building the pipeline (seconds) would cost that per mutant. The folder
    is named for what builds it (this spec, fp8pipe/tiny.py, the library versions), written
    beside and renamed into place, so parallel workers never read half a folder."""
    from importlib.metadata import version

    recipe = repr(TEST_SPEC) + Path(tiny.__file__).read_text() + version("diffusers") + version("transformers")
    final = cache / f"tiny-sd3-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}"
    if not (final / "pipeline" / "model_index.json").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix="building-", dir=cache))
        _build_tiny_pipeline_dir(building)
        try:
            os.rename(building, final)
        except OSError:  # another worker got there first: use its folder
            shutil.rmtree(building, ignore_errors=True)
    return final / "pipeline"


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A tiny random SD3 pipeline saved as a diffusers folder (safetensors only); kept across
    runs in $FP8PIPE_TEST_CACHE when that is set (the mutation runs set it), else built anew."""
    cache = os.environ.get("FP8PIPE_TEST_CACHE")
    if cache:
        return _cached_tiny_pipeline_dir(Path(cache))
    return _build_tiny_pipeline_dir(tmp_path_factory.mktemp("tiny-sd3"))


@pytest.fixture(scope="session")
def load_tiny(tiny_pipeline_dir):
    """load_tiny(**LoadOptions fields) -> LoadedModel of the tiny pipeline on the CPU."""
    from fp8pipe.loader import LoadOptions, load_model

    def load(**options):
        return load_model(str(tiny_pipeline_dir), LoadOptions(device="cpu", **options))

    return load


@pytest.fixture
def seeded():
    torch.manual_seed(0)


def transformer_inputs(config: dict, seed: int = 0, text_tokens: int = 40) -> dict:
    """Fixed random inputs for one transformer call (float32; the model casts as it needs)."""
    g = torch.Generator().manual_seed(seed)
    side = config["sample_size"]
    return {
        "hidden_states": torch.randn(1, config["in_channels"], side, side, generator=g),
        "encoder_hidden_states": torch.randn(1, text_tokens, config["joint_attention_dim"], generator=g),
        "pooled_projections": torch.randn(1, config["pooled_projection_dim"], generator=g),
        "timestep": torch.tensor([500.0]),
    }


def run_transformer(loaded, inputs: dict) -> torch.Tensor:
    with torch.inference_mode():
        return loaded.pipe.transformer(**inputs, return_dict=False)[0].float()


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
if str(ROOT) not in __import__("sys").path:
    __import__("sys").path.insert(0, str(ROOT))  # app.py lives at the root

KIOSK_TEST_PRESET = """
name = "kiosk-test"
description = "The kiosk preset of the tests: the demo model, tight limits."
model = "demo"
precision = "fp8"
idle_seconds = 10
queue_size = 1
previews = true
examples = ["a red circle", "a lighthouse on a cliff", "a blue square"]  # the lighthouse: words the demo does not know
filter_words = ["nude", "gore"]

[defaults]
steps = 2
guidance = 4.5
width = 64
height = 64

[limits]
max_steps = 4
max_size = 128

[rate_limit]
requests = 5
per_seconds = 600

[[styles]]
name = "Plain"
suffix = ""

[[styles]]
name = "Bright"
suffix = ", bright colors"
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(argv: list[str], port: int | None = None):
    """(url, demo, App) of app.py started in this process on `port` (default: a free one)."""
    import app as webapp

    args = webapp.parse_args([*argv, "--port", str(port or free_port()), "--host", "127.0.0.1"])
    demo, state = webapp.create_app(args)
    kwargs = webapp.launch_kwargs(args, state)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    return url, demo, state


@pytest.fixture(scope="session")
def kiosk_preset_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("presets") / "kiosk-test.toml"
    path.write_text(KIOSK_TEST_PRESET)
    return path


@pytest.fixture(scope="module")
def kiosk_app(kiosk_preset_file):
    url, demo, state = start_app(["--kiosk", "--preset", str(kiosk_preset_file)])
    yield url, state
    demo.close()
    state.engine.close()


@pytest.fixture(scope="module")
def advanced_app():
    url, demo, state = start_app([])
    yield url, state
    demo.close()
    state.engine.close()


def hold_at_denoise(engine):
    """(running, release): the engine's next job stops at its denoise stage until `release` is set."""
    import threading

    running, release = threading.Event(), threading.Event()

    def hold(stage):
        if stage == "denoise":
            running.set()
            release.wait(30)

    engine.fault_hook = hold
    return running, release
