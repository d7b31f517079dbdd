"""The DPW tile score: hand-computed synthetic tiles, each factor's thresholds, the uint8-sum quirk,
and agreement with a literal transcription of deephistopath/wsi/tiles.py on real filtered tiles."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2hsv

from slidestream.plugins.filters import dpw
from slidestream.plugins.tiling.dpw_score import (color_factor, dpw_score, mask_percent, quantity_factor,
                                                  sv_factor, tissue_percent)

DATA = Path(__file__).parent / "data" / "pen"

# hue (deg), S, V as computed by skimage: exact values for these colours
PURPLE_DARK = (64, 32, 96)     # hue 270, S 2/3, V 0.376
PURPLE_LIGHT = (128, 64, 192)  # hue 270, S 2/3, V 0.753
MAGENTA = (192, 64, 192)       # hue 300, S 2/3, V 0.753
PINK = (192, 64, 128)          # hue 330, S 2/3, V 0.753
BLACK = (0, 0, 0)


def _tile(*parts, n=32):
    """An n x n tile whose rows are split between colours by the given (colour, rows) parts."""
    t = np.zeros((n, n, 3), np.uint8)
    y = 0
    for colour, rows in parts:
        t[y:y + rows] = colour
        y += rows
    assert y == n
    return t


def _expect(t, cf, sv, qf):
    raw = t ** 2 * math.log(1 + cf * sv * qf) / 1000
    return 1 - 10 / (10 + raw)


# --------------------------------------------------------------------------------------------
# Hand-computed tiles
# --------------------------------------------------------------------------------------------
def test_purple_tile():
    # half hue 270 (dark), half hue 300 (bright): mean 285, pu = sqrt(450), pi = sqrt(2250) -> pi/pu = sqrt(5)
    r = dpw_score(_tile((PURPLE_DARK, 16), (MAGENTA, 16)))
    cf = math.sqrt(5) * (340 - 285) ** 2
    assert r["color_factor"] == pytest.approx(cf)  # 6764.2
    assert r["sv_factor"] == pytest.approx(0.49)  # std S = 0, std V = 0.188
    assert r["quantity_factor"] == 1.0 and r["tissue"] == 1.0 and r["tissue_percent"] == 100.0
    assert r["score"] == pytest.approx(_expect(100, cf, 0.49, 1.0))
    assert r["score"] == pytest.approx(0.89019, abs=1e-4)  # 1 - 10 / (10 + 10 ln(1 + 0.49 cf))


def test_pink_tile_scores_below_purple():
    # half hue 330, half 300: mean 315, pu = sqrt((3600 + 900) / 2), pi = sqrt(450)
    r = dpw_score(_tile((PINK, 16), (MAGENTA, 16)))
    cf = math.sqrt(450) / math.sqrt(2250) * (340 - 315) ** 2
    assert r["color_factor"] == pytest.approx(cf)  # 279.5
    assert r["sv_factor"] == pytest.approx(0.16)  # S and V constant
    assert r["score"] == pytest.approx(_expect(100, cf, 0.16, 1.0))
    assert r["score"] == pytest.approx(0.79264, abs=1e-4)  # 1 - 10 / (10 + 10 ln(1 + 0.16 cf))
    assert r["score"] < dpw_score(_tile((PURPLE_DARK, 16), (MAGENTA, 16)))["score"]


def test_partial_tile_medium_quantity():
    # 24 of 32 rows hue 300, 8 black: t = 75, qf = 0.2, cf = 1600, S and V vary -> sv = 1
    r = dpw_score(_tile((MAGENTA, 24), (BLACK, 8)))
    assert r["tissue_percent"] == pytest.approx(75.0) and r["tissue"] == pytest.approx(0.75)
    assert r["quantity_factor"] == 0.2
    assert r["color_factor"] == pytest.approx(1600.0)
    assert r["sv_factor"] == 1.0
    assert r["score"] == pytest.approx(_expect(75, 1600, 1.0, 0.2))
    assert r["score"] == pytest.approx(0.76451, abs=1e-4)


def test_low_tissue_tile():
    r = dpw_score(_tile((MAGENTA, 2), (BLACK, 30)))  # t = 6.25
    assert r["quantity_factor"] == 0.1
    assert r["score"] == pytest.approx(_expect(6.25, 1600, 1.0, 0.1))


def test_empty_tile_quirk7_sv_016():
    r = dpw_score(np.zeros((32, 32, 3), np.uint8))
    assert r == {"score": 0.0, "tissue": 0.0, "tissue_percent": 0.0, "color_factor": 0.0,
                 "sv_factor": pytest.approx(0.16), "quantity_factor": 0.0}


def test_non_purple_pink_tissue_has_no_colour():
    green = _tile(((40, 160, 60), 20), ((90, 200, 100), 12))  # hue ~130: outside [260, 340]
    r = dpw_score(green)
    assert r["tissue"] == 1.0 and r["color_factor"] == 0.0 and r["score"] == 0.0


def test_quirk9_all_hues_exactly_270():
    r = dpw_score(_tile((PURPLE_DARK, 16), (PURPLE_LIGHT, 16)))
    assert r["tissue"] == 1.0 and r["color_factor"] == 0.0 and r["score"] == 0.0


def test_masked_black_pixels_count_in_sv():
    # the same tissue with and without black padding: S/V std includes the black pixels (quirk 7)
    assert dpw_score(_tile((MAGENTA, 32)))["sv_factor"] == pytest.approx(0.16)
    assert dpw_score(_tile((MAGENTA, 30), (BLACK, 2)))["sv_factor"] == 1.0


def test_partial_edge_tile_shape():
    r = dpw_score(_tile((PURPLE_DARK, 8), (MAGENTA, 8), n=16)[:, :7])
    assert r["tissue"] == 1.0 and r["color_factor"] == pytest.approx(math.sqrt(5) * 55 ** 2)


# --------------------------------------------------------------------------------------------
# Factors and boundaries
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t, qf", [(100, 1.0), (80, 1.0), (79.99, 0.2), (10, 0.2), (9.99, 0.1), (0.01, 0.1),
                                   (0, 0.0)])
def test_quantity_factor(t, qf):
    assert quantity_factor(t) == qf


def test_quantity_boundaries_from_pixel_counts():
    t = np.zeros((10, 10, 3), np.uint8)
    t[:8] = MAGENTA  # exactly 80 %
    assert dpw_score(t)["quantity_factor"] == 1.0
    t[:] = 0
    t[:1] = MAGENTA  # exactly 10 %
    assert dpw_score(t)["quantity_factor"] == 0.2


def test_color_factor_range_is_inclusive():
    assert color_factor(np.array([259, 341, 0, 359])) == 0.0
    # [260, 340] both included: mean 300, pu = sqrt((100 + 4900) / 2), pi = sqrt((4900 + 100) / 2)
    assert color_factor(np.array([260, 340, 100])) == pytest.approx(40 ** 2)


@pytest.mark.parametrize("s_std, v_std, f", [(0.0, 0.0, 0.16), (0.049, 0.2, 0.49), (0.2, 0.049, 0.49),
                                             (0.05, 0.05, 1.0)])
def test_sv_factor(s_std, v_std, f):
    s = np.array([0.5 - s_std, 0.5 + s_std])
    v = np.array([0.5 - v_std, 0.5 + v_std])
    assert sv_factor(s, v) == pytest.approx(f)


# --------------------------------------------------------------------------------------------
# mask_percent and the uint8 overflow quirk
# --------------------------------------------------------------------------------------------
def test_mask_percent_2d_and_rgb():
    m = np.zeros((4, 5), bool)
    m[0] = True
    assert mask_percent(m) == pytest.approx(75.0)
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[0, :, 2] = 1  # nearly black is still tissue
    assert mask_percent(rgb) == pytest.approx(75.0)
    assert tissue_percent(rgb) == pytest.approx(25.0)


def test_quirk2_uint8_sum():
    t = np.zeros((2, 4, 3), np.uint8)
    t[0, 0] = (100, 100, 56)   # sums to 256
    t[0, 1] = (200, 200, 112)  # sums to 512
    t[0, 2] = (230, 150, 190)  # sums to 570: fine either way
    t[0, 3] = (100, 100, 55)   # 255
    assert mask_percent(t) == pytest.approx(50.0)
    assert mask_percent(t, quirk_uint8_sum=True) == pytest.approx(75.0)
    tile = np.tile(np.array([[[200, 200, 112]]], np.uint8), (32, 32, 1))  # a pinkish-beige tile, 512
    assert dpw_score(tile)["tissue"] == 1.0
    assert dpw_score(tile, quirk_uint8_sum=True)["tissue"] == 0.0


# --------------------------------------------------------------------------------------------
# Against a literal transcription of the original on real filtered tiles
# --------------------------------------------------------------------------------------------
def _orig_score(np_tile):
    """deephistopath/wsi/tiles.py score_tile + filter.tissue_percent, as written (uint8 sum included)."""
    np_sum = np_tile[:, :, 0] + np_tile[:, :, 1] + np_tile[:, :, 2]
    tissue = 100 - (100 - np.count_nonzero(np_sum) / np_sum.size * 100)
    hsv = rgb2hsv(np_tile)
    h = hsv[:, :, 0].flatten()
    h *= 360
    hues = h.astype("int")
    hues = hues[hues >= 260]
    hues = hues[hues <= 340]
    if len(hues) == 0:
        cf = 0
    else:
        pu = np.sqrt(np.mean(np.abs(hues - 270) ** 2))
        pi = np.sqrt(np.mean(np.abs(hues - 330) ** 2))
        avg = (340 - np.average(hues)) ** 2
        cf = 0 if pu == 0 else pi / pu * avg
    s_std, v_std = np.std(hsv[:, :, 1].flatten()), np.std(hsv[:, :, 2].flatten())
    if s_std < 0.05 and v_std < 0.05:
        f = 0.4
    elif s_std < 0.05 or v_std < 0.05:
        f = 0.7
    else:
        f = 1
    sv = f ** 2
    if tissue >= 80:
        qf = 1.0
    elif tissue >= 10:
        qf = 0.2
    elif tissue > 0:
        qf = 0.1
    else:
        qf = 0.0
    score = (tissue ** 2) * np.log(1 + cf * sv * qf) / 1000.0
    return 1.0 - (10.0 / (10.0 + score)), tissue, cf, sv, qf


def test_matches_original_on_real_tiles():
    rgb = np.asarray(Image.open(DATA / "histolab-diagnostic-slide-thumb-rgb.png").convert("RGB"))
    mask = np.ones(rgb.shape[:2], bool)
    for f in (dpw.green_channel, dpw.grays, dpw.red_pen, dpw.green_pen, dpw.blue_pen, dpw.small_objects):
        mask = f(rgb, mask)
    filtered = rgb * mask[..., None]
    scores, n_nonzero = [], 0
    for y in range(0, rgb.shape[0], 32):
        for x in range(0, rgb.shape[1], 32):  # includes the partial last row/column
            tile = filtered[y:y + 32, x:x + 32]
            r = dpw_score(tile, quirk_uint8_sum=True)
            score, t, cf, sv, qf = _orig_score(tile)
            assert r["score"] == pytest.approx(score, rel=1e-12, abs=1e-15)
            assert (r["tissue_percent"], r["color_factor"], r["sv_factor"], r["quantity_factor"]) == \
                pytest.approx((t, cf, sv, qf), rel=1e-12)
            fixed = dpw_score(tile)
            assert fixed["tissue"] >= r["tissue"]  # the fix only ever adds pixels
            scores.append(r["score"])
            n_nonzero += r["score"] > 0
    assert n_nonzero > 100  # the section covers many tiles
    assert max(scores) > 0.5


def test_rejects_non_uint8():
    with pytest.raises(TypeError):
        dpw_score(np.zeros((4, 4, 3), float))
