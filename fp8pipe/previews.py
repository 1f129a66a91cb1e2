"""Step previews: a cheap RGB picture of a latent, one matmul (no VAE)."""

from __future__ import annotations

import torch

# Latent -> RGB for previews: SD3's 16 latent channels to RGB, the published factors of
# ComfyUI (comfy/latent_formats.py, class SD3: latent_rgb_factors and _bias), fitted for
# latents in the diffusion model's (scaled, shifted) space, which is what the pipeline steps.
SD3_LATENT_RGB_FACTORS = (
    (-0.0922, -0.0175, 0.0749),
    (0.0311, 0.0633, 0.0954),
    (0.1994, 0.0927, 0.0458),
    (0.0856, 0.0339, 0.0902),
    (0.0587, 0.0272, -0.0496),
    (-0.0006, 0.1104, 0.0309),
    (0.0978, 0.0306, 0.0427),
    (-0.0042, 0.1038, 0.1358),
    (-0.0194, 0.0020, 0.0669),
    (-0.0488, 0.0130, -0.0268),
    (0.0922, 0.0988, 0.0951),
    (-0.0278, 0.0524, -0.0542),
    (0.0332, 0.0456, 0.0895),
    (-0.0069, -0.0030, -0.0810),
    (-0.0596, -0.0465, -0.0293),
    (-0.1448, -0.1463, -0.1189),
)
SD3_LATENT_RGB_BIAS = (0.2394, 0.2135, 0.1925)


def latent_preview(latents: torch.Tensor):
    """A PIL preview of the first latent of a batch (1/8 of the image's size): one matmul."""
    from PIL import Image

    factors = torch.tensor(SD3_LATENT_RGB_FACTORS, dtype=torch.float32)
    bias = torch.tensor(SD3_LATENT_RGB_BIAS, dtype=torch.float32)
    rgb = latents[0].detach().float().cpu().permute(1, 2, 0) @ factors + bias  # (h, w, 3) in about [-1, 1]
    pixels = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(pixels, mode="RGB")
