"""A loader for the engine that builds a full-size SD3.5 family with random weights.

No weights can be downloaded where fp8pipe is tested, but time and memory do not depend on
weight values: `random_loader` takes the same (model, LoadOptions) as `loader.load_model`,
so the engine's whole service path (plan -> load -> place -> run -> stats) runs on a GPU
with full-size architectures. Weights are made in their final dtype where the plan keeps
them (the GPU when resident, the host for offload placements).
"""

from __future__ import annotations

import time

import torch

from .fp8 import choose_path, fp8_report
from .loader import LoadedModel, LoadOptions, component_dtypes, resolve_device, run_on_cpu_inputs
from .specs import SPECS, find_spec


def random_loader(model: str, options: LoadOptions | None = None, seed: int = 0) -> LoadedModel:
    """Load `model` (a known family: sd3.5-large, sd3.5-large-turbo, sd3.5-medium) with random weights."""
    from .bench.weights import random_pipeline

    options = options or LoadOptions()
    spec = find_spec(model)
    if spec is None or spec.name not in SPECS:
        raise ValueError(f"random_loader builds known families only ({', '.join(SPECS)}); got {model!r}")
    start = time.perf_counter()
    device = resolve_device(options.device)
    path = choose_path(device, options.fp8_path) if options.precision == "fp8" else None
    storage = torch.device(options.storage) if options.storage else None
    on_host = options.t5 == "cpu" and device.type != "cpu"
    pipe = random_pipeline(spec, options.precision, device, seed, "drop" if on_host else options.t5, path or "upcast", make_on=storage)
    if on_host:  # T5 made on the host in bf16 and run there, as the loader keeps it
        from .bench.weights import _meta_components, materialize_random_

        _, t5_tokenizer, parts = _meta_components(spec, "16bit", torch.bfloat16)
        encoder = materialize_random_(parts["text_encoder_3"], torch.device("cpu"), torch.bfloat16, seed + 3).eval()
        run_on_cpu_inputs(encoder)
        pipe.register_modules(text_encoder_3=encoder, tokenizer_3=t5_tokenizer)
    report = fp8_report(pipe.transformer) if options.precision == "fp8" else None
    dtypes = component_dtypes(pipe, options, device, report is not None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return LoadedModel(
        pipe=pipe,
        name=model,
        source_kind="random",
        spec=spec,
        device=device,
        options=options,
        fp8_path=path,
        fp8=report,
        load_seconds=time.perf_counter() - start,
        dtypes=dtypes,
    )
