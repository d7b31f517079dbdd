"""A deterministic, Aperio-SVS-like benchmark slide, made by the project (``slidestream bench make-slide``).

A 40x (0.25 um/px) pyramidal tiled TIFF: levels at downsample 1, 4, 16, 64, 256x256 JPEG tiles (YCbCr
2x2), an Aperio ``ImageDescription`` (``AppMag = 40|MPP = 0.25``) and resolution tags, so cuCIM,
OpenSlide and tifffile read its magnification and pixel size; page 1 is a stripped thumbnail, as in
real SVS files (readers skip it as a level). Content, all from ``seed``:

* tissue: a few irregular smooth-edged blobs plus small fragments, covering ``tissue`` of the slide
  (default 0.62: a 98304x65536 slide then has >= 200 10x tiles of 1024 px with >= 50 % tissue);
  textured with H&E-like procedural tiles (pink stroma, purple nuclei, noise);
* glass: near-white with noise;
* pen: a green arc round the biggest blob, a blue stroke on glass and across an edge, a red stroke on
  tissue (colours the DPW pen filters remove);
* debris: dark specks on the glass (removed by DPW's small-object filter).

Fast and flat in memory: the layout is designed at 1/64 scale; a level-0 tile that is all glass or all
tissue is one of a few pre-encoded bank tiles (its JPEG bytes are reused), and only tiles on a tissue
edge, pen or speck are rendered and encoded, a row of tiles at a time on all cores. Memory: the 1/16
level (for the lower levels) and the rendered tiles' 1/4 images, never a whole level 0 or 1.
"""
from __future__ import annotations

import math
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

MPP, MAG, TILE, G = 0.25, 40, 256, 64  # G: level-0 px per px of the 1/64 design fields
EDGE, PEN_EDGE = 16.0, 24.0  # soft edge widths of tissue and pen, level-0 px
GLASS = np.array([241, 240, 243], np.float32)
INK = {"green": (113, 194, 183), "blue": (45, 95, 200), "red": (205, 45, 65)}
BANK = 24  # distinct pre-encoded tissue tiles (and 8 glass tiles)
DEFAULT_SIZE = (32768, 24576)


def _smooth_noise(rng, shape, sigma):
    from scipy import ndimage

    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return n / (n.std() + 1e-9)


def _sdf(mask):
    """Signed distance in field px, > 0 inside."""
    from scipy import ndimage

    return (ndimage.distance_transform_edt(mask) - ndimage.distance_transform_edt(~mask)).astype(np.float32)


def design(rng, W: int, H: int, tissue: float) -> dict:
    """The layout at 1/G: tissue and pen signed-distance fields and the debris specks (level-0 px)."""
    from PIL import Image, ImageDraw
    from scipy import ndimage

    hf, wf = H // G, W // G
    S = min(hf, wf)
    yy, xx = np.mgrid[0:hf, 0:wf].astype(np.float32)
    f = np.full((hf, wf), -9, np.float32)
    for _ in range(int(rng.integers(2, 5))):  # a few big ellipses, made irregular by smooth noise
        cy, cx, th = rng.uniform(.3, .7) * hf, rng.uniform(.25, .75) * wf, rng.uniform(0, np.pi)
        a, b = rng.uniform(.3, .5) * S, rng.uniform(.2, .35) * S
        u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
        v = (yy - cy) * np.cos(th) - (xx - cx) * np.sin(th)
        f = np.maximum(f, 1 - np.hypot(u / a, v / b))
    f += .25 * _smooth_noise(rng, f.shape, S / 12) + .08 * _smooth_noise(rng, f.shape, S / 40)
    edge = np.minimum.reduce([yy, xx, hf - 1 - yy, wf - 1 - xx])
    f -= 2 * np.clip(1 - edge / (.08 * S), 0, 1) ** 2  # keep tissue off the slide edges
    tis = f > np.quantile(f, 1 - tissue)
    lab, n = ndimage.label(tis)
    sizes = ndimage.sum(tis, lab, range(1, n + 1))
    big = lab == 1 + int(np.argmax(sizes))
    inner = (xx > .08 * wf) & (xx < .92 * wf) & (yy > .08 * hf) & (yy < .92 * hf)
    d_out = ndimage.distance_transform_edt(~tis)

    def pick(cond):
        cand = np.argwhere(cond if cond.any() else inner)
        return cand[rng.integers(len(cand))][::-1].astype(float)  # (x, y)

    for _ in range(int(rng.integers(2, 4))):  # small fragments on the glass
        r = rng.uniform(.015, .03) * S
        cx, cy = pick(inner & (d_out > 3 * r))
        tis |= np.hypot((yy - cy) / r, (xx - cx) / (r * rng.uniform(.6, 1.6))) < 1
    tsdf = _sdf(tis)

    def walk(p, n, turn, step=2.0):
        pts, p, h = [tuple(p)], np.array(p, float), rng.uniform(0, 2 * np.pi)
        for _ in range(n):
            h += rng.normal(0, turn)
            p = p + step * np.array([np.cos(h), np.sin(h)])
            pts.append(tuple(p))
        return pts

    ys, xs = np.nonzero(big)
    cy, cx = ys.mean(), xs.mean()
    ry, rx = min(np.ptp(ys) / 2 + .03 * S, cy - .04 * hf, .96 * hf - cy), min(np.ptp(xs) / 2 + .03 * S, cx - .04 * wf,
                                                                               .96 * wf - cx)
    th = rng.uniform(0, 2 * np.pi) + np.radians(np.arange(0, rng.uniform(120, 200)))
    strokes = [("green", list(zip(cx + rx * np.cos(th), cy + ry * np.sin(th))), rng.uniform(.012, .018)),
               ("blue", walk(pick(inner & (tsdf < -.04 * S)), int(.12 * S), .05), rng.uniform(.01, .015)),
               ("blue", walk(pick(inner & (np.abs(tsdf) < 1)), int(.08 * S), .05), rng.uniform(.01, .015)),
               ("red", walk(pick(inner & (tsdf > .04 * S)), int(.06 * S), .12), rng.uniform(.008, .012))]
    pens = {}
    for c, pts, w in strokes:  # half width w * S field px; sdf from the centre line
        m = Image.new("1", (wf, hf))
        ImageDraw.Draw(m).line([tuple(map(float, p)) for p in pts], fill=1, width=1)
        d = w * S - ndimage.distance_transform_edt(~np.asarray(m)).astype(np.float32)
        pens[c] = np.maximum(pens.get(c, d), d)
    pen = np.logical_or.reduce([p >= 0 for p in pens.values()])
    free = np.argwhere(ndimage.distance_transform_edt(~(tis | pen)) > 4)  # clean glass, field px
    specks = []
    for _ in range(20 + int(80 * W * H / 98304 / 65536)):
        fy, fx = free[rng.integers(len(free))] if len(free) else (hf // 2, wf // 2)
        r = float(np.exp(rng.uniform(np.log(8), np.log(120))))
        y, x = int(fy * G + rng.integers(G)), int(fx * G + rng.integers(G))
        specks.append((y, x, r, rng.uniform((45, 40, 35), (110, 80, 60)).astype(np.float32), rng.uniform(.6, .95)))
    return dict(tsdf=tsdf, pens=pens, specks=specks, dens=np.clip(1.2 + .25 * _smooth_noise(rng, f.shape, S / 50),
                                                                  .7, 1.8))


def _texture(rng) -> np.ndarray:
    """One 256x256 H&E-like tile: pink stroma with smooth variation, purple nuclei, fine noise."""
    from scipy import ndimage

    base = np.array([222, 150, 196], np.float32) + rng.uniform(-8, 8, 3).astype(np.float32)
    var = ndimage.gaussian_filter(rng.standard_normal((TILE, TILE)).astype(np.float32), 12, mode="wrap")
    out = base + (var / (var.std() + 1e-9))[..., None] * np.array([8, 14, 8], np.float32)
    yy, xx = np.mgrid[0:TILE, 0:TILE].astype(np.float32)
    for _ in range(int(rng.integers(40, 90))):
        cy, cx, r = rng.uniform(0, TILE), rng.uniform(0, TILE), rng.uniform(4, 10)
        e = rng.uniform(.6, 1.0)
        y0, y1, x0, x1 = int(max(0, cy - 2 * r)), int(min(TILE, cy + 2 * r)), int(max(0, cx - 2 * r)), int(
            min(TILE, cx + 2 * r))
        d = np.hypot((yy[y0:y1, x0:x1] - cy) / e, xx[y0:y1, x0:x1] - cx)
        a = np.clip(r - d + .5, 0, 1)[..., None] * rng.uniform(.7, .95)
        col = np.array([95, 55, 140], np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
        out[y0:y1, x0:x1] += a * (col - out[y0:y1, x0:x1])
    out += rng.normal(0, 4, out.shape).astype(np.float32)
    return out


def _glass(rng) -> np.ndarray:
    return GLASS + rng.normal(0, 1.5, (TILE, TILE, 3)).astype(np.float32)


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(a + .5, 0, 255).astype(np.uint8)


def _box(a: np.ndarray, k: int) -> np.ndarray:
    """k x k area average of an (h, w, 3) uint8 image (h, w multiples of k)."""
    h, w = a.shape[0] // k, a.shape[1] // k
    s = a.reshape(h, k, w, k, 3).sum((1, 3), dtype=np.uint32)
    return ((s + k * k // 2) // (k * k)).astype(np.uint8)


def _interp_matrix() -> np.ndarray:
    """(TILE, 6) weights: bilinear sample of a 6-px field window at a tile's pixel centres (G = 64)."""
    m = np.zeros((TILE, 6), np.float32)
    for y in range(TILE):
        c = (y + .5) / G - .5  # field coordinate relative to the tile's first field px
        i = math.floor(c)
        m[y, i + 1], m[y, i + 2] = 1 - (c - i), c - i
    return m


def _windows(field: np.ndarray) -> np.ndarray:
    """(nty, ntx, 6, 6) field windows under each level-0 tile (edge-padded)."""
    p = np.pad(field, 1, mode="edge")
    p = np.pad(p, ((0, 2), (0, 2)), mode="edge")
    return np.lib.stride_tricks.sliding_window_view(p, (6, 6))[::TILE // G, ::TILE // G]


def make_slide(out: str | os.PathLike, size: tuple[int, int] = DEFAULT_SIZE, seed: int = 0, quality: int = 80,
               tissue: float = 0.62, workers: int | None = None) -> dict:
    """Write the benchmark slide to ``out``; returns a summary (size, bytes, seconds, tile counts)."""
    import imagecodecs
    import tifffile

    from .errors import ConfigError

    W, H = (int(v) for v in size)
    if W % 1024 or H % 1024 or W < 4096 or H < 4096:
        raise ConfigError(f"bench slide size {W}x{H}: width and height must be multiples of 1024, at least 4096")
    if not 0.05 <= tissue <= 0.9:
        raise ConfigError(f"bench slide tissue fraction {tissue}: use 0.05 to 0.9")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    lay = design(rng, W, H, tissue)
    tex = [_texture(rng) for _ in range(BANK)]
    gla = [_glass(rng) for _ in range(8)]
    nty, ntx = H // TILE, W // TILE
    tex_k, gla_k = rng.integers(0, BANK, (nty, ntx)), rng.integers(0, len(gla), (nty, ntx))
    ink_od = {c: -np.log(np.array(v, np.float32) / 242.0) for c, v in INK.items()}

    def enc(a: np.ndarray) -> bytes:
        if a.shape[:2] != (TILE, TILE):  # edge tiles of the lower levels: pad to a whole tile
            a = np.pad(a, ((0, TILE - a.shape[0]), (0, TILE - a.shape[1]), (0, 0)), mode="edge")
        return imagecodecs.jpeg8_encode(a, level=quality, colorspace="rgb", outcolorspace="ycbcr", subsampling=(2, 2))

    tex_u8, gla_u8 = [_u8(t) for t in tex], [_u8(g) for g in gla]
    tex_b, gla_b = [enc(t) for t in tex_u8], [enc(g) for g in gla_u8]
    tex_4, gla_4 = [_box(t, 4) for t in tex_u8], [_box(g, 4) for g in gla_u8]
    tex_16, gla_16 = [_box(t, 16) for t in tex_u8], [_box(g, 16) for g in gla_u8]

    # classify every level-0 tile from the design fields
    M = _interp_matrix()
    tw = _windows(lay["tsdf"])
    tmin, tmax = tw.min((2, 3)), tw.max((2, 3))
    full = tmin * (G / EDGE) >= .5  # alpha 1 on every pixel
    empty = tmax * (G / EDGE) <= -.5
    pw = {c: _windows(p) for c, p in lay["pens"].items()}
    penned = {c: w.max((2, 3)) * (G / PEN_EDGE) > -.5 for c, w in pw.items()}
    dw = _windows(lay["dens"])
    speck_at: dict[tuple[int, int], list] = {}
    for s in lay["specks"]:
        y, x, r = s[0], s[1], s[2]
        for ty in range(max(0, int((y - 2 * r) // TILE)), min(nty, int((y + 2 * r) // TILE) + 1)):
            for tx in range(max(0, int((x - 2 * r) // TILE)), min(ntx, int((x + 2 * r) // TILE) + 1)):
                speck_at.setdefault((ty, tx), []).append(s)
    any_pen = np.logical_or.reduce(list(penned.values()))
    rendered = ~(full | empty) | any_pen
    for ty, tx in speck_at:
        rendered[ty, tx] = True
    yy, xx = np.mgrid[0:TILE, 0:TILE].astype(np.float32)

    def render(ty: int, tx: int) -> np.ndarray:
        out = gla[gla_k[ty, tx]].copy()
        if not empty[ty, tx]:
            a = np.clip(M @ tw[ty, tx] @ M.T * (G / EDGE) + .5, 0, 1)[..., None]
            out += a * (tex[tex_k[ty, tx]] - out)
        for y, x, r, col, op in speck_at.get((ty, tx), ()):
            d = np.hypot(yy + ty * TILE - y, xx + tx * TILE - x)
            ang = np.arctan2(yy + ty * TILE - y, xx + tx * TILE - x)
            rr = r * (1 + .25 * np.sin(3 * ang + r) + .15 * np.cos(5 * ang))
            out += (np.clip((rr - d) / 2, 0, 1) * op)[..., None] * (col - out)
        for c, p in penned.items():
            if p[ty, tx]:
                al = np.clip(M @ pw[c][ty, tx] @ M.T * (G / PEN_EDGE) + .5, 0, 1) * (M @ dw[ty, tx] @ M.T)
                out *= np.exp(-al[..., None] * ink_od[c])
        return _u8(out)

    lvl16 = np.empty((H // 16, W // 16, 3), np.uint8)  # 1/16 level, filled while level 0 is written
    small4: dict[tuple[int, int], np.ndarray] = {}  # rendered tiles' 1/4 images, for level 1

    def tile0(ty: int, tx: int) -> bytes:
        if rendered[ty, tx]:
            a = render(ty, tx)
            small4[ty, tx] = _box(a, 4)
            lvl16[ty * 16:(ty + 1) * 16, tx * 16:(tx + 1) * 16] = _box(a, 16)
            return enc(a)
        if full[ty, tx]:
            lvl16[ty * 16:(ty + 1) * 16, tx * 16:(tx + 1) * 16] = tex_16[tex_k[ty, tx]]
            return tex_b[tex_k[ty, tx]]
        lvl16[ty * 16:(ty + 1) * 16, tx * 16:(tx + 1) * 16] = gla_16[gla_k[ty, tx]]
        return gla_b[gla_k[ty, tx]]

    def small(ty: int, tx: int) -> np.ndarray:
        if rendered[ty, tx]:
            return small4[ty, tx]
        return tex_4[tex_k[ty, tx]] if full[ty, tx] else gla_4[gla_k[ty, tx]]

    def tile1(uy: int, ux: int) -> bytes:
        a = np.empty((TILE, TILE, 3), np.uint8)
        for i in range(4):
            for j in range(4):
                a[i * 64:(i + 1) * 64, j * 64:(j + 1) * 64] = small(uy * 4 + i, ux * 4 + j)
        return enc(a)

    pool = ThreadPoolExecutor(workers or os.cpu_count() or 1)

    def rows(n_rows: int, n_cols: int, fn):
        """Tiles in order, a row at a time on the pool, one row ahead; bounded memory."""
        ahead: deque = deque()
        for r in range(n_rows):
            ahead.append([pool.submit(fn, r, c) for c in range(n_cols)])
            if len(ahead) > 1:
                yield from (f.result() for f in ahead.popleft())
        while ahead:
            yield from (f.result() for f in ahead.popleft())

    def array_tiles(a: np.ndarray):
        return rows(-(-a.shape[0] // TILE), -(-a.shape[1] // TILE),
                    lambda r, c: enc(a[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE]))

    head = "Aperio Image Library v12.0.0\r\n"
    name = Path(out).stem
    opts = dict(tile=(TILE, TILE), compression="jpeg", photometric="ycbcr", subsampling=(2, 2), metadata=None,
                software=False, resolutionunit="CENTIMETER", dtype=np.uint8)
    try:
        with tifffile.TiffWriter(out, bigtiff=W * H * 3 > 2 ** 31) as tw_:
            tw_.write(rows(nty, ntx, tile0), shape=(H, W, 3), resolution=(1e4 / MPP,) * 2,
                      description=f"{head}{W}x{H} [0,0 {W}x{H}] ({TILE}x{TILE}) JPEG/RGB Q={quality}|AppMag = {MAG}"
                                  f"|MPP = {MPP}|Filename = {name}|Title = slidestream benchmark slide, seed {seed}",
                      **opts)
            th = _box(lvl16, 4)  # page 1: a stripped thumbnail, as Aperio writes it (readers skip it as a level)
            tw_.write(th, description=f"{head}{W}x{H} -> {th.shape[1]}x{th.shape[0]} - ", rowsperstrip=16,
                      compression="jpeg", photometric="rgb", metadata=None, software=False)
            tw_.write(rows(nty // 4, ntx // 4, tile1), shape=(H // 4, W // 4, 3), resolution=(1e4 / (MPP * 4),) * 2,
                      description=f"{head}{W}x{H} [0,0 {W}x{H}] ({TILE}x{TILE}) -> {W // 4}x{H // 4} "
                                  f"JPEG/RGB Q={quality}", **opts)
            small4.clear()
            for ds, lv in ((16, lvl16), (64, _box(lvl16, 4))):
                tw_.write(array_tiles(lv), shape=lv.shape, resolution=(1e4 / (MPP * ds),) * 2,
                          description=f"{head}{W}x{H} [0,0 {W}x{H}] ({TILE}x{TILE}) -> {lv.shape[1]}x{lv.shape[0]} "
                                      f"JPEG/RGB Q={quality}", **opts)
    finally:
        pool.shutdown()
    # design-based count of 10x tiles (1024 px at 10x = 4096 level-0 px) with >= 50 % pen-free tissue
    pen = np.logical_or.reduce([p >= 0 for p in lay["pens"].values()])
    tis = (lay["tsdf"] >= 0) & ~pen
    k = 4096 // G
    cand = tis[:tis.shape[0] // k * k, :tis.shape[1] // k * k].reshape(tis.shape[0] // k, k, -1, k).mean((1, 3))
    return {"path": str(out), "size": [W, H], "seed": seed, "bytes": os.path.getsize(out),
            "seconds": round(time.perf_counter() - t0, 2), "tiles": int(nty * ntx),
            "rendered_tiles": int(rendered.sum()), "tissue_fraction": round(float((lay["tsdf"] >= 0).mean()), 3),
            "tiles_10x_half_tissue": int((cand >= .5).sum())}


def cached_slide(size: tuple[int, int] = DEFAULT_SIZE, seed: int = 0) -> Path:
    """The benchmark slide of this size and seed in the user's cache folder, made on first use."""
    root = Path(os.environ.get("SLIDESTREAM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "slidestream")
    path = root / f"bench-{size[0]}x{size[1]}-seed{seed}.svs"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        make_slide(tmp, size, seed)
        os.replace(tmp, path)
    return path
