"""Synthetic H&E-like whole-slide images and cohorts, for tests, benchmarks and the demo.

``make_slide`` writes a pyramidal tiled-JPEG TIFF with an Aperio-style ImageDescription (cuCIM, OpenSlide
and tifffile all read it): pink/purple tissue blobs on near-white glass. The two classes differ only in
nuclear *texture*, not in colour: both have the same nuclear area fraction (so the same mean colour), made
of two nuclear shapes,

* small round nuclei (radius ~4 um), IDH-mutant-like,
* large elongated nuclei (semi-axes ~10 x 4 um), IDH-wildtype-like,

which a CNN sees at 10x (1 um/px: 8 px round vs 20 x 8 px elongated nuclei).

* ``subtle=True`` (cohorts, ``make_cohort``, the demo): every slide mixes both shapes; its fraction of round
  nuclei comes from a per-patient phenotype ``z ~ N(+-SIGNAL, 1)`` (``round_fraction``), so the classes
  overlap and even a perfect reader of the slides reaches a patient AUC of ~0.91, not 1.0. Ages are drawn
  per class from the paper's Table 5 (``draw_patients``; age-only AUC ~0.73, as in its Table 3).
* ``subtle=False`` (default of ``render``/``make_slide``/``make_store``, for unit tests that need a signal a
  tiny model learns in seconds): mutant slides have only round nuclei, wildtype only elongated ones.

Stain colour, nuclear darkness and tissue layout are jittered per slide from the same distribution for both
classes. Everything is deterministic from ``seed``. A 4096 x 3072 slide takes well under a second.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

GLASS = np.array([242, 241, 244], np.float32)
AGE = {1: (44.2, 12.7), 0: (55.5, 13.3)}  # Liu et al. 2020, Table 5: mean, SD per class (1 = mutant)
SIGNAL = 0.95  # cohort slides: class means +-SIGNAL of the per-patient phenotype (sd 1), see round_fraction
NUC_FRACTION = 0.16  # nuclear area fraction of tissue, the same for both classes
INK = {"green": (113, 194, 183), "blue": (45, 95, 200), "red": (205, 45, 65)}


def round_fraction(label: int, rng: np.random.Generator, signal: float = SIGNAL) -> float:
    """A patient's fraction of small round (mutant-like) nuclei: ``sigmoid(2 z)`` with a per-patient
    phenotype ``z ~ N(+signal, 1)`` for mutant and ``N(-signal, 1)`` for wildtype. The classes overlap: a
    classifier that read ``z`` exactly would reach a patient AUC of ``Phi(2 signal / sqrt(2))`` (0.91 at 0.95)."""
    z = rng.normal(signal if label == 1 else -signal, 1.0)
    return float(1.0 / (1.0 + np.exp(-2.0 * z)))


def _sprites(rng: np.random.Generator, label: int, px_per_um: float, k: int = 16,
             round_frac: float | None = None) -> list[np.ndarray]:
    """k soft nucleus masks (float32 0..1): the class's shape, or with ``round_frac`` that fraction of small round
    nuclei and the rest large elongated ones."""
    out = []
    for i in range(k):
        if (label == 1) if round_frac is None else i < round(round_frac * k):
            a = b = rng.uniform(3.2, 4.8) * px_per_um
        else:
            a, b = rng.uniform(8.5, 11.5) * px_per_um, rng.uniform(3.2, 4.5) * px_per_um
        t = rng.uniform(0, np.pi)
        r = int(np.ceil(max(a, b))) + 2
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
        u = (xx * np.cos(t) + yy * np.sin(t)) / a
        v = (-xx * np.sin(t) + yy * np.cos(t)) / b
        d = np.sqrt(u * u + v * v)
        edge = 1.5 / max(min(a, b), 1.0)  # ~1.5 px soft rim
        m = np.clip((1 - d) / edge, 0, 1) * rng.uniform(0.75, 1.0)
        out.append(m.astype(np.float32))
    return out


def _tissue(rng: np.random.Generator, hs: int, ws: int) -> np.ndarray:
    """Low-resolution tissue mask (float32 0..1): a few irregular blobs."""
    yy, xx = np.mgrid[0:hs, 0:ws].astype(np.float32)
    field = np.zeros((hs, ws), np.float32)
    for _ in range(rng.integers(2, 5)):
        cy, cx = rng.uniform(0.25, 0.75) * hs, rng.uniform(0.2, 0.8) * ws
        ry, rx = rng.uniform(0.18, 0.35) * hs, rng.uniform(0.15, 0.3) * ws
        ang = np.arctan2(yy - cy, xx - cx)
        wobble = 1 + 0.18 * np.sin(3 * ang + rng.uniform(0, 6.3)) + 0.1 * np.sin(5 * ang + rng.uniform(0, 6.3))
        d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) / wobble
        field = np.maximum(field, np.clip((1.0 - d) * 6, 0, 1))
    return field


def render(size: tuple[int, int], label: int, seed: int = 0, mpp: float = 0.25, pen: bool = False,
           full: bool = False, subtle: bool = False) -> np.ndarray:
    """The level-0 RGB image (h, w, 3) uint8 of a synthetic slide (``full``: tissue everywhere, no glass;
    ``subtle``: the overlapping per-patient mix of nuclear shapes of ``round_fraction`` instead of the
    textbook one-shape-per-class)."""
    w, h = size
    rng = np.random.default_rng([seed, 7919 + int(label)])
    g = 16  # design grid: level-0 px per low-res px
    hs, ws = -(-h // g), -(-w // g)
    low = np.ones((hs, ws), np.float32) if full else _tissue(rng, hs, ws)
    alpha = np.asarray(Image.fromarray(low).resize((w, h), Image.BILINEAR), np.float32)

    # nuclei: stamp soft sprites at random tissue positions until the area fraction is reached
    px_per_um = 1.0 / mpp
    sprites = _sprites(rng, label, px_per_um, 32, round_fraction(label, rng)) if subtle else _sprites(rng, label, px_per_um)
    mean_area = float(np.mean([s.sum() for s in sprites]))
    n = int(NUC_FRACTION * float(alpha.sum()) / mean_area)
    nuc = np.zeros((h, w), np.float32)
    cand = np.stack([rng.uniform(0, h, 3 * n + 16), rng.uniform(0, w, 3 * n + 16)], 1).astype(int)
    keep = low[cand[:, 0] // g, cand[:, 1] // g] > 0.5
    which = rng.integers(0, len(sprites), len(cand))
    for (y, x), k in zip(cand[keep][:n], which[keep][:n]):
        s = sprites[k]
        r = s.shape[0] // 2
        y0, x0, y1, x1 = max(y - r, 0), max(x - r, 0), min(y + r + 1, h), min(x + r + 1, w)
        sub = s[y0 - (y - r): y1 - (y - r), x0 - (x - r): x1 - (x - r)]
        np.maximum(nuc[y0:y1, x0:x1], sub, out=nuc[y0:y1, x0:x1])

    # stain colours (same distribution for both classes), fine stromal texture from a tiled noise patch
    eosin = (np.array([236, 150, 196]) + rng.normal(0, 8, 3)).astype(np.float32)
    hema = (np.array([88, 52, 140]) + rng.normal(0, 8, 3)).astype(np.float32)
    tex = rng.normal(0, 1, (256, 256)).astype(np.float32)
    shade = np.asarray(Image.fromarray(rng.normal(0, 1, (hs, ws)).astype(np.float32)).resize((w, h), Image.BILINEAR))
    offset = rng.normal(0, 2, 3).astype(np.float32)
    ink = None
    if pen:
        pen_img = Image.new("L", (ws, hs), 0)
        draw = ImageDraw.Draw(pen_img)
        color = np.array(INK[list(INK)[int(rng.integers(0, 3))]], np.float32)
        draw.line([(rng.uniform(0, ws), rng.uniform(0, hs)) for _ in range(4)], fill=255, width=max(2, ws // 60))
        ink = np.asarray(pen_img.resize((w, h), Image.BILINEAR), np.float32) / 255 * 0.8
    out = np.empty((h, w, 3), np.uint8)
    for y0 in range(0, h, 256):  # compose in strips: small temporaries, no GB of page faults
        y1 = min(y0 + 256, h)
        t = np.tile(tex[: y1 - y0], (1, -(-w // 256)))[:, :w, None]
        stroma = eosin * (1 + 0.04 * shade[y0:y1, :, None] + 0.05 * t)
        cell = stroma + nuc[y0:y1, :, None] * (hema - eosin)
        a = alpha[y0:y1, :, None]
        rgb = GLASS * (1 - a) + cell * a + offset
        if ink is not None:
            m = ink[y0:y1, :, None]
            rgb = rgb * (1 - m) + color * m
        out[y0:y1] = np.clip(rgb, 0, 255)
    return out


def make_slide(path: str | Path, size: tuple[int, int] = (4096, 3072), label: int = 0, seed: int = 0,
               mpp: float = 0.25, objective: float | None = None, levels: tuple[int, ...] = (1, 4, 16), tile: int = 256,
               pen: bool = False, subtle: bool = False) -> Path:
    """Write a synthetic pyramidal slide (Aperio-style tiled JPEG TIFF) to ``path``; returns the path. ``objective``
    (AppMag) defaults to the one ``mpp`` gives (10x = 1 µm/px): far apart, the slide is refused."""
    import tifffile

    objective = objective or 10 / mpp

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    img = render(size, label, seed, mpp, pen, subtle=subtle)
    head = "Aperio Image Library v12.0.0\r\n"
    opts = dict(tile=(tile, tile), compression="jpeg", photometric="rgb", subsampling=(2, 2),
                compressionargs={"level": 85, "outcolorspace": "ycbcr"}, metadata=None, software=False,
                resolutionunit="CENTIMETER")
    desc = (f"{head}{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=85|AppMag = {objective:g}|MPP = {mpp:g}"
            f"|Filename = {path.stem}|Title = slidestream synthetic slide, label {label}, seed {seed}")
    base = Image.fromarray(img)
    with tifffile.TiffWriter(path, bigtiff=w * h > 2 ** 31) as tw:
        for i, ds in enumerate(levels):
            lv = img if ds == 1 else np.asarray(base.reduce(int(ds)))
            d = desc if i == 0 else f"{head}{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) -> {lv.shape[1]}x{lv.shape[0]} JPEG/RGB Q=85"
            tw.write(lv, description=d, resolution=(1e4 / (mpp * ds),) * 2, **opts)
    return path


def draw_patients(n_patients: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels (half mutant, half wildtype, shuffled) and ages for ``n_patients``: ages drawn per class from the
    paper's Table 5 (``AGE``), clipped to 18..90 years. An age-only classifier scores AUC ~0.73 on them (Table 3)."""
    rng = np.random.default_rng(seed)
    labels = np.array([1, 0] * (n_patients // 2) + [1] * (n_patients % 2))
    rng.shuffle(labels)
    ages = np.array([np.clip(rng.normal(*AGE[int(lab)]), 18, 90) for lab in labels], float)
    return labels, ages


def make_cohort(out_dir: str | Path, n_patients: int = 24, seed: int = 0, size: tuple[int, int] = (4096, 3072),
                subtle: bool = True, **slide_kw) -> Path:
    """Write ``n_patients`` slides (one per patient; labels and ages of ``draw_patients``) and ``cohort.csv``
    (slide_path,patient_id,label,age). ``subtle`` (default): the classes differ by an overlapping per-patient mix
    of nuclear shapes (``round_fraction``), so image AUCs are high but not perfect. Returns the csv."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels, ages = draw_patients(n_patients, seed)
    rows = []
    for i, (lab, age) in enumerate(zip(labels, ages)):
        pid = f"P{i:03d}"
        slide = make_slide(out / f"{pid}.svs", size=size, label=int(lab), seed=seed * 100003 + i, subtle=subtle,
                           **slide_kw)
        # the file name: read_cohort resolves it against the CSV's folder (a relative out_dir used to be doubled)
        rows.append({"slide_path": Path(slide).name, "patient_id": pid, "label": int(lab), "age": round(float(age), 1)})
    csv_path = out / "cohort.csv"
    with open(csv_path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=["slide_path", "patient_id", "label", "age"])
        wr.writeheader()
        wr.writerows(rows)
    return csv_path


def make_store(path: str | Path, n_patients: int = 16, per_patient: int = 16, patch: int = 32, seed: int = 0,
               chunk: int = 16, shuffle_labels: bool = False):
    """A small patch store cut straight from rendered 10x images (no slide files, no extraction): for unit
    tests of splitting, loading and training. Returns the open PatchStore (``r+``)."""
    from . import config
    from .store import PatchStore

    rng = np.random.default_rng(seed)
    labels = np.array([1, 0] * (n_patients // 2) + [1] * (n_patients % 2))
    rng.shuffle(labels)
    train_labels = rng.permutation(labels) if shuffle_labels else labels
    side = int(np.ceil(np.sqrt(per_patient))) * patch
    pipe = config.with_defaults({"name": "synthetic-store", "magnification": 10, "patches": {"size": patch},
                                 "store": {"codec": "zstd", "level": 1, "chunk": chunk}})
    st = PatchStore.create(path, patch, pipe["store"], {"extraction_hash": config.extraction_hash(pipe), "pipeline": pipe})
    patches, meta = [], {"slide_id": [], "patient_id": [], "label": [], "age": []}
    for i, lab in enumerate(labels):
        img = render((side, side), int(lab), seed=seed * 7919 + i, mpp=1.0, full=True)
        tiles = [img[y:y + patch, x:x + patch] for y in range(0, side, patch) for x in range(0, side, patch)]
        mu, sd = AGE[int(lab)]
        age = float(rng.normal(mu, sd))
        patches += tiles[:per_patient]
        for k, v in (("slide_id", f"P{i:03d}"), ("patient_id", f"P{i:03d}"), ("label", int(train_labels[i])), ("age", age)):
            meta[k] += [v] * per_patient
    st.append("all", np.stack(patches), {k: np.asarray(v) for k, v in meta.items()}, {"status": "done"})
    return st
