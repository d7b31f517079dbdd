"""Red team round 10: resolution metadata and magnification. The method tiles at 10x, so every number downstream
depends on the slide's µm/px: a slide read at the wrong scale, or made up to the scale asked for, must be refused
in one line, never extracted as if it were right."""
import json
import re

import numpy as np
import pytest
import tifffile
from PIL import Image

from slidestream.engine.errors import SlideError
from slidestream.engine.slide import open_slide
from slidestream.engine.synthetic import make_slide

PIPE = {"name": "t", "magnification": 10, "tiling": {"name": "grid", "params": {"size": 256, "min_tissue": 0.3, "max_tiles": 4}},
        "patches": {"size": 64, "mode": "random", "per_tile": 2}}


def _extract(cli, tmp_path, slide, magnification=10, mpp=""):
    pipe = tmp_path / "p.json"
    pipe.write_text(json.dumps({**PIPE, "magnification": magnification}))
    cohort = tmp_path / "c.csv"
    cohort.write_text(f"slide_path,patient_id,label,age,mpp\n{slide},P1,1,50,{mpp}\n")
    code, out, err = cli("extract", pipe, "--slides", cohort, "--out", tmp_path / "st", "--json", "--quiet")
    return code, json.loads(out)["slides"][0], err


# ------------------------------------------------------------------------------------ magnification
@pytest.mark.parametrize("mpp, magnification, refused", [
    (2.0, 10, "2 µm/px \\(file mpp\\), 5x, coarser than the 10x the pipeline asks for \\(its patches would be upsampled 2x\\)"),
    (0.5, 40, "0.5 µm/px \\(file mpp\\), 20x, coarser than the 40x"),
    (1.04, 10, None),  # within the 5 % a level may be coarser (as Aperio 20x slides at 0.504 µm/px for 20x)
    (0.5, 10, None),
])
def test_slide_coarser_than_the_pipeline_magnification_is_refused(cli, tmp_path, mpp, magnification, refused):
    """A 5x slide (2 µm/px) for the 10x pipeline was extracted ('done', no note): every tile upsampled 2x, blurred
    tissue stored as 10x patches. Up to 16x coarser passed."""
    slide = make_slide(tmp_path / "s.svs", size=(1024, 768), mpp=mpp, levels=(1, 4))
    code, rec, err = _extract(cli, tmp_path, slide, magnification)
    if refused:
        assert code == 1 and rec["status"] == "error" and rec["patches"] == 0
        assert f"{slide}: the slide is" in rec["reason"] and "\n" not in rec["reason"]
        assert re.search(refused, rec["reason"]), rec["reason"]
        assert "lower the pipeline's magnification" in rec["reason"]
    else:
        assert code == 0 and rec["status"] == "done" and rec["patches"] > 0, rec
