"""The paper-size PG-GAN (256x256, fmap_base 8192, fmap_max 512): one training step (WGAN-GP D step, G step,
EMA) at every resolution 4 ... 256 and in a fade-in, batch 2, with shape checks (spec channel table)."""
from __future__ import annotations

import pytest
import torch

from slidestream.plugins.augmenters import pggan
from slidestream.plugins.augmenters.pggan_nets import nf


@pytest.fixture(scope="module")
def trainer():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # predictable on shared CI cores
    yield pggan.Trainer(pggan.resolve({"device": "cpu"}), torch.device("cpu"))
    torch.set_num_threads(n)


def test_feature_maps_match_the_spec_table():
    assert [nf(r - 1) for r in range(2, 9)] == [512, 512, 512, 512, 256, 128, 64] and nf(0) == 512


@pytest.mark.parametrize("lod", [6, 5.5, 5, 4, 3, 2, 1, 0])
def test_one_step_per_resolution(trainer, lod):
    res = 2 ** (8 - int(lod // 1))
    G, D = trainer.G, trainer.D
    before = G.to_rgb[8 - 2 - int(lod // 1)].weight.detach().clone()
    phase = pggan.Phase(float(lod), res, 1.0 - (lod % 1), 2)
    reals = torch.rand(2, 3, res, res) * 2 - 1
    ld, lg = trainer.step(reals, phase)
    assert torch.isfinite(ld) and torch.isfinite(lg)
    assert not torch.equal(before, G.to_rgb[8 - 2 - int(lod // 1)].weight)  # the active level learned
    with torch.no_grad():
        z = torch.randn(2, G.latent_size)
        img = G(z, lod)
        assert img.shape == (2, 3, res, res) and D(img, lod).shape == (2,)
