"""PG-GAN networks (Karras et al. 2018), re-implemented in PyTorch from the spec ``shared/reference/pggan.md``.

Both networks are built once for the final resolution and run at any level of detail ``lod``:
``lod = 0`` is the final resolution, ``lod = k`` is ``final / 2**k``; a fractional ``lod`` fades the finer
level in (``alpha = 1 - frac(lod)``), exactly as the spec's "Growing" section describes.

Spec points and where they are:

* equalized learning rate: :class:`EqConv` / :class:`EqLinear` (weights N(0, 1), scaled at run time by
  ``gain / sqrt(fan_in)``, biases zero);
* pixel norm ``x / sqrt(mean_c x^2 + 1e-8)``: :func:`pixel_norm`;
* minibatch stddev (group 4, biased std + 1e-8, one feature map): :func:`minibatch_stddev`;
* fused upsample+conv and conv+avgpool (same results, fewer FLOPs): ``EqConv(..., mode="up"|"down")``;
* feature maps ``nf(s) = min(fmap_base / 2**(s * fmap_decay), fmap_max)``: :func:`nf`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


def nf(stage: int, fmap_base: int = 8192, fmap_decay: float = 1.0, fmap_max: int = 512) -> int:
    """Feature maps of a stage (spec: ``min(8192 / 2**s, 512)``); stage ``r - 1`` serves resolution ``2**r``."""
    return int(min(fmap_base / (2.0 ** (stage * fmap_decay)), fmap_max))


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalize each pixel's feature vector to unit average square (spec: PixelNorm)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Append the group standard deviation, averaged over C, H, W, as one extra feature map.

    Spec: ``G = min(4, N)``; sample ``i`` is in group ``i mod N/G``; biased std with 1e-8 inside the sqrt.
    When ``N`` is not a multiple of ``G`` the largest group size <= G that divides ``N`` is used.
    """
    n, c, h, w = x.shape
    g = min(group_size, n)
    while n % g:
        g -= 1
    y = x.float().reshape(g, n // g, c, h, w)
    y = y - y.mean(dim=0, keepdim=True)
    y = torch.sqrt(y.pow(2).mean(dim=0) + 1e-8)  # (n/g, c, h, w)
    y = y.mean(dim=(1, 2, 3)).to(x.dtype)  # (n/g,)
    y = y.repeat(g).reshape(n, 1, 1, 1).expand(n, 1, h, w)
    return torch.cat([x, y], dim=1)


class EqLinear(nn.Module):
    """Dense layer with equalized learning rate (spec: ``use_wscale``)."""

    def __init__(self, fin: int, fout: int, gain: float = SQRT2):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fout, fin))
        self.bias = nn.Parameter(torch.zeros(fout))
        self.scale = gain / math.sqrt(fin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class EqConv(nn.Module):
    """k x k convolution with equalized learning rate; ``mode`` fuses a 2x resampling into it.

    * ``"up"``: nearest 2x upsample then conv3x3, done as a stride-2 transposed conv with the 3x3 kernel
      padded to 4x4 and summed over its four shifts (spec: fan_in stays ``9 * C_in``);
    * ``"down"``: conv3x3 then 2x2 average pooling, done as a stride-2 conv with the kernel padded to 4x4,
      summed over its four shifts and divided by 4.
    """

    def __init__(self, cin: int, cout: int, k: int = 3, gain: float = SQRT2, mode: str = "same"):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = gain / math.sqrt(cin * k * k)
        self.mode = mode
        self.k = k

    @staticmethod
    def _four_shifts(w: torch.Tensor) -> torch.Tensor:
        w = F.pad(w, (1, 1, 1, 1))
        return w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.scale
        if self.mode == "up":
            # a transposed conv applies the kernel flipped relative to conv2d's cross-correlation
            w = self._four_shifts(w.flip(2, 3).transpose(0, 1))  # (cin, cout, 4, 4)
            return F.conv_transpose2d(x, w, self.bias, stride=2, padding=1)
        if self.mode == "down":
            return F.conv2d(x, self._four_shifts(w) * 0.25, self.bias, stride=2, padding=1)
        return F.conv2d(x, w, self.bias, padding=self.k // 2)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def upscale2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    return x if factor == 1 else F.interpolate(x, scale_factor=factor, mode="nearest")


def downscale2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Box filter (the spec's 2x2 mipmap, applied log2(factor) times)."""
    return x if factor == 1 else F.avg_pool2d(x, factor)


class Generator(nn.Module):
    """z (n, latent) -> images (n, 3, 2**(R - floor(lod)), ...) in about [-1, 1] (no tanh, per spec)."""

    def __init__(self, resolution: int = 256, fmap_base: int = 8192, fmap_decay: float = 1.0, fmap_max: int = 512,
                 latent_size: int | None = None, channels: int = 3):
        super().__init__()
        self.R = int(math.log2(resolution))
        assert 2 ** self.R == resolution and resolution >= 4, "resolution must be a power of two >= 4"
        f = lambda s: nf(s, fmap_base, fmap_decay, fmap_max)  # noqa: E731
        self.latent_size = latent_size or f(0)
        self.dense = EqLinear(self.latent_size, f(1) * 16, gain=SQRT2 / 4)
        self.conv4 = EqConv(f(1), f(1))
        blocks, to_rgb = [], [EqConv(f(1), channels, k=1, gain=1.0)]
        for r in range(3, self.R + 1):
            blocks.append(nn.ModuleList([EqConv(f(r - 2), f(r - 1), mode="up"), EqConv(f(r - 1), f(r - 1))]))
            to_rgb.append(EqConv(f(r - 1), channels, k=1, gain=1.0))
        self.blocks = nn.ModuleList(blocks)
        self.to_rgb = nn.ModuleList(to_rgb)

    def forward(self, z: torch.Tensor, lod: float = 0.0) -> torch.Tensor:
        level, alpha = split_lod(self.R, lod)
        return self.synthesize(z, level, torch.tensor(alpha, device=z.device, dtype=torch.float32))

    def synthesize(self, z: torch.Tensor, level: int, alpha: torch.Tensor) -> torch.Tensor:
        """``level`` = index of the finest block (0 = 4x4); ``alpha`` a 0-d tensor (a graph input, so a
        compiled generator is not recompiled for every fade step)."""
        x = pixel_norm(z)
        x = self.dense(x).reshape(z.shape[0], -1, 4, 4)
        x = pixel_norm(lrelu(x))
        x = pixel_norm(lrelu(self.conv4(x)))
        prev = x
        for i in range(level):
            prev = x
            up, conv = self.blocks[i]
            x = pixel_norm(lrelu(conv(pixel_norm(lrelu(up(x))))))
        img = self.to_rgb[level](x)
        if level > 0:  # fade-in; lerp with weight 1 returns img exactly
            # under CUDA autocast the nearest upscale runs in float32 while the convolutions give bfloat16
            img = torch.lerp(upscale2d(self.to_rgb[level - 1](prev)).to(img.dtype), img, alpha.to(img.dtype))
        return img


class Discriminator(nn.Module):
    """images (n, 3, 2**(R - floor(lod)), ...) -> critic scores (n,). No normalization anywhere (spec)."""

    def __init__(self, resolution: int = 256, fmap_base: int = 8192, fmap_decay: float = 1.0, fmap_max: int = 512,
                 channels: int = 3, mbstd_group_size: int = 4):
        super().__init__()
        self.R = int(math.log2(resolution))
        f = lambda s: nf(s, fmap_base, fmap_decay, fmap_max)  # noqa: E731
        self.mbstd_group_size = mbstd_group_size
        from_rgb, blocks = [EqConv(channels, f(1), k=1)], []
        for r in range(3, self.R + 1):
            from_rgb.append(EqConv(channels, f(r - 1), k=1))
            blocks.append(nn.ModuleList([EqConv(f(r - 1), f(r - 1)), EqConv(f(r - 1), f(r - 2), mode="down")]))
        self.from_rgb = nn.ModuleList(from_rgb)
        self.blocks = nn.ModuleList(blocks)  # blocks[i] takes resolution 2**(i + 3) down to 2**(i + 2)
        self.conv4 = EqConv(f(1) + 1, f(1))
        self.dense0 = EqLinear(f(1) * 16, f(0))
        self.dense1 = EqLinear(f(0), 1, gain=1.0)

    def forward(self, img: torch.Tensor, lod: float = 0.0) -> torch.Tensor:
        level, alpha = split_lod(self.R, lod)
        x = lrelu(self.from_rgb[level](img))
        for i in range(level - 1, -1, -1):
            conv, down = self.blocks[i]
            x = lrelu(down(lrelu(conv(x))))
            if i == level - 1 and alpha < 1.0:
                skip = lrelu(self.from_rgb[level - 1](downscale2d(img)))
                x = torch.lerp(skip.to(x.dtype), x, alpha)
        x = minibatch_stddev(x, self.mbstd_group_size)
        x = lrelu(self.conv4(x))
        x = lrelu(self.dense0(x.flatten(1)))
        return self.dense1(x).squeeze(1)


def split_lod(R: int, lod: float) -> tuple[int, float]:
    """(finest block index, fade-in alpha) for a level of detail: alpha = 1 - frac(lod) (spec)."""
    lod = min(max(float(lod), 0.0), R - 2.0)
    level = R - 2 - int(math.floor(lod))
    return level, 1.0 - (lod - math.floor(lod))
