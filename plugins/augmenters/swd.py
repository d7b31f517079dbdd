"""Multi-scale sliced Wasserstein distance (SWD) between two sets of images (Karras et al. 2018, sec. 5).

A quality metric that needs no downloaded network. For each level of a Laplacian pyramid (from the full
resolution down to 16x16): take 128 random 7x7 neighbourhoods per image as descriptors, normalize each
set's descriptors per colour channel (zero mean, unit std), and estimate the Wasserstein-1 distance of
the two descriptor clouds by projecting them onto 128 random unit directions, sorting, and averaging
the absolute differences, repeated 4 times with fresh directions. Values are reported x 1e3, like the
paper's tables; lower is better, and the finest levels measure texture, the coarse ones colour layout.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

_K1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: torch.Tensor) -> torch.Tensor:
    """5x5 binomial filter (the Gaussian of the Laplacian pyramid), mirror borders, per channel."""
    c = x.shape[1]
    k = (_K1[:, None] * _K1[None, :]).to(x)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k, groups=c)


def _down(x: torch.Tensor) -> torch.Tensor:
    return _blur(x)[:, :, ::2, ::2]


def _up(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    y = torch.zeros(n, c, h * 2, w * 2, dtype=x.dtype, device=x.device)
    y[:, :, ::2, ::2] = x
    return _blur(y) * 4.0


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels, finest first; the last level is the low-pass residual."""
    out = []
    for _ in range(levels - 1):
        low = _down(x)
        out.append(x - _up(low))
        x = low
    out.append(x)
    return out


def _descriptors(level: torch.Tensor, per_image: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """``per_image`` random ``size`` x ``size`` neighbourhoods of each image: (n * per_image, c, size, size)."""
    n, c, h, w = level.shape
    ys = torch.randint(0, h - size + 1, (n, per_image), generator=gen).to(level.device)
    xs = torch.randint(0, w - size + 1, (n, per_image), generator=gen).to(level.device)
    d = torch.arange(size, device=level.device)
    rows = (ys[..., None] + d)[..., :, None].expand(n, per_image, size, size)  # (n, p, size, size)
    cols = (xs[..., None] + d)[..., None, :].expand(n, per_image, size, size)
    img = torch.arange(n, device=level.device)[:, None, None, None].expand_as(rows)
    patches = level.permute(0, 2, 3, 1)[img, rows, cols]  # (n, p, size, size, c)
    return patches.permute(0, 1, 4, 2, 3).reshape(n * per_image, c, size, size)


def _normalize(desc: torch.Tensor) -> torch.Tensor:
    """Per-channel zero mean and unit std over the whole set, then flattened (Karras' ``finalize``)."""
    desc = desc - desc.mean(dim=(0, 2, 3), keepdim=True)
    desc = desc / desc.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    return desc.reshape(desc.shape[0], -1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, gen: torch.Generator, repeats: int = 4,
                       directions: int = 128) -> float:
    """Mean over ``repeats`` of the average 1-D Wasserstein distance along ``directions`` random unit vectors."""
    out = []
    for _ in range(repeats):
        dirs = torch.randn(a.shape[1], directions, generator=gen).to(a)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        pa, _ = torch.sort((a @ dirs).T.contiguous(), dim=1)  # sorting along rows is much faster on CPU
        pb, _ = torch.sort((b @ dirs).T.contiguous(), dim=1)
        out.append((pa - pb).abs().mean().item())
    return float(np.mean(out))


def level_resolutions(resolution: int, min_resolution: int = 16) -> list[int]:
    res = [resolution]
    while res[-1] // 2 >= min_resolution:
        res.append(res[-1] // 2)
    return res


@torch.no_grad()
def swd(a: Any, b: Any, seed: int = 0, per_image: int = 128, size: int = 7, repeats: int = 4, directions: int = 128,
        device: str | torch.device = "cpu", batch: int = 256) -> dict[str, Any]:
    """SWD (x 1e3) between uint8 image sets ``a`` and ``b`` ((n, h, w, 3), same h and w; the larger set is cut
    to the smaller's size). Returns ``{"levels": {res: swd}, "mean": ..., "n_images": n}``."""
    n = min(len(a), len(b))
    if n < 2:
        raise ValueError("swd needs at least 2 images per set")
    if tuple(a.shape[1:]) != tuple(b.shape[1:]):
        raise ValueError(f"swd: image shapes differ, {tuple(a.shape[1:])} vs {tuple(b.shape[1:])}")
    resolutions = level_resolutions(int(a.shape[1]), min(16, int(a.shape[1])))
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(int(seed))
    sets = []
    for images in (a, b):
        per_level: list[list[torch.Tensor]] = [[] for _ in resolutions]
        for i in range(0, n, batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i:min(i + batch, n)])).to(dev)
            x = x.permute(0, 3, 1, 2).float()
            for j, level in enumerate(laplacian_pyramid(x, len(resolutions))):
                per_level[j].append(_descriptors(level, per_image, min(size, level.shape[-1]), gen))
        sets.append([_normalize(torch.cat(d)) for d in per_level])
    levels = {str(r): 1e3 * sliced_wasserstein(da, db, gen, repeats, directions)
              for r, da, db in zip(resolutions, *sets)}
    return {"levels": levels, "mean": float(np.mean(list(levels.values()))), "n_images": int(n), "units": "x1e3"}
