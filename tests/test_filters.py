"""The DPW filter chain and the Otsu example plugin: real pen images with annotations, synthetic edge
cases for every retry rule, equivalence with a literal transcription of the original code, and schemas."""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import morphology

from slidestream.engine import config, registry
from slidestream.plugins.filters import dpw, otsu

DATA = Path(__file__).parent / "data" / "pen"
CHAIN = ["dpw.green_channel", "dpw.grays", "dpw.red_pen", "dpw.green_pen", "dpw.blue_pen", "dpw.small_objects"]


def _rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(DATA / name).convert("RGB"))


def _mask(name: str) -> np.ndarray:
    return np.asarray(Image.open(DATA / name)).astype(bool)


def _ones(rgb: np.ndarray) -> np.ndarray:
    return np.ones(rgb.shape[:2], bool)


def _run_chain(rgb: np.ndarray, names=CHAIN) -> np.ndarray:
    mask = _ones(rgb)
    for n in names:
        mask = registry.get("filter", n).apply(rgb, mask)
        assert mask.dtype == bool and mask.shape == rgb.shape[:2]
    return mask


# --------------------------------------------------------------------------------------------
# A literal transcription of deephistopath/wsi/filter.py (bool output), used as the oracle.
# --------------------------------------------------------------------------------------------
# The pen triples as written in the spec (dpw-filters.md 1.2), independent of dpw.py's constants.
SPEC_RED = [(150, 80, 90), (110, 20, 30), (185, 65, 105), (195, 85, 125), (220, 115, 145), (125, 40, 70),
            (200, 120, 150), (100, 50, 65), (85, 25, 45)]
SPEC_GREEN = [(150, 160, 140), (70, 110, 110), (45, 115, 100), (30, 75, 60), (195, 220, 210), (225, 230, 225),
              (170, 210, 200), (20, 30, 20), (50, 60, 40), (30, 50, 35), (65, 70, 60), (100, 110, 105),
              (165, 180, 180), (140, 140, 150), (185, 195, 195)]
SPEC_BLUE = [(60, 120, 190), (120, 170, 200), (175, 210, 230), (145, 180, 210), (37, 95, 160), (30, 65, 130),
             (130, 155, 180), (40, 35, 85), (30, 20, 65), (90, 90, 140), (60, 60, 120), (110, 110, 175)]


def _orig_mask_percent(m):
    return 100 - np.count_nonzero(m) / m.size * 100


def _orig_green_channel(rgb, green_thresh=200, avoid_overmask=True, overmask_thresh=90):
    g = rgb[:, :, 1]
    m = (g < green_thresh) & (g > 0)
    if _orig_mask_percent(m) >= overmask_thresh and green_thresh < 255 and avoid_overmask:
        m = _orig_green_channel(rgb, math.ceil((255 - green_thresh) / 2 + green_thresh), avoid_overmask,
                                overmask_thresh)
    return m


def _orig_grays(rgb, tolerance=15):
    rgb = rgb.astype(int)  # the original's np.int
    rg = abs(rgb[:, :, 0] - rgb[:, :, 1]) <= tolerance
    rb = abs(rgb[:, :, 0] - rgb[:, :, 2]) <= tolerance
    gb = abs(rgb[:, :, 1] - rgb[:, :, 2]) <= tolerance
    return ~(rg & rb & gb)


def _orig_pen(rgb, triples, ops):
    out = np.ones(rgb.shape[:2], bool)
    for t in triples:
        hit = np.ones(rgb.shape[:2], bool)
        for c, op in enumerate(ops):
            hit &= rgb[:, :, c] > t[c] if op == ">" else rgb[:, :, c] < t[c]
        out &= ~hit
    return out


def _sk_remove_small(m, min_size):
    """skimage's ``remove_small_objects(m, min_size)`` (strictly smaller removed), any skimage version."""
    if "max_size" in inspect.signature(morphology.remove_small_objects).parameters:
        return morphology.remove_small_objects(m, max_size=max(math.ceil(min_size) - 1, 0))
    return morphology.remove_small_objects(m, min_size=min_size)


def _orig_small_objects(m, min_size=500, avoid_overmask=True, overmask_thresh=95):
    rem = _sk_remove_small(m.astype(bool), min_size)
    if _orig_mask_percent(rem) >= overmask_thresh and min_size >= 1 and avoid_overmask:
        rem = _orig_small_objects(m, min_size / 2, avoid_overmask, overmask_thresh)
    return rem


@pytest.fixture(scope="module")
def red_img():
    return _rgb("histoqc-1k-pen_red.png"), _mask("histoqc-1k-pen_red_mask.png")


@pytest.fixture(scope="module")
def thumb():
    return _rgb("histolab-diagnostic-slide-thumb-rgb.png")


# --------------------------------------------------------------------------------------------
# Registration and schemas
# --------------------------------------------------------------------------------------------
def test_all_filters_registered():
    names = set(registry.plugins("filter"))
    assert set(CHAIN) | {"otsu"} <= names
    assert registry.source("filter", "dpw.red_pen") == "filters"


@pytest.mark.parametrize("name", CHAIN + ["otsu"])
def test_schema_defaults_match_function_defaults(name):
    p = registry.get("filter", name)
    sig = inspect.signature(p.apply)
    kwargs = [k for k in list(sig.parameters)[2:]]
    assert sorted(kwargs) == sorted(p.params), "every keyword is declared, nothing more"
    for k in kwargs:
        assert p.params[k]["default"] == sig.parameters[k].default, k
    assert config.validation_errors({"filters": [{"name": name, "params": {}}]}) == []
    defaults = {k: v["default"] for k, v in p.params.items()}
    assert config.validation_errors({"filters": [{"name": name, "params": defaults}]}) == []


@pytest.mark.parametrize("ref, path", [
    ({"name": "dpw.small_objects", "params": {"min_size": -3}}, "$.filters[0].params.min_size"),
    ({"name": "dpw.small_objects", "params": {"connectivity": 3}}, "$.filters[0].params.connectivity"),
    ({"name": "dpw.green_channel", "params": {"thresh": 300}}, "$.filters[0].params.thresh"),
    ({"name": "dpw.green_channel", "params": {"thresh": 20.5}}, "$.filters[0].params.thresh"),
    ({"name": "dpw.green_channel", "params": {"overmask_thresh": 101}}, "$.filters[0].params.overmask_thresh"),
    ({"name": "dpw.green_channel", "params": {"quirk_green_zero": "yes"}}, "$.filters[0].params.quirk_green_zero"),
    ({"name": "dpw.grays", "params": {"tolerance": -1}}, "$.filters[0].params.tolerance"),
    ({"name": "dpw.red_pen", "params": {"thresh": 1}}, "$.filters[0].params"),
    ({"name": "otsu", "params": {"channel": "hue"}}, "$.filters[0].params.channel"),
])
def test_bad_params_are_reported_at_their_path(ref, path):
    errors = config.validation_errors({"filters": [ref]})
    assert errors, ref
    assert any(e.startswith(path + ":") for e in errors), errors


# --------------------------------------------------------------------------------------------
# Equivalence with the original on real images
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("image", ["histoqc-1k-pen_red.png", "histoqc-model-pen_green.png", "wsi-blue-pen.png",
                                   "histolab-diagnostic-slide-thumb-rgb.png"])
def test_colour_filters_equal_the_original(image):
    rgb = _rgb(image)
    ones = _ones(rgb)
    assert np.array_equal(dpw.green_channel(rgb, ones), _orig_green_channel(rgb))
    assert np.array_equal(dpw.grays(rgb, ones), _orig_grays(rgb))
    assert np.array_equal(dpw.red_pen(rgb, ones), _orig_pen(rgb, SPEC_RED, "><<"))
    assert np.array_equal(dpw.green_pen(rgb, ones), _orig_pen(rgb, SPEC_GREEN, "<>>"))
    assert np.array_equal(dpw.blue_pen(rgb, ones), _orig_pen(rgb, SPEC_BLUE, "<<>"))


def test_grays_equal_original_on_every_colour_cube_corner_case():
    # all (r, g, b) on a coarse grid plus values around the tolerance boundary
    v = np.array([0, 1, 14, 15, 16, 17, 100, 114, 115, 116, 240, 254, 255], np.uint8)
    rgb = np.stack(np.meshgrid(v, v, v, indexing="ij"), axis=-1).reshape(-1, 1, 3)
    for tol in (0, 15, 16, 255):
        assert np.array_equal(dpw.grays(rgb, _ones(rgb), tolerance=tol), _orig_grays(rgb, tol))


def test_pen_triples_are_the_spec():
    assert list(dpw.RED_PEN) == SPEC_RED
    assert list(dpw.GREEN_PEN) == SPEC_GREEN
    assert list(dpw.BLUE_PEN) == SPEC_BLUE


def test_pen_filters_equal_original_on_whole_colour_cube():
    v = np.arange(0, 256, 5, dtype=np.uint8)  # includes values on and beside many thresholds
    v = np.unique(np.concatenate([v, np.array([t + d for tr in SPEC_RED + SPEC_GREEN + SPEC_BLUE
                                               for t in tr for d in (-1, 0, 1)]).clip(0, 255).astype(np.uint8)]))
    rgb = np.stack(np.meshgrid(v, v, v, indexing="ij"), axis=-1).reshape(len(v), -1, 3)
    ones = _ones(rgb)
    assert np.array_equal(dpw.red_pen(rgb, ones), _orig_pen(rgb, SPEC_RED, "><<"))
    assert np.array_equal(dpw.green_pen(rgb, ones), _orig_pen(rgb, SPEC_GREEN, "<>>"))
    assert np.array_equal(dpw.blue_pen(rgb, ones), _orig_pen(rgb, SPEC_BLUE, "<<>"))


def test_small_objects_equals_skimage_original(red_img, thumb):
    for rgb in (red_img[0], thumb):
        combined = _run_chain(rgb, CHAIN[:-1])
        assert np.array_equal(dpw.small_objects(rgb, combined), _orig_small_objects(combined))
    rng = np.random.default_rng(0)
    for density in (0.3, 0.5, 0.6):
        m = rng.random((120, 150)) < density
        for size in (3, 20, 62.5, 500):
            assert np.array_equal(dpw.small_objects(None, m, min_size=size), _orig_small_objects(m, size))


# --------------------------------------------------------------------------------------------
# Pen removal on annotated real slides
# --------------------------------------------------------------------------------------------
def _tissue_not_pen(rgb, pen):
    ones = _ones(rgb)
    return dpw.grays(rgb, dpw.green_channel(rgb, ones)) & ~pen


def test_red_pen_removes_annotated_red_ink(red_img):
    rgb, pen = red_img
    keep = dpw.red_pen(rgb, _ones(rgb))
    assert pen.sum() > 20000
    recall = (~keep[pen]).mean()  # measured 0.708 (the missed pixels are pale stroke edges)
    assert recall > 0.6
    tissue = _tissue_not_pen(rgb, pen)
    assert keep[tissue].mean() > 0.99  # measured 0.9986
    # other colours' filters leave red ink alone
    assert (~dpw.green_pen(rgb, _ones(rgb))[pen]).mean() < 0.02
    assert (~dpw.blue_pen(rgb, _ones(rgb))[pen]).mean() < 0.02


def test_green_pen_removes_annotated_green_ink():
    rgb, pen = _rgb("histoqc-model-pen_green.png"), _mask("histoqc-model-pen_green_mask.png")
    keep = dpw.green_pen(rgb, _ones(rgb))
    assert pen.sum() > 1000
    assert (~keep[pen]).mean() > 0.9  # measured 0.975
    assert keep[_tissue_not_pen(rgb, pen)].mean() > 0.98  # measured 0.9964
    assert (~dpw.red_pen(rgb, _ones(rgb))[pen]).mean() < 0.02


def test_blue_pen_removes_blue_ink_only():
    from skimage.color import rgb2hsv
    rgb = _rgb("wsi-blue-pen.png")  # no annotation: blue ink = saturated blue hues
    hsv = rgb2hsv(rgb)
    hue, sat = hsv[..., 0] * 360, hsv[..., 1]
    ink = (hue >= 190) & (hue <= 250) & (sat > 0.3)
    pink = ((hue >= 270) | (hue <= 20)) & (sat > 0.1)
    assert ink.sum() > 300 and pink.sum() > 3000
    keep = dpw.blue_pen(rgb, _ones(rgb))
    assert (~keep[ink]).mean() > 0.8  # measured 0.877
    assert keep[pink].all()
    assert np.nonzero(~keep)[1].min() > rgb.shape[1] // 2  # the ink is on the right half only


def test_histoqc_pen_vs_tissue_colour_samples():
    rows = np.loadtxt(DATA / "histoqc-pen-vs-tissue-rgb-samples.tsv", skiprows=1, dtype=int)
    label, rgb = rows[:, 0], rows[:, 1:].astype(np.uint8)[None]
    ones = _ones(rgb)
    pen_keep = dpw.red_pen(rgb, ones) & dpw.green_pen(rgb, ones) & dpw.blue_pen(rgb, ones)
    coloured = rgb[0].max(axis=1) - rgb[0].min(axis=1) > 15
    assert pen_keep[0][label == 0].all(), "no tissue sample is taken for ink"
    assert (~pen_keep[0][(label == 1) & coloured]).sum() >= 8  # measured 9 of 10 (one is pale pink)


def test_filters_only_remove(red_img):
    rgb, _ = red_img
    rng = np.random.default_rng(1)
    prior = rng.random(rgb.shape[:2]) < 0.7
    for n in CHAIN[:-1] + ["otsu"]:
        out = registry.get("filter", n).apply(rgb, prior)
        assert not (out & ~prior).any(), n
        assert np.array_equal(out, prior & registry.get("filter", n).apply(rgb, _ones(rgb))), n


# --------------------------------------------------------------------------------------------
# Green channel: threshold and overmask retry series
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("final", [200, 228, 242, 249, 252, 254])
def test_green_channel_retry_series_stops_at(final):
    # 150 px at final-1 (kept once the threshold reaches `final`), 10 px at `final` (kept only if it
    # went further), the rest white: the masked share is >= 90 % until the threshold reaches `final`.
    g = np.full(1000, 255, np.uint8)
    g[:150] = final - 1
    g[150:160] = final
    rgb = np.repeat(g.reshape(20, 50, 1), 3, axis=2)
    rgb[..., 0] = 120  # not gray, irrelevant here
    keep = dpw.green_channel(rgb, _ones(rgb))
    assert np.array_equal(keep, rgb[..., 1] == final - 1)
    assert np.array_equal(keep, _orig_green_channel(rgb))


def test_green_channel_almost_all_white_goes_to_255():
    rgb = np.full((100, 100, 3), 255, np.uint8)
    rgb[:2, :5, 1] = 253  # 10 faint pixels: masked share 99.9 % at every threshold below 255
    keep = dpw.green_channel(rgb, _ones(rgb))
    assert keep.sum() == 10 and keep[:2, :5].all()
    assert not dpw.green_channel(rgb, _ones(rgb), avoid_overmask=False).any()
    # a retry needs masked share >= overmask_thresh (100 % masked still retries)
    assert dpw.green_channel(rgb, _ones(rgb), overmask_thresh=100).sum() == 10
    rgb[5, :10, 1] = 254  # at threshold 254: 10 px kept (99.9 % masked); at 255: 20 px
    assert dpw.green_channel(rgb, _ones(rgb), overmask_thresh=99.95).sum() == 10
    assert dpw.green_channel(rgb, _ones(rgb), overmask_thresh=99.85).sum() == 20


def test_green_channel_quirk_green_zero():
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[..., 0] = 90
    rgb[..., 2] = 90
    rgb[:5, :, 1] = 0  # half the pixels have G == 0
    rgb[5:, :, 1] = 100
    assert dpw.green_channel(rgb, _ones(rgb)).sum() == 50  # as the original
    assert dpw.green_channel(rgb, _ones(rgb), quirk_green_zero=False).all()


def test_grays_tolerance():
    rgb = np.array([[[100, 100, 100], [100, 115, 108], [100, 116, 108], [200, 180, 190], [0, 0, 16]]], np.uint8)
    assert dpw.grays(rgb, _ones(rgb)).tolist() == [[False, False, True, True, True]]
    assert dpw.grays(rgb, _ones(rgb), tolerance=20).tolist() == [[False, False, False, False, False]]


def test_bad_input_rejected():
    with pytest.raises(TypeError):
        dpw.red_pen(np.zeros((4, 4, 3), float), np.ones((4, 4), bool))
    with pytest.raises(ValueError):
        dpw.grays(np.zeros((4, 4, 3), np.uint8), np.ones((5, 4), bool))


# --------------------------------------------------------------------------------------------
# Small objects
# --------------------------------------------------------------------------------------------
def _blob(m, y, x, h, w):
    m[y:y + h, x:x + w] = True


def test_small_objects_labelling_equals_scipy():
    """cc3d's components (the plugin's labelling) are scipy.ndimage.label's, 4- and 8-connected."""
    from scipy import ndimage

    rng = np.random.default_rng(1)
    for density in (0.2, 0.45, 0.6):
        m = rng.random((97, 131)) < density
        for connectivity in (1, 2):
            labels, n = ndimage.label(m, structure=ndimage.generate_binary_structure(2, connectivity))
            sizes = np.bincount(labels.ravel(), minlength=n + 1)
            for size in (2, 5, 40):
                keep = sizes >= size
                keep[0] = False
                out = dpw.small_objects(None, m, min_size=size, avoid_overmask=False, connectivity=connectivity)
                assert np.array_equal(out, keep[labels]), (density, connectivity, size)


def test_small_objects_removes_small_keeps_large():
    m = np.zeros((100, 100), bool)
    _blob(m, 5, 5, 2, 5)      # 10 px
    _blob(m, 30, 30, 20, 30)  # 600 px
    _blob(m, 80, 80, 10, 10)  # 100 px
    out = dpw.small_objects(None, m, avoid_overmask=False)
    assert out.sum() == 600 and out[30:50, 30:60].all()
    # the spec's default has 600 px of a 10000 px image: 94 % masked, no retry
    assert np.array_equal(dpw.small_objects(None, m), out)


def test_small_objects_strictly_smaller_and_4_connected():
    m = np.zeros((60, 60), bool)
    _blob(m, 0, 0, 20, 25)   # exactly 500 px: kept (< min_size removes)
    _blob(m, 30, 30, 10, 30)  # 300 px
    _blob(m, 40, 0, 10, 30)  # 300 px touching the previous one only at a corner
    out = dpw.small_objects(None, m, avoid_overmask=False)
    assert out.sum() == 500
    out8 = dpw.small_objects(None, m, avoid_overmask=False, connectivity=2)
    assert out8.sum() == 1100
    assert dpw.small_objects(None, m, min_size=501, avoid_overmask=False).sum() == 0


def test_small_objects_halving_retry():
    m = np.zeros((40, 40), bool)  # 1600 px
    _blob(m, 0, 0, 15, 20)    # 300 px: removed at 500, kept at 250
    _blob(m, 30, 30, 2, 5)    # 10 px: removed at 250 too
    out = dpw.small_objects(None, m)  # 500 -> 100 % masked -> 250 -> 81 % masked: stop
    assert out.sum() == 300 and out[:15, :20].all()
    assert not dpw.small_objects(None, m, avoid_overmask=False).any()
    assert np.array_equal(out, _orig_small_objects(m))


def test_small_objects_quirk5_overmasked_input_removes_nothing():
    m = np.zeros((100, 100), bool)  # 3.1 % tissue: >= 95 % masked whatever is removed
    _blob(m, 0, 0, 15, 20)
    _blob(m, 50, 50, 2, 5)
    assert np.array_equal(dpw.small_objects(None, m), m)
    assert np.array_equal(_orig_small_objects(m), m)


def test_small_objects_empty_and_full():
    assert not dpw.small_objects(None, np.zeros((20, 20), bool)).any()
    assert dpw.small_objects(None, np.ones((30, 30), bool)).all()


# --------------------------------------------------------------------------------------------
# Whole chain and Otsu on real thumbnails
# --------------------------------------------------------------------------------------------
def test_full_chain_on_diagnostic_thumbnail(thumb):
    mask = _run_chain(thumb)
    assert 0.40 < mask.mean() < 0.65  # measured 0.526: the section minus ink and glass
    assert mask.mean() < _run_chain(thumb, CHAIN[:2]).mean() - 0.1  # the pen filters remove ink
    # corners are glass
    for sl in (np.s_[:20, :20], np.s_[-20:, -20:], np.s_[:20, -20:]):
        assert mask[sl].mean() < 0.05


def test_full_chain_on_red_pen_slide(red_img):
    rgb, pen = red_img
    mask = _run_chain(rgb)
    assert 0.35 < mask.mean() < 0.5  # measured 0.43
    assert mask[pen].mean() < 0.35  # measured 0.25
    tissue = _tissue_not_pen(rgb, pen)
    assert mask[tissue].mean() > 0.9


def test_otsu_agrees_with_dpw_background_removal(red_img):
    rgb, _ = red_img
    ref = _run_chain(rgb, CHAIN[:2])
    for channel in ("gray", "saturation"):
        o = otsu.otsu(rgb, _ones(rgb), channel=channel)
        iou = (o & ref).sum() / (o | ref).sum()
        assert iou > 0.9, (channel, iou)  # measured 0.988 / 0.967
    # tissue is the darker side
    o = otsu.otsu(rgb, _ones(rgb))
    assert rgb[o].mean() < rgb[~o].mean() - 30


def test_otsu_blank_slide_has_no_tissue():
    white = np.full((40, 40, 3), 250, np.uint8)
    for channel in ("gray", "saturation"):
        assert not otsu.otsu(white, _ones(white), channel=channel).any()


def test_otsu_is_a_self_contained_plugin():
    (p,) = otsu.slidestream_filters()
    assert p.name == "otsu" and p.apply is otsu.otsu


# --------------------------------------------------------------------------------------------
# The fused pass (what the engine runs) gives the one-by-one chain's mask, pixel for pixel
# --------------------------------------------------------------------------------------------
PEN_IMAGES = ["histoqc-1k-pen_red.png", "histoqc-model-pen_green.png", "wsi-blue-pen.png",
              "histolab-diagnostic-slide-thumb-rgb.png"]


@pytest.mark.parametrize("image", PEN_IMAGES)
def test_fused_chain_equals_one_by_one_on_real_thumbnails(image):
    """Stated tolerance: none. The fused mask must equal the sequential chain's on every pixel."""
    rgb = _rgb(image)
    refs = [{"name": n} for n in CHAIN]
    fused = dpw.apply_chain(rgb, refs)
    assert fused.dtype == bool
    np.testing.assert_array_equal(fused, _run_chain(rgb))
    assert 0 < fused.sum() < fused.size  # the test means something: some tissue, some background


@pytest.mark.parametrize("params", [
    {"dpw.green_channel": {"thresh": 120}, "dpw.grays": {"tolerance": 40}},
    {"dpw.green_channel": {"quirk_green_zero": False, "avoid_overmask": False}},
    {"dpw.green_channel": {"thresh": 20, "overmask_thresh": 50}},  # forces the retry series
])
def test_fused_chain_honours_params(params, red_img):
    rgb = red_img[0]
    refs = [{"name": n, "params": params.get(n, {})} for n in CHAIN]
    np.testing.assert_array_equal(dpw.apply_chain(rgb, refs), _run_chain_refs(rgb, refs))


def test_fused_chain_any_order_and_subsets_on_the_colour_cube():
    v = np.arange(0, 256, 5, dtype=np.uint8)
    cube = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(-1, 1, 3)
    for names in (["dpw.blue_pen", "dpw.grays"], ["dpw.red_pen", "dpw.green_pen", "dpw.green_channel"],
                  ["dpw.grays", "dpw.grays", "dpw.red_pen", "dpw.red_pen"], list(reversed(CHAIN[:5]))):
        refs = [{"name": n, "params": {"tolerance": 30} if n == "dpw.grays" and i else {}} for i, n in
                enumerate(names)]
        np.testing.assert_array_equal(dpw.apply_chain(cube, refs), _run_chain_refs(cube, refs), err_msg=str(names))


def test_engine_tissue_mask_uses_the_fused_chain(red_img, monkeypatch):
    from slidestream.engine.runner import tissue_mask

    calls = []
    monkeypatch.setattr(dpw, "fused", lambda rgb, mask, steps: calls.append(len(steps)) or mask)
    tissue_mask({"filters": [{"name": n} for n in CHAIN]}, red_img[0])
    assert calls == [5]


def _run_chain_refs(rgb, refs):
    mask = _ones(rgb)
    for r in refs:
        mask = registry.get("filter", r["name"]).apply(rgb, mask, **r.get("params", {}))
    return mask
