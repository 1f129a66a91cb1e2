"""Time the kiosk's image filter on the CPU (a benchmark, not a test).
Usage: PYTHONPATH=. python scripts/bench_image_filter.py [bench/results/image-filter-cpu.json]

The classifier has the architecture of kiosk-8gb's Falconsai/nsfw_image_detection (ViT-base,
16-pixel patches, 224x224 input, two labels) with random weights, built in code and loaded
through the app's own path (fp8pipe.image_filter.load_image_filter on a saved folder): the
weights change the verdict, not the time. Each check is one 1024x1024 picture, the size
kiosk-8gb makes, resized by the image processor as in the app.
"""

import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from fp8pipe.image_filter import load_image_filter

RUNS = 10


def main(out: str = "bench/results/image-filter-cpu.json") -> None:
    torch.manual_seed(0)
    config = ViTConfig(image_size=224, patch_size=16, num_labels=2, id2label={0: "normal", 1: "nsfw"}, label2id={"normal": 0, "nsfw": 1})
    with tempfile.TemporaryDirectory() as folder:
        ViTForImageClassification(config).save_pretrained(folder)
        ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)
        image_filter = load_image_filter(folder, ["nsfw"], 0.5, "cpu")
    picture = Image.new("RGB", (1024, 1024), (120, 80, 200))
    image_filter.check(picture)  # the first call pays for allocation
    times = [image_filter.check(picture).seconds for _ in range(RUNS)]
    record = {
        "command": "PYTHONPATH=. python scripts/bench_image_filter.py",
        "model": "ViT-base/16 at 224 px, 2 labels (the architecture of Falconsai/nsfw_image_detection), random weights",
        "parameters": sum(p.numel() for p in image_filter.classify.model.parameters()),
        "picture": "1024x1024",
        "device": "cpu",
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine during the run
        "torch": torch.__version__,
        "runs": RUNS,
        "median_s": round(statistics.median(times), 4),
        "best_s": round(min(times), 4),
        "worst_s": round(max(times), 4),
        "note": "measured on a shared machine with other work running (see load_average_1min): an upper bound, not a kiosk PC's figure",
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"image filter on the CPU: median {record['median_s']:.3f} s, best {record['best_s']:.3f} s over {RUNS} checks; wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
