"""Measure one SD3.5 Large MMDiT block's working memory on the CPU (float32, random weights)
and express it in the planner's unit: D-wide tensors per token.
Usage: PYTHONPATH=. python scripts/measure_block_activations.py [fp8|fp32] [image_px] [scaled_mm|upcast]

Measured (2 CPU cores, torch 2.13; peak resident set, reset just before the call):
fp32 512 px 171 MiB = 13.6 widths per token (memory.BLOCK_ACTIVATION_WIDTHS is 14);
fp8 scaled_mm 512 px 356 MiB, 768 px 476 MiB (about 0.23 GiB fixed, weight-sized);
fp8 upcast 512 px 299 MiB. The CPU's compute dtype is float32, so these check the shape of
the model, not the GPU's 16-bit numbers.
"""

import sys

import torch

from fp8pipe.fp8 import TRANSFORMER_POLICY, swap_linears_to_fp8
from fp8pipe.specs import SPECS

from peak_rss import reset_peak_rss, rss_and_peak  # noqa: E402 (beside this script)


torch.set_num_threads(1)
precision = sys.argv[1] if len(sys.argv) > 1 else "fp8"
px = int(sys.argv[2]) if len(sys.argv) > 2 else 512
config = SPECS["sd3.5-large"].transformer_config
width = config["num_attention_heads"] * config["attention_head_dim"]

from diffusers.models.attention import JointTransformerBlock  # noqa: E402

block = JointTransformerBlock(dim=width, num_attention_heads=config["num_attention_heads"], attention_head_dim=config["attention_head_dim"], context_pre_only=False, qk_norm="rms_norm").eval()
if precision == "fp8":
    holder = torch.nn.Module()
    holder.transformer_blocks = torch.nn.ModuleList([block])
    path = sys.argv[3] if len(sys.argv) > 3 else "scaled_mm"
    swap_linears_to_fp8(holder, TRANSFORMER_POLICY, path, torch.float32)
image_tokens = (px // 16) ** 2
text_tokens = 333
hidden = torch.randn(1, image_tokens, width)
context = torch.randn(1, text_tokens, width)
temb = torch.randn(1, width)
with torch.inference_mode():
    block(hidden[:, :16], context[:, :8], temb)  # warm-up: lazy allocations
    reset_peak_rss()
    before, _ = rss_and_peak()
    block(hidden, context, temb)
delta = rss_and_peak()[1] - before
tokens = image_tokens + text_tokens
print(f"{precision} {px}px tokens={tokens}: peak above inputs {delta / 2**20:.0f} MiB = {delta / (tokens * width * 4):.1f} float32 widths per token")
