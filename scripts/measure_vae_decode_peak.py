"""Measure the SD3.5 VAE decode's peak memory on the CPU (fp32, random weights) against the
planner's model. Usage: PYTHONPATH=. python scripts/measure_vae_decode_peak.py 512

Measured (2 CPU cores, torch 2.13; peak resident set, reset just before the decode):
256 px 315 MiB, 512 px 961 MiB above the baseline: about 860 float32 channels per pixel plus
~100 MiB fixed; memory.VAE_DECODE_CHANNELS and VAE_DECODE_FIXED_BYTES round those up.
"""
import sys
import time

import torch
from diffusers import AutoencoderKL
from fp8pipe.specs import SD35_VAE_CONFIG


from peak_rss import reset_peak_rss, rss_and_peak  # noqa: E402 (beside this script)


torch.set_num_threads(1)
px = int(sys.argv[1])
vae = AutoencoderKL.from_config(SD35_VAE_CONFIG).eval()
z = torch.randn(1, 16, px // 8, px // 8)
with torch.inference_mode():
    vae.decode(torch.randn(1, 16, 8, 8))
reset_peak_rss()
before, _ = rss_and_peak()
t = time.time()
with torch.inference_mode():
    out = vae.decode(z).sample
peak = rss_and_peak()[1]
print(px, "px: decode peak above baseline (fp32) MiB:", round((peak - before) / 2**20), "seconds", round(time.time() - t, 1))
from fp8pipe.memory import VAE_DECODE_CHANNELS, VAE_DECODE_FIXED_BYTES  # noqa: E402

print("model predicts fp32 MiB:", round((VAE_DECODE_FIXED_BYTES + px * px * (VAE_DECODE_CHANNELS + 3) * 4) / 2**20))
