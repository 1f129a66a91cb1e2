"""Measure the SD3.5 VAE decode's peak memory on the CPU (fp32, random weights) against the
planner's model. Usage: python scripts/measure_vae_decode_peak.py 512

Measured (2 CPU cores, torch 2.13): 256 px 325 MiB above baseline, 512 px 956 MiB: about
840 float32 channels per pixel plus ~115 MiB fixed; memory.VAE_DECODE_CHANNELS rounds that up.
"""
import resource, sys, time, psutil, torch
from diffusers import AutoencoderKL
from fp8pipe.specs import SD35_VAE_CONFIG
torch.set_num_threads(1)
px = int(sys.argv[1])
vae = AutoencoderKL.from_config(SD35_VAE_CONFIG).eval()
z = torch.randn(1, 16, px // 8, px // 8)
with torch.inference_mode():
    vae.decode(torch.randn(1,16,8,8))
before = psutil.Process().memory_info().rss
peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = time.time()
with torch.inference_mode():
    out = vae.decode(z).sample
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(px, "decode peak above baseline (fp32) MiB:", (peak - before) / 2**20, "peak_before", (peak_before-before)/2**20, "s", time.time() - t)
from fp8pipe.memory import VAE_DECODE_CHANNELS
print("model predicts fp32 MiB:", px * px * (VAE_DECODE_CHANNELS + 3) * 4 / 2**20)
