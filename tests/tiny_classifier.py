"""A tiny ViT image classifier built in code and saved as a transformers folder, so the image
filter's real loading path (a folder given as the model) runs with no download. Its verdict is
fixed by the classifier head's bias: one that always says "nsfw", one that never does."""

from pathlib import Path

LABELS = {0: "normal", 1: "nsfw"}


def save_tiny_classifier(folder: Path, flags: bool) -> Path:
    """A 2-label ViTForImageClassification (32x32 input, one layer) and its image processor in
    `folder`; with `flags` it scores every image as nsfw (0.9975), else as normal."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        image_size=32,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )
    torch.manual_seed(0)
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 6.0] if flags else [6.0, 0.0]))
    folder = Path(folder)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
