"""``morphometry``: a weight-free, CPU-cheap handcrafted patch encoder (nuclear morphometry + stain + texture).

The classic baseline of computational pathology (CellProfiler-style nuclear morphometry), for labs without a
GPU or foundation-model weights. Per patch (RGB, at the resolution it is given: set ``input_size`` to the
patch size so nothing is resampled; lengths are in pixels of that image):

* **stain** (``skimage.color.rgb2hed``, Ruifrok-Johnston colour deconvolution): hematoxylin and eosin optical
  density, mean / sd / 10th, 50th, 90th percentiles each (10 features);
* **nuclei** (``nuclei``): the hematoxylin channel thresholded (Otsu per patch, never below ``min_h``),
  8-connected objects of at least ``min_area`` px; count, nuclear area fraction, and per nucleus area,
  perimeter, eccentricity, extent, major and minor axis lengths and mean hematoxylin (regionprops'
  definitions, computed from image moments for the whole batch at once), each summarized by mean / sd /
  10th, 50th, 90th percentiles (2 + 7 x 5 = 37 features; zeros when a patch has no nucleus);
* **texture**: grey-level co-occurrence of the hematoxylin channel (``skimage.feature.graycomatrix``, 16 levels
  over H optical density 0..0.15, distances 1, 2, 4 px, four angles averaged): contrast, homogeneity, energy,
  correlation (12 features);
* **shape histogram** (``HIST``): the number of nuclei per patch in fixed bins of area (``AREA_BINS``, px:
  min_area-16, 16-32, 32-64, 64-128, 128-256, >= 256) and of eccentricity (``ECC_BINS``: 0-0.5, 0.5-0.7,
  0.7-0.8, 0.8-0.9, 0.9-1), then the same 11 counts divided by the patch's nuclei (0 without nuclei): the
  distribution of nuclear size and shape, which per-patch means and percentiles blur when a patch mixes
  two populations (22 features). Summed over a patient's patches the counts give its nuclei per bin.

81 features in all (``NAMES``), float32, ~1 ms per 64 px patch on one CPU core. Deterministic, no weights, no
torch computation (numpy, SciPy, scikit-image on the CPU: the module moves its input to the CPU). Solidity
(convex hull per nucleus) and LBP histograms were left out: scikit-image computes them at ~1-2 ms per nucleus
or patch, more than all the rest together. Standardize the features before a model (``mil train`` does).
"""
from __future__ import annotations

import numpy as np

STATS = ("mean", "sd", "p10", "p50", "p90")
STAIN = ("h", "e")
PROPS = ("area", "perimeter", "eccentricity", "extent", "axis_major_length", "axis_minor_length", "intensity_mean")
GLCM = ("contrast", "homogeneity", "energy", "correlation")
DISTANCES = (1, 2, 4)
# fixed bins of the nuclear shape histogram (counts of nuclei per patch): area in px of the encoder's input
# (doubling bins; at 10x, ~1 um/px, px ~ um^2), eccentricity (0 = circle; minor/major axis 0.87, 0.71, 0.6, 0.44)
AREA_BINS = (16, 32, 64, 128, 256)
ECC_BINS = (0.5, 0.7, 0.8, 0.9)


def _bin_names(prop: str, edges: tuple, lo: str, hi: str) -> list[str]:
    b = (lo, *(f"{e:g}" for e in edges), hi)
    return [f"nuclei_{prop}_{b[i]}_{b[i + 1]}" for i in range(len(b) - 1)]


HIST = _bin_names("area", AREA_BINS, "min", "inf") + _bin_names("eccentricity", ECC_BINS, "0", "1")
HIST = HIST + [f"{h}_frac" for h in HIST]  # counts, then fractions of the patch's nuclei

NAMES = ([f"{c}_{s}" for c in STAIN for s in STATS] + ["nuclei_count", "nuclear_area_fraction"]
         + [f"nucleus_{p}_{s}" for p in PROPS for s in STATS]
         + [f"glcm_{p}_d{d}" for p in GLCM for d in DISTANCES] + HIST)
DIM = len(NAMES)


def group_stats(values: np.ndarray, group: np.ndarray, n: int) -> np.ndarray:
    """(n, 5) mean, sd, 10th, 50th, 90th percentile (linear interpolation) of ``values`` per ``group`` (0..n-1);
    zeros for an empty group. Vectorized: one sort, no loop over groups."""
    out = np.zeros((n, len(STATS)))
    count = np.bincount(group, minlength=n)
    has = count > 0
    c = np.maximum(count, 1)
    mean = np.bincount(group, values, n) / c
    out[:, 0] = mean
    out[:, 1] = np.sqrt(np.maximum(np.bincount(group, values * values, n) / c - mean * mean, 0))
    v = values[np.lexsort((values, group))]
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    for j, q in enumerate((0.1, 0.5, 0.9)):
        pos = q * (c - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, c - 1)
        frac = pos - lo
        out[has, 2 + j] = (v[(start + lo)[has]] * (1 - frac[has]) + v[(start + hi)[has]] * frac[has])
    out[~has] = 0
    return out


def nuclei(hema: np.ndarray, min_h: float = 0.03, min_area: int = 8) -> tuple[np.ndarray, np.ndarray, dict]:
    """Segment nuclei in a batch of hematoxylin images (n, h, w): Otsu per patch (never below ``min_h``),
    8-connected objects of at least ``min_area`` px. Returns (labels (n, h, w), the patch of each label,
    {prop: per-nucleus values}) with the properties of ``PROPS`` computed from image moments as
    ``skimage.measure.regionprops`` defines them (axis lengths 4 sqrt(eigenvalues of the coordinate covariance),
    eccentricity sqrt(1 - l2 / l1), extent area / bounding-box area), except ``perimeter``: the number of
    object pixels with a 4-neighbour outside the object. Vectorized over all nuclei of the batch with
    ``scipy.ndimage`` (regionprops costs ~1 ms per nucleus in Python)."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    n, h, w = hema.shape
    mask = np.empty(hema.shape, bool)
    for i in range(n):
        hi = hema[i]
        t = threshold_otsu(hi) if hi.max() > hi.min() else np.inf
        mask[i] = hi > max(t, min_h)
    plane = np.zeros((3, 3, 3), bool)
    plane[1] = True  # 8-connected within a patch, never across patches
    labels, k = ndi.label(mask, structure=plane)
    area = np.bincount(labels.ravel(), minlength=k + 1)
    keep = area >= min_area
    keep[0] = False
    relabel = np.cumsum(keep) * keep  # drop small objects, number the rest 1..m
    labels = relabel[labels]
    m = int(relabel.max())
    fg = np.flatnonzero(labels)  # moments over nucleus pixels only (~1/6 of the batch)
    lab = labels.ravel()[fg]
    a = np.bincount(lab, minlength=m + 1)[1:].astype(float)
    yy, xx = ((fg // w) % h).astype(float), (fg % w).astype(float)
    s = lambda wts: np.bincount(lab, wts, m + 1)[1:] / np.maximum(a, 1)  # noqa: E731 - per-nucleus mean
    cy, cx = s(yy), s(xx)
    vyy, vxx, vxy = s(yy * yy) - cy * cy, s(xx * xx) - cx * cx, s(xx * yy) - cx * cy
    half, root = (vyy + vxx) / 2, np.sqrt(((vyy - vxx) / 2) ** 2 + vxy ** 2)
    l1, l2 = np.maximum(half + root, 0), np.maximum(half - root, 0)
    cross = np.zeros((3, 3, 3), bool)
    cross[1] = ndi.generate_binary_structure(2, 1)
    edge = (labels > 0) & ~ndi.binary_erosion(labels > 0, structure=cross, border_value=0)
    boxes = ndi.find_objects(labels)
    patch = np.array([b[0].start for b in boxes], int)
    box_area = np.array([(b[1].stop - b[1].start) * (b[2].stop - b[2].start) for b in boxes], float)
    props = {"area": a, "perimeter": np.bincount(lab, edge.ravel()[fg], m + 1)[1:],
             "eccentricity": np.sqrt(1 - l2 / np.where(l1 > 0, l1, 1)) * (l1 > 0), "extent": a / np.maximum(box_area, 1),
             "axis_major_length": 4 * np.sqrt(l1), "axis_minor_length": 4 * np.sqrt(l2),
             "intensity_mean": s(hema.ravel()[fg].astype(float))}
    return labels, patch, props


def rgb2hed(rgb: np.ndarray) -> np.ndarray:
    """``skimage.color.rgb2hed`` of uint8 RGB, in float32, with its per-pixel optical density
    ``log(max(v / 255, 1e-6)) / log(1e-6)`` read from a 256-entry table (the logarithm dominated the encoder)."""
    from skimage.color import hed_from_rgb

    od = (np.log(np.maximum(np.arange(256) / 255, 1e-6)) / np.log(1e-6)).astype(np.float32)
    return np.maximum(od[rgb] @ hed_from_rgb.astype(np.float32), 0)


def describe(rgb: np.ndarray, min_h: float = 0.03, min_area: int = 8) -> np.ndarray:
    """(n, h, w, 3) RGB (uint8, or float in 0..1, rounded to uint8) -> (n, DIM) float32 features (see the module
    doc; ``NAMES``)."""
    from skimage.feature import graycomatrix, graycoprops

    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        rgb = np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
    n, h, w, _ = rgb.shape
    hed = rgb2hed(rgb)
    hema = hed[..., 0]
    cols = []
    for ch in (hema, hed[..., 1]):
        flat = ch.reshape(n, -1)
        cols += [flat.mean(1, keepdims=True), flat.std(1, keepdims=True), np.percentile(flat, (10, 50, 90), axis=1).T]
    labels, patch, props = nuclei(hema, min_h, min_area)
    count = np.bincount(patch, minlength=n)[:, None]
    cols += [count, (labels > 0).reshape(n, -1).mean(1, keepdims=True)]
    cols += [group_stats(props[p], patch, n) for p in PROPS]
    q = np.clip(hema / 0.15 * 15, 0, 15).astype(np.uint8)  # 16 grey levels over H OD 0..0.15
    angles = (0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
    glcm = np.concatenate([graycomatrix(q[i], DISTANCES, angles, levels=16, symmetric=True, normed=True)
                           for i in range(n)], axis=2)  # (16, 16, n * distances, angles): one graycoprops call
    with np.errstate(invalid="ignore", divide="ignore"):
        for p in GLCM:  # averaged over angles; correlation is undefined (NaN) on a flat patch: 0
            cols.append(np.nan_to_num(graycoprops(glcm, p).mean(1).reshape(n, len(DISTANCES))))
    hist = []
    for p, edges in (("area", AREA_BINS), ("eccentricity", ECC_BINS)):  # shape histogram: nuclei per bin
        b = np.searchsorted(edges, props[p], side="right")  # bin i: edges[i-1] <= v < edges[i]
        hist.append(np.bincount(patch * (len(edges) + 1) + b, minlength=n * (len(edges) + 1)).reshape(n, -1))
    hist = np.concatenate(hist, axis=1).astype(float)
    cols += [hist, hist / np.maximum(count, 1)]
    return np.concatenate(cols, axis=1).astype(np.float32)


def build(input_size: int = 224, min_h: float = 0.03, min_area: int = 8):
    """The encoder module: (n, 3, s, s) float RGB in 0..1 (the declared mean 0 / std 1 leave it so) -> (n, DIM)."""
    import torch
    from torch import nn

    class Morphometry(nn.Module):
        def __init__(self):
            super().__init__()
            self.dim, self.input_size = DIM, int(input_size)
            self.names = NAMES

        @torch.inference_mode()
        def forward(self, x):
            rgb = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            return torch.from_numpy(describe(rgb, min_h, min_area)).to(x.device)

    return Morphometry().eval()
