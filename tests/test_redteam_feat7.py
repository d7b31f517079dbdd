"""Red team 7: the feature store, MIL and export never take bad input as good (tiny encoders, tiny stores)."""
import numpy as np
import pytest
import torch

from slidestream.engine import config, features, registry
from slidestream.engine.errors import ConfigError
from slidestream.engine.hookspecs import EncoderPlugin, hookimpl
from test_mil import coords_store


class _Net(torch.nn.Module):
    """6-d features: the patch's mean RGB, twice, times ``scale``; ``bad`` (e.g. NaN) for bright patches (label 1)."""

    def __init__(self, scale=1.0, bad=None):
        super().__init__()
        self.scale, self.bad = scale, bad

    def forward(self, x):
        f = x.mean((2, 3)).repeat(1, 2) * self.scale
        if self.bad is not None:
            f[x.mean((1, 2, 3)) > 0.5] = float(self.bad)
        return f


class _Tiny:
    @staticmethod
    @hookimpl
    def slidestream_encoders():
        return [EncoderPlugin(name="rt7.tiny", build=lambda scale=1.0, bad=None: _Net(scale, bad),
                              params={"scale": {"type": "number"}, "bad": {"type": "string"}},
                              input_size=8, dim=6, mean=(0, 0, 0), std=(1, 1, 1))]


@pytest.fixture(scope="module", autouse=True)
def tiny_encoder():
    registry.register(_Tiny, name="rt7-tiny")
    yield
    registry.manager().unregister(name="rt7-tiny")
    registry._table.cache_clear()


def _pipe(**params):
    return config.parse({"name": "rt7", "encoder": {"name": "rt7.tiny", "params": params}, "features": {"batch_size": 5}})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return coords_store(tmp_path_factory.mktemp("rt7") / "store", n_patients=4, per=4)


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_encoder_nan_inf_refused_naming_the_slide(store, tmp_path, bad):
    with pytest.raises(ConfigError, match=r"NaN/inf features for 4 of 4 patches of 'S1'"):
        features.extract_features(_pipe(bad=bad), store.path, tmp_path / "f.zarr", progress=False, log=None)


def test_float16_overflow_refused_float32_kept(store, tmp_path):
    with pytest.raises(ConfigError, match=r"features up to [0-9.e+]+ for 'S0', beyond float16's 65504; set"):
        features.extract_features(_pipe(scale=1e6), store.path, tmp_path / "f.zarr", progress=False, log=None)
    pipe = config.parse({**_pipe(scale=1e6), "features": {"batch_size": 5, "dtype": "float32"}})
    features.extract_features(pipe, store.path, tmp_path / "g.zarr", progress=False, log=None)
    f = features.FeatureStore(tmp_path / "g.zarr").rows()
    assert f.dtype == np.float32 and np.isfinite(f).all() and f.max() > 65504
