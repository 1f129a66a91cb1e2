"""Model families fp8pipe knows: architecture configs and recommended defaults, as data.

The configs are the public diffusers configs of each model, shipped here so that nothing
needs the network to know a model's shape (single-file loading, benchmarks, the planner).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Components shared by every SD3.5 model (from the public configs).
SD35_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
CLIP_L_CONFIG = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "vocab_size": 49408,
    "max_position_embeddings": 77,
}
CLIP_G_CONFIG = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "projection_dim": 1280,
    "hidden_act": "gelu",
    "vocab_size": 49408,
    "max_position_embeddings": 77,
}
T5_XXL_CONFIG = {
    "d_model": 4096,
    "d_ff": 10240,
    "d_kv": 64,
    "num_heads": 64,
    "num_layers": 24,
    "vocab_size": 32128,
    "feed_forward_proj": "gated-gelu",
    "is_encoder_decoder": False,
}
SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "shift": 3.0}

_SD35_LARGE_TRANSFORMER = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 38,
    "attention_head_dim": 64,
    "num_attention_heads": 38,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 2432,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 192,
    "qk_norm": "rms_norm",
    "dual_attention_layers": [],
}
_SD35_MEDIUM_TRANSFORMER = {
    **_SD35_LARGE_TRANSFORMER,
    "num_layers": 24,
    "num_attention_heads": 24,
    "caption_projection_dim": 1536,
    "pos_embed_max_size": 384,
    "dual_attention_layers": list(range(13)),
}

# The embedded demo model: the same architecture, tiny, trained by fp8pipe/demo/train.py on
# 64 px pictures (VAE 4x -> 16x16 latents -> 8x8 patches). Widths are multiples of 16 so every
# quantized layer can take the scaled-matmul path.
DEMO_TRANSFORMER = {
    "sample_size": 16,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 4,
    "attention_head_dim": 32,
    "num_attention_heads": 4,
    "joint_attention_dim": 64,
    "caption_projection_dim": 128,
    "pooled_projection_dim": 64,
    "pos_embed_max_size": 32,
    "qk_norm": "rms_norm",
    "dual_attention_layers": [0],
}
DEMO_VAE_CONFIG = {
    **SD35_VAE_CONFIG,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "sample_size": 64,
}
DEMO_CLIP_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "projection_dim": 32,
    "hidden_act": "gelu",
    "max_position_embeddings": 77,
}
DEMO_T5_CONFIG = {
    "d_model": 64,
    "d_ff": 128,
    "d_kv": 16,
    "num_heads": 4,
    "num_layers": 2,
    "feed_forward_proj": "gated-gelu",
    "is_encoder_decoder": False,
}


@dataclass(frozen=True)
class ModelSpec:
    """One model family: where it lives, its shape, and the settings it was made for."""

    name: str
    hub_id: str | None
    transformer_config: dict
    steps: int
    guidance: float
    resolution: int
    shift: float = 3.0
    min_resolution: int = 256
    max_resolution: int = 1536
    max_sequence_length: int = 256
    clip_tokens: int = 77  # the CLIP tokenizers' model_max_length: CLIP's share of the text tokens
    aliases: tuple[str, ...] = field(default=())
    random_weights: bool = False
    vae_config: dict = field(default_factory=lambda: SD35_VAE_CONFIG)
    clip_l_config: dict = field(default_factory=lambda: CLIP_L_CONFIG)
    clip_g_config: dict = field(default_factory=lambda: CLIP_G_CONFIG)
    t5_config: dict = field(default_factory=lambda: T5_XXL_CONFIG)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_config["block_out_channels"]) - 1)

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this (VAE factor x patch size)."""
        return self.vae_scale_factor * self.transformer_config["patch_size"]


SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            name="sd3.5-large",
            hub_id="stabilityai/stable-diffusion-3.5-large",
            transformer_config=_SD35_LARGE_TRANSFORMER,
            steps=28,
            guidance=3.5,
            resolution=1024,
            aliases=("large",),
        ),
        ModelSpec(
            name="sd3.5-large-turbo",
            hub_id="stabilityai/stable-diffusion-3.5-large-turbo",
            transformer_config=_SD35_LARGE_TRANSFORMER,
            steps=4,
            guidance=0.0,
            resolution=1024,
            aliases=("large-turbo", "turbo"),
        ),
        ModelSpec(
            name="sd3.5-medium",
            hub_id="stabilityai/stable-diffusion-3.5-medium",
            transformer_config=_SD35_MEDIUM_TRANSFORMER,
            steps=28,
            guidance=4.5,
            resolution=1024,
            min_resolution=256,
            aliases=("medium",),
        ),
        # TensorArt's step-distilled SD3.5 Medium ("SD3.5M Turbo"), public at
        # https://huggingface.co/tensorart/stable-diffusion-3.5-medium-turbo (stabilityai-ai-community
        # licence; base_model stabilityai/stable-diffusion-3.5-medium). The repo is a full diffusers
        # layout (StableDiffusion3Pipeline: transformer 4.94 GB in 16-bit, i.e. Medium's 2.47 B
        # parameters, CLIP-L/G, T5, VAE, scheduler) plus the distillation as LoRAs
        # (lora_sd3.5m_turbo_8steps.safetensors; later a 4-step one) and a single-file checkpoint.
        # Same architecture as Medium. Settings as the model card's example is mirrored in public
        # model registries (8 steps, guidance_scale 1.5, 1024x768); its diffusers example's
        # scheduler comment says shift 3.0. None of this could be verified offline here: the card
        # was read through a search index, and whether the repo's transformer folder already holds
        # the distilled weights or the LoRA must be added on top (one revision of the card loads
        # stabilityai/stable-diffusion-3.5-medium and then the 8-step LoRA) is not settled.
        ModelSpec(
            name="sd3.5-medium-turbo",
            hub_id="tensorart/stable-diffusion-3.5-medium-turbo",
            transformer_config=_SD35_MEDIUM_TRANSFORMER,
            steps=8,
            guidance=1.5,
            resolution=1024,
            shift=3.0,
            aliases=("medium-turbo",),
        ),
        ModelSpec(
            name="demo",
            hub_id=None,
            transformer_config=DEMO_TRANSFORMER,
            steps=8,
            guidance=4.5,
            resolution=64,
            min_resolution=64,
            max_resolution=256,
            max_sequence_length=32,
            clip_tokens=24,  # the demo's tokenizers (fp8pipe/demo/model/tokenizer*/tokenizer_config.json)
            random_weights=False,
            vae_config=DEMO_VAE_CONFIG,
            clip_l_config=DEMO_CLIP_CONFIG,
            clip_g_config=DEMO_CLIP_CONFIG,
            t5_config=DEMO_T5_CONFIG,
        ),
    )
}


def find_spec(name: str) -> ModelSpec | None:
    """The spec for a family name, alias or hub id (case-insensitive), or None."""
    key = name.strip().lower()
    for spec in SPECS.values():
        if key == spec.name or key in spec.aliases or (spec.hub_id and key == spec.hub_id.lower()):
            return spec
    return None


def spec_for_transformer_config(config: dict) -> ModelSpec | None:
    """The family whose transformer has this shape (layers, width, dual attention), or None."""
    keys = ("num_layers", "num_attention_heads", "caption_projection_dim")
    for spec in SPECS.values():
        if all(spec.transformer_config.get(k) == config.get(k) for k in keys):
            return spec
    return None
