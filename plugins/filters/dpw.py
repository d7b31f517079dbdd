"""The python-wsi-preprocessing ("DPW") tissue filter chain, one FilterPlugin per step.

Reproduces ``deephistopath/wsi/filter.py`` (deroneriksson/python-wsi-preprocessing @ c82dcaf,
Apache-2.0), the segmentation used by Liu et al. 2020; the spec is ``shared/reference/dpw-filters.md``.
The default chain, in this order, gives the original's mask::

    dpw.green_channel, dpw.grays, dpw.red_pen, dpw.green_pen, dpw.blue_pen, dpw.small_objects

Each colour filter computes its keep-mask on the original RGB and returns ``mask & keep`` (the original
ANDs masks that were each computed on the original RGB, so chaining by AND is the same thing); its
overmask retry looks at its own keep-mask only, as in the original. ``dpw.small_objects`` works on the
combined mask. Each step is its own plugin so a lab can drop or swap one.

Every quirk of the original (spec section 1.4) that touches these filters, and what is done with it:

* Q1 ``np.int`` in ``filter_grays``: fixed (no float/int cast at all; same result as the original had).
* Q3 green channel drops ``G == 0``: reproduced behind ``quirk_green_zero`` (default true).
* Q4 double uint8 conversion in the overmask retry: does not apply (plugins return bool masks).
* Q5 small_objects recursion when already overmasked: reproduced (same result: nothing is removed),
  computed with one labelling pass instead of ten.
* Q6 skimage 0.26 deprecating ``min_size``: own labelling (cc3d) with the same ``size < min_size``
  rule, so results do not depend on the scikit-image version.

Speed: uint8 comparisons, 256-entry lookup tables and one labelling pass. The engine runs any run of
consecutive DPW colour filters (green channel, grays, pens) in one fused pass (``fused``): one 64-bit
lookup table per channel holds every pen box and the green threshold, so the colour part is three
lookups, two ANDs and one comparison, plus the gray spread; the mask equals the one-by-one chain's
(tests/test_filters.py). Times in bench/README.md.
"""
from __future__ import annotations

import math

import numpy as np

from slidestream.engine.hookspecs import FilterPlugin, hookimpl

# (r_lo, g_hi, b_hi): a pixel is red pen when R > r_lo & G < g_hi & B < b_hi for any triple.
RED_PEN = ((150, 80, 90), (110, 20, 30), (185, 65, 105), (195, 85, 125), (220, 115, 145),
           (125, 40, 70), (200, 120, 150), (100, 50, 65), (85, 25, 45))
# (r_hi, g_lo, b_lo): green pen when R < r_hi & G > g_lo & B > b_lo for any triple.
GREEN_PEN = ((150, 160, 140), (70, 110, 110), (45, 115, 100), (30, 75, 60), (195, 220, 210),
             (225, 230, 225), (170, 210, 200), (20, 30, 20), (50, 60, 40), (30, 50, 35), (65, 70, 60),
             (100, 110, 105), (165, 180, 180), (140, 140, 150), (185, 195, 195))
# (r_hi, g_hi, b_lo): blue pen when R < r_hi & G < g_hi & B > b_lo for any triple.
BLUE_PEN = ((60, 120, 190), (120, 170, 200), (175, 210, 230), (145, 180, 210), (37, 95, 160),
            (30, 65, 130), (130, 155, 180), (40, 35, 85), (30, 20, 65), (90, 90, 140), (60, 60, 120),
            (110, 110, 175))


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _rgb(rgb) -> np.ndarray:
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] < 3 or a.dtype != np.uint8:
        raise TypeError(f"expected an (h, w, 3) uint8 RGB thumbnail, got {a.shape} {a.dtype}")
    return a[..., :3]


def _masked_percent(kept: int, total: int) -> float:
    """The original's ``mask_percent`` of a 2-D mask with ``kept`` True pixels out of ``total``."""
    return 100 - kept / total * 100  # same float order as the original


def _pen_keep(rgb: np.ndarray, triples, ops: str) -> np.ndarray:
    """Keep-mask of a pen filter: False where any triple's box test holds.

    ``ops`` gives per channel ``>`` or ``<`` against the triple's threshold. Instead of 3*len(triples)
    full-image comparisons, each channel is mapped through a 256-entry table holding one bit per triple
    (bit k set when the value passes triple k's test on that channel); a pixel is pen when the AND of
    its three channel words has any bit set. Exactly the original's AND of per-triple masks.
    """
    v = np.arange(256)
    words = []
    for c, op in enumerate(ops):
        lut = np.zeros(256, np.uint16)
        for k, t in enumerate(triples):
            hit = v > t[c] if op == ">" else v < t[c]
            lut[hit] |= np.uint16(1 << k)
        words.append(lut[rgb[..., c]])
    return (words[0] & words[1] & words[2]) == 0


def _check_mask(mask, shape) -> np.ndarray:
    m = np.asarray(mask, dtype=bool)
    if m.shape != shape:
        raise ValueError(f"mask shape {m.shape} does not match the thumbnail {shape}")
    return m


# --------------------------------------------------------------------------------------------
# the filters
# --------------------------------------------------------------------------------------------
def green_channel(rgb, mask, thresh: int = 200, avoid_overmask: bool = True, overmask_thresh: float = 90,
                  quirk_green_zero: bool = True) -> np.ndarray:
    """Keep pixels with ``G < thresh`` (background is bright in green); ``filter_green_channel``.

    Overmask retry (as the original): if this filter alone would mask ``>= overmask_thresh`` % of the
    image and ``thresh < 255``, retry with ``ceil((255 - t) / 2 + t)``: 200, 228, 242, 249, 252, 254, 255.
    All thresholds are evaluated from one histogram of G.
    Quirk Q3, reproduced by default: ``quirk_green_zero`` also drops ``G == 0`` pixels (the original's
    ``G > 0``); harmless on H&E, and it removes black (transparent-converted) slide padding. Set it
    false to keep them.
    """
    g = _rgb(rgb)[..., 1]
    mask = _check_mask(mask, g.shape)
    t = _green_thresh(g, thresh, avoid_overmask, overmask_thresh, quirk_green_zero)
    keep = g < t
    if quirk_green_zero:
        keep &= g > 0
    return mask & keep


def grays(rgb, mask, tolerance: int = 15) -> np.ndarray:
    """Drop gray pixels: ``|R-G|, |R-B|, |G-B| <= tolerance``; ``filter_grays``.

    Quirk Q1 fixed: the original casts to ``np.int`` (gone from numpy >= 1.24). All three pairwise
    differences are within tolerance exactly when ``max(R,G,B) - min(R,G,B) <= tolerance``, which is
    computed in uint8 with no overflow, so the result is the original's.
    """
    a = _rgb(rgb)
    mask = _check_mask(mask, a.shape[:2])
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    return mask & (spread > tolerance)


def red_pen(rgb, mask) -> np.ndarray:
    """Drop red pen: ``R > r & G < g & B < b`` for any of the 9 original triples; ``filter_red_pen``."""
    a = _rgb(rgb)
    return _check_mask(mask, a.shape[:2]) & _pen_keep(a, RED_PEN, "><<")


def green_pen(rgb, mask) -> np.ndarray:
    """Drop green pen: ``R < r & G > g & B > b`` for any of the 15 original triples; ``filter_green_pen``."""
    a = _rgb(rgb)
    return _check_mask(mask, a.shape[:2]) & _pen_keep(a, GREEN_PEN, "<>>")


def blue_pen(rgb, mask) -> np.ndarray:
    """Drop blue pen: ``R < r & G < g & B > b`` for any of the 12 original triples; ``filter_blue_pen``."""
    a = _rgb(rgb)
    return _check_mask(mask, a.shape[:2]) & _pen_keep(a, BLUE_PEN, "<<>")


def small_objects(rgb, mask, min_size: float = 500, avoid_overmask: bool = True, overmask_thresh: float = 95,
                  connectivity: int = 1) -> np.ndarray:
    """Remove connected tissue components of fewer than ``min_size`` pixels; ``filter_remove_small_objects``.

    Works on the combined ``mask`` (``rgb`` is unused). Components are 4-connected by default
    (``connectivity=1``, skimage's default; 2 = 8-connected). A component is removed when its pixel
    count is ``< min_size`` (skimage's deprecated ``min_size`` rule; quirk Q6 avoided by labelling here,
    so the scikit-image version does not matter). Labelling: ``cc3d`` (connected-components-3d), the same
    components as ``scipy.ndimage.label`` (tests/test_filters.py compares them), imported in ~3 ms where
    SciPy's ndimage takes ~0.2 s CPU, most of a one-slide process's start-up.

    Overmask retry (as the original): if the result is ``>= overmask_thresh`` % masked and
    ``min_size >= 1``, retry from the input mask with ``min_size / 2`` (250, 125, 62.5, ... as floats).
    Quirk Q5, reproduced: when the input is already that masked the halving runs until
    ``min_size < 1``, i.e. nothing is removed. The series is evaluated on one labelling.
    """
    import cc3d

    mask = np.asarray(mask, dtype=bool)
    labels, n = cc3d.connected_components(mask, connectivity=4 if connectivity == 1 else 8, return_N=True)
    flat, step = labels.reshape(-1), max(1 << 18, n + 1)  # in blocks: bincount and take copy labels to int64 first
    sizes = np.zeros(n + 1, np.int64)
    for i in range(0, flat.size, step):
        sizes += np.bincount(flat[i:i + step], minlength=n + 1)
    sizes[0] = 0
    fg = sizes[1:]
    size = float(min_size)
    while True:
        kept = int(fg[fg >= size].sum())
        if not (avoid_overmask and size >= 1 and _masked_percent(kept, mask.size) >= overmask_thresh):
            break
        size /= 2
    keep_label = sizes >= size
    keep_label[0] = False
    out = np.empty(labels.shape, bool)
    for i in range(0, flat.size, step):
        np.take(keep_label, flat[i:i + step], out=out.reshape(-1)[i:i + step])  # faster than keep_label[labels]
    return out


# --------------------------------------------------------------------------------------------
# fused pass
# --------------------------------------------------------------------------------------------
COLOUR_FILTERS = ("dpw.green_channel", "dpw.grays", "dpw.red_pen", "dpw.green_pen", "dpw.blue_pen")
_PENS = {"dpw.red_pen": (RED_PEN, "><<"), "dpw.green_pen": (GREEN_PEN, "<>>"), "dpw.blue_pen": (BLUE_PEN, "<<>")}
_GREEN_BIT = np.uint64(1 << 63)
FUSED_THREADS_PX = 2_000_000  # thumbnails this large are filtered in two threads (TCGA-size: 6.3 Mpx)


def _green_thresh(g: np.ndarray, thresh: int = 200, avoid_overmask: bool = True, overmask_thresh: float = 90,
                  quirk_green_zero: bool = True) -> int:
    """``green_channel``'s final threshold after its overmask retries (one histogram of G)."""
    from PIL import Image

    hist = np.array(Image.fromarray(np.ascontiguousarray(g)).histogram())  # Pillow's count: 3x np.bincount's speed
    cum = np.concatenate([[0], np.cumsum(hist)])
    lo = int(hist[0]) if quirk_green_zero else 0
    t = int(thresh)
    while avoid_overmask and t < 255 and _masked_percent(int(cum[t] - lo), g.size) >= overmask_thresh:
        t = math.ceil((255 - t) / 2 + t)
    return t


def fused(rgb, mask, steps: list[dict]) -> np.ndarray:
    """``mask`` AND the keep-masks of consecutive DPW colour filters, computed in one pass.

    ``steps`` are pipeline filter refs (``{"name": ..., "params": {...}}``) naming only
    ``COLOUR_FILTERS``. Each of them keeps a pixel by a test on the original RGB, so their AND does not
    depend on their order; the result equals applying them one by one.
    """
    a = _rgb(rgb)
    mask = _check_mask(mask, a.shape[:2])
    v = np.arange(256)
    luts = [np.zeros(256, np.uint64) for _ in range(3)]
    bit, green, tolerances, pens = 0, None, [], set()
    for ref in steps:
        name, params = ref["name"], ref.get("params", {})
        if name in _PENS:
            if name in pens:  # the same box test twice keeps the same pixels
                continue
            pens.add(name)
            triples, ops = _PENS[name]
            for t in triples:
                for c, op in enumerate(ops):
                    luts[c][(v > t[c]) if op == ">" else (v < t[c])] |= np.uint64(1 << bit)
                bit += 1
        elif name == "dpw.green_channel":
            t = _green_thresh(a[..., 1], **params)
            g_keep = v < t if green is None else (v < t) & green
            green = g_keep & (v > 0) if params.get("quirk_green_zero", True) else g_keep
        elif name == "dpw.grays":
            tolerances.append(int(params.get("tolerance", 15)))
        else:
            raise ValueError(f"{name} is not a DPW colour filter; fuse only {', '.join(COLOUR_FILTERS)}")
    if green is not None:  # bit 63 set in R's and B's tables always, in G's where G passes
        luts[0] |= _GREEN_BIT
        luts[2] |= _GREEN_BIT
        luts[1][green] |= _GREEN_BIT
    want = _GREEN_BIT if green is not None else np.uint64(0)
    tol = max(tolerances) if tolerances else None
    out = mask.copy()
    rows = max(1, (1 << 16) // max(1, a.shape[1]))  # blocks of ~64k pixels stay in the CPU cache

    def blocks(starts) -> None:
        for y in starts:
            blk, keep = a[y:y + rows], out[y:y + rows]
            if green is not None or bit:
                word = np.take(luts[0], blk[..., 0])  # np.take: several times faster than luts[0][...]
                word &= np.take(luts[1], blk[..., 1])
                word &= np.take(luts[2], blk[..., 2])
                keep &= word == want
            if tol is not None:  # all grays filters must keep the pixel: the largest tolerance decides
                r, g, b = blk[..., 0], blk[..., 1], blk[..., 2]
                spread = np.maximum(np.maximum(r, g), b)
                spread -= np.minimum(np.minimum(r, g), b)
                keep &= spread > tol

    starts = range(0, a.shape[0], rows)
    if a.shape[0] * a.shape[1] < FUSED_THREADS_PX:
        blocks(starts)
    else:  # numpy releases the GIL in take and the ufuncs: two threads on alternate blocks
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(blocks, (starts[0::2], starts[1::2])))
    return out


def apply_chain(rgb, refs: list[dict], mask=None) -> np.ndarray:
    """Apply pipeline filter refs in order, fusing each run of consecutive DPW colour filters."""
    from slidestream.engine import registry

    mask = np.ones(np.asarray(rgb).shape[:2], bool) if mask is None else mask
    i = 0
    while i < len(refs):
        j = i
        while j < len(refs) and refs[j]["name"] in COLOUR_FILTERS:
            j += 1
        if j - i >= 2:
            mask, i = fused(rgb, mask, refs[i:j]), j
            continue
        ref = refs[i]
        mask = np.asarray(registry.get("filter", ref["name"]).apply(rgb, mask, **ref.get("params", {})), dtype=bool)
        i += 1
    return mask


# --------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------
_OVERMASK = {"type": "boolean", "default": True,
             "description": "retry with a looser setting when this step alone masks too much (as the original)"}


def _pct(default: float, what: str) -> dict:
    return {"type": "number", "minimum": 0, "maximum": 100, "default": default, "description": what}


@hookimpl
def slidestream_filters():
    return [
        FilterPlugin(
            name="dpw.green_channel", apply=green_channel,
            summary="DPW: keep pixels whose green channel is below a threshold (retries when overmasked)",
            params={
                "thresh": {"type": "integer", "minimum": 0, "maximum": 255, "default": 200,
                           "description": "keep G < thresh"},
                "avoid_overmask": _OVERMASK,
                "overmask_thresh": _pct(90, "masked percentage that triggers the retry"),
                "quirk_green_zero": {"type": "boolean", "default": True,
                                     "description": "also drop G == 0 pixels, as the original does"},
            }),
        FilterPlugin(
            name="dpw.grays", apply=grays, summary="DPW: drop gray pixels (all channel differences <= tolerance)",
            params={"tolerance": {"type": "integer", "minimum": 0, "maximum": 255, "default": 15,
                                  "description": "max channel difference of a gray pixel"}}),
        FilterPlugin(name="dpw.red_pen", apply=red_pen, summary="DPW: drop red pen ink (9 RGB boxes)"),
        FilterPlugin(name="dpw.green_pen", apply=green_pen, summary="DPW: drop green pen ink (15 RGB boxes)"),
        FilterPlugin(name="dpw.blue_pen", apply=blue_pen, summary="DPW: drop blue pen ink (12 RGB boxes)"),
        FilterPlugin(
            name="dpw.small_objects", apply=small_objects,
            summary="DPW: remove tissue components smaller than min_size pixels (halving retry when overmasked)",
            params={
                "min_size": {"type": "number", "minimum": 0, "default": 500,
                             "description": "components of fewer pixels are removed (thumbnail pixels)"},
                "avoid_overmask": _OVERMASK,
                "overmask_thresh": _pct(95, "masked percentage that triggers halving min_size"),
                "connectivity": {"enum": [1, 2], "default": 1, "description": "1: 4-connected, 2: 8-connected"},
            }),
    ]
