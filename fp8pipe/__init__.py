"""fp8pipe: Stable Diffusion 3.5 with an FP8 (E4M3) transformer, kept warm for fast answers.

Public names: `load_model`, `LoadOptions` (fp8pipe.loader), `generate` (fp8pipe.generation),
`GenerationRequest` (fp8pipe.requests). Importing the package itself loads no torch.
"""

__version__ = "0.1.0"
