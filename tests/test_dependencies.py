"""A fresh install has everything the code imports: requirements.txt declares it all."""

import subprocess
import sys

import pytest
from conftest import ROOT

TOOL = ROOT.parent / "shared" / "tools" / "undeclared-imports"


@pytest.mark.skipif(not TOOL.is_file(), reason="the undeclared-imports tool is not beside this clone (../shared/tools)")
def test_every_import_is_declared_in_requirements():
    done = subprocess.run([sys.executable, str(TOOL), "requirements.txt"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_shape_reader_needs_no_scipy():
    import numpy as np

    from fp8pipe.demo.adherence import largest_component

    mask = np.zeros((6, 6), bool)
    mask[0, 0] = True  # a region of one pixel
    mask[2:5, 2:5] = True  # a region of nine
    mask[5, 0] = mask[5, 1] = True  # a region of two
    assert largest_component(mask).sum() == 9 and largest_component(mask)[3, 3]
