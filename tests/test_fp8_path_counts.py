"""What the stats and `plan` say about FP8 paths: layers counted by the path each one runs now.

AdaLN modulation layers run weight-only (upcast) on every path; they are counted once more as
`adaln_weight_only` so a reader sees why upcast layers appear on a scaled_mm model.
"""

from __future__ import annotations

import torch
from torch import nn

from fp8pipe.fp8 import FP8Linear, FP8Policy, path_counts, psnr, swap_linears_to_fp8


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.Module()
        self.norm1.linear = nn.Linear(32, 32)
        self.norm1_context = nn.Module()
        self.norm1_context.linear = nn.Linear(32, 32)
        self.ff = nn.Linear(32, 32)
        self.odd = nn.Linear(30, 32)  # not a multiple of 16: _scaled_mm cannot take it


def _model(path: str) -> nn.Module:
    model = nn.Sequential(Block(), Block(), nn.Linear(32, 32))
    swap_linears_to_fp8(model, FP8Policy(quantize=("0.*", "1.*"), keep=()), path, torch.float32)
    return model


def test_layers_are_counted_by_the_path_they_take_and_adaln_ones_by_rule():
    on_scaled = path_counts(_model("scaled_mm"))
    assert on_scaled == {"scaled_mm": 2, "upcast": 6, "adaln_weight_only": 4}  # per block: ff scaled; two AdaLN and odd upcast
    assert path_counts(_model("upcast")) == {"scaled_mm": 0, "upcast": 8, "adaln_weight_only": 4}
    assert path_counts(nn.Sequential(nn.Linear(4, 4))) == {"scaled_mm": 0, "upcast": 0, "adaln_weight_only": 0}


def test_a_layer_forced_onto_a_path_is_counted_on_it():
    model = _model("upcast")
    layer = model[0].norm1.linear
    assert isinstance(layer, FP8Linear)
    layer.path = "scaled_mm"  # a weight-only layer made to run scaled: no longer counted as weight-only
    assert path_counts(model) == {"scaled_mm": 1, "upcast": 7, "adaln_weight_only": 3}


def test_psnr_of_pictures_is_infinite_when_equal_and_20_db_for_a_tenth_of_full_scale():
    import numpy as np

    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = np.full((4, 4, 3), 25.5)  # an error of 255/10 everywhere: 20 log10(10) = 20 dB
    assert psnr(a, a) == float("inf")
    assert abs(psnr(a, b) - 20.0) < 1e-9


def test_the_report_counts_adaln_layers_on_upcast_as_weight_only_once_each():
    from fp8pipe.fp8 import fp8_report

    model = _model("scaled_mm")
    report = fp8_report(model).as_dict()
    assert report["weight_only_adaln_layers"] == 4  # two AdaLN layers per block, both upcast by rule
    assert report["paths"] == {"scaled_mm": 2, "upcast": 6}
    model[1].norm1_context.linear.path = "scaled_mm"  # an AdaLN layer made to run scaled is not weight-only
    assert fp8_report(model).as_dict()["weight_only_adaln_layers"] == 3
    assert fp8_report(_model("upcast")).as_dict()["layer_paths"]["0.norm1.linear"] == "upcast"
