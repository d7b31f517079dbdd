#!/usr/bin/env python3
"""Draw docs/gamma_chain.png: the classifier input chain (gray -> CLAHE -> auto gamma) on real H&E patches.

Patches: tests/data/patches (always), plus a few tissue tiles from /work/shared/data/real/patches when that
folder exists (pass others as arguments). Each is cropped to its central 224 x 224. The panel titles give
the patch mean (0..1) after each step and the gamma ``auto`` chose.

  python docs/gamma_chain.py [more.png ...]
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from skimage import io  # noqa: E402

from slidestream.plugins.normalization import grayscale as g  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path("/work/shared/data/real/patches")
FILES = [ROOT / "tests/data/patches" / n for n in ("kather1_MUS.tif", "kather2_TUM.tif", "tiatoolbox-source_image.png")]
FILES += [SHARED / n for n in ("misc/histoqc-template2.png", "misc/tiatoolbox-TCGA-HE-7130-01Z-00-DX1.png",
                                "histolab-tiles/tissue-level2-4640-4649-8736-8746.png")]


def crop(path: Path, side: int = 224) -> np.ndarray:
    img = io.imread(path)[..., :3]
    y, x = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
    return np.ascontiguousarray(img[y:y + side, x:x + side])


def main() -> None:
    files = [f for f in FILES + [Path(a) for a in sys.argv[1:]] if f.is_file()]
    batch = np.stack([crop(f) for f in files])
    gray = g.grayscale(batch, device="cpu")
    eq = g.clahe(gray, device="cpu")
    out = g.gamma(eq, device="cpu")  # default gamma: "auto"
    fig, axes = plt.subplots(len(files), 4, figsize=(7.2, 1.9 * len(files)))
    for i, f in enumerate(files):
        gam = g.auto_gamma(eq[i] / 255.0)
        panels = [(batch[i], f"{f.stem[:22]}"), (gray[i, ..., 0], f"gray, mean {gray[i].mean() / 255:.2f}"),
                  (eq[i, ..., 0], f"+ CLAHE, mean {eq[i].mean() / 255:.2f}"),
                  (out[i, ..., 0], f"+ gamma {gam:.2f}, mean {out[i].mean() / 255:.2f}")]
        for ax, (im, title) in zip(axes[i], panels):
            ax.imshow(im, cmap="gray", vmin=0, vmax=255)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    dest = ROOT / "docs" / "gamma_chain.png"
    fig.savefig(dest, dpi=60)
    from PIL import Image

    Image.open(dest).convert("RGB").quantize(128).save(dest, optimize=True)  # a small palette PNG
    print(dest)


if __name__ == "__main__":
    main()
