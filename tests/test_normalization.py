"""Normalization plugins: RGB histogram (GAN input), gray/CLAHE/gamma (classifier input), Reinhard, Macenko."""
from pathlib import Path

import numpy as np
import pytest
from skimage import color, exposure, io

from slidestream.engine import registry
from slidestream.engine.errors import ConfigError
from slidestream.plugins.normalization import chain_channels, grayscale, histogram, stain
from slidestream.plugins.normalization._backend import gpu_available

PATCHES = Path(__file__).parent / "data" / "patches"


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _read(name: str) -> np.ndarray:
    return np.ascontiguousarray(io.imread(PATCHES / name)[..., :3])


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    """Two real 224x224 H&E patches (Kather 2018: muscle, tumour)."""
    return np.stack([_read("kather1_MUS.tif"), _read("kather2_TUM.tif")])


def _ks_uniform(channel: np.ndarray) -> float:
    """Largest gap between the channel's empirical CDF and the uniform CDF on 0..255."""
    cdf = np.cumsum(np.bincount(channel.ravel(), minlength=256)) / channel.size
    return float(np.max(np.abs(cdf - (np.arange(256) + 1) / 256)))


def test_registered_with_channels():
    table = registry.plugins("normalization")
    want = {"rgb_histogram": 3, "grayscale": 1, "clahe": 3, "gamma": 3, "gray_clahe_gamma": 1, "reinhard": 3, "macenko": 3}
    assert {n: table[n].channels for n in want} == want
    chain = [table["grayscale"], table["clahe"], table["gamma"]]
    assert chain_channels(chain) == 1 and chain_channels([table["reinhard"], table["gamma"]]) == 3


def test_equalize_makes_channel_histograms_uniform(batch):
    out = histogram.rgb_histogram(batch, device="cpu")
    assert out.shape == batch.shape and out.dtype == np.uint8
    for i in range(len(batch)):
        for c in range(3):
            before, after = _ks_uniform(batch[i, ..., c]), _ks_uniform(out[i, ..., c])
            assert after < 0.05 < before, (i, c, before, after)
            assert out[i, ..., c].min() == 0 and out[i, ..., c].max() == 255


def test_equalize_small_case_by_hand():
    # one channel with values 10 (x1), 20 (x2), 30 (x1): cdf 1, 3, 4; cdf_min 1 -> (cdf-1)/3*255 = 0, 170, 255
    ch = np.array([[10, 20], [20, 30]], dtype=np.uint8)
    patch = np.stack([ch, ch, np.full_like(ch, 7)], axis=-1)[None]
    out = histogram.rgb_histogram(patch, device="cpu")[0]
    assert out[..., 0].tolist() == [[0, 170], [170, 255]]
    assert out[..., 2].tolist() == [[7, 7], [7, 7]]  # a flat channel is left alone


def test_stretch_maps_percentiles_to_ends(batch):
    out = histogram.rgb_histogram(batch, method="stretch", low=2, high=98, device="cpu")
    for i in range(len(batch)):
        for c in range(3):
            lo, hi = np.percentile(out[i, ..., c], [2, 98])
            assert lo <= 2 and hi >= 253
            ref = exposure.rescale_intensity(batch[i, ..., c].astype(float),
                                             in_range=tuple(np.percentile(batch[i, ..., c], [2, 98])), out_range=(0, 255))
            assert np.abs(out[i, ..., c].astype(float) - ref).max() <= 1.0


def test_grayscale_is_rgb2gray(batch):
    out = grayscale.grayscale(batch, device="cpu")
    assert out.shape == batch.shape[:3] + (1,) and out.dtype == np.uint8
    want = np.rint(color.rgb2gray(batch) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], want)


def test_clahe_changes_and_stays_in_range(batch):
    gray = grayscale.grayscale(batch, device="cpu")
    out = grayscale.clahe(gray, clip_limit=0.02, kernel_size=32, device="cpu")
    assert out.shape == gray.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - gray).mean() > 5  # it did something
    for i in range(len(batch)):
        assert out[i].min() == 0 and out[i].max() == 255  # skimage stretches the result to the full range
        # local contrast goes up: the std over 16x16 blocks grows on average
        blocks = lambda a: a[..., 0].reshape(14, 16, 14, 16).std(axis=(1, 3)).mean()  # noqa: E731
        assert blocks(out[i].astype(float)) > blocks(gray[i].astype(float))
        ref = exposure.equalize_adapthist(gray[i, ..., 0], kernel_size=32, clip_limit=0.02)
        np.testing.assert_array_equal(out[i, ..., 0], np.rint(ref * 255).astype(np.uint8))
    rgb = grayscale.clahe(batch, device="cpu")
    assert rgb.shape == batch.shape  # an RGB batch stays RGB


def test_gamma_and_one_pass_chain(batch):
    gray = grayscale.grayscale(batch, device="cpu")
    dark = grayscale.gamma(gray, gamma=2.0, device="cpu")
    np.testing.assert_array_equal(dark, exposure.adjust_gamma(gray, 2.0))
    assert dark.mean() < gray.mean() - 20
    chain = grayscale.gamma(grayscale.clahe(gray, clip_limit=0.02, device="cpu"), gamma=1.5, gain=1.0, device="cpu")
    one = grayscale.gray_clahe_gamma(batch, clip_limit=0.02, gamma=1.5, device="cpu")
    assert one.shape == chain.shape
    assert np.abs(one.astype(int) - chain).max() <= 1


def test_auto_gamma_default_takes_each_patch_mean_to_mid_gray(batch):
    batch = np.concatenate([batch, _read("tiatoolbox-source_image.png")[None, :224, :224]])
    eq = grayscale.clahe(grayscale.grayscale(batch, device="cpu"), device="cpu")
    out = grayscale.gamma(eq, device="cpu")  # default: "auto"
    before = eq.reshape(3, -1).mean(1) / 255
    after = out.reshape(3, -1).mean(1) / 255
    # CLAHE leaves these patches at means 0.48-0.54; gamma log(0.5)/log(mean) takes each to 0.5 (the mean of
    # x**g is not exactly (mean x)**g, hence the tolerance, well inside the spread before)
    assert np.ptp(before) > 0.05 and np.all(np.abs(after - 0.5) < 0.02), (before, after)
    one = grayscale.gray_clahe_gamma(batch, device="cpu")
    assert np.abs(one.astype(int) - out).max() <= 2  # the one-pass plugin does the same by default
    assert not np.array_equal(out, eq)  # not the identity
    assert grayscale.auto_gamma(np.full((4, 4), 0.999)) == grayscale.GAMMA_BOUNDS[1]  # near-blank: bounded


def test_gamma_param_schema_takes_auto_or_a_number():
    from slidestream.engine import config

    ok = {"normalization": {"classifier": {"name": "gray_clahe_gamma", "params": {"gamma": "auto"}}}}
    assert not [e for e in config.validation_errors(ok) if "gamma" in e]
    bad = {"normalization": {"classifier": {"name": "gamma", "params": {"gamma": "bright"}}}}
    assert any("gamma" in e for e in config.validation_errors(bad))


def _lab_stats(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab = color.rgb2lab(img).reshape(-1, 3)
    return lab.mean(0), lab.std(0)


def test_reinhard_moves_lab_stats_to_target(batch):
    target_img = _read("tiatoolbox-source_image.png")
    t_mean, t_std = _lab_stats(target_img)
    out = stain.reinhard(batch, target=str(PATCHES / "tiatoolbox-source_image.png"), device="cpu")
    assert out.shape == batch.shape and out.dtype == np.uint8
    for i in range(len(batch)):
        m0, s0 = _lab_stats(batch[i])
        m1, s1 = _lab_stats(out[i])
        assert np.linalg.norm(m1 - t_mean) < 0.25 * np.linalg.norm(m0 - t_mean)
        assert np.linalg.norm(s1 - t_std) < 0.5 * np.linalg.norm(s0 - t_std)
    # explicit statistics give the same result as the image they came from
    means, stds = stain.reinhard_target(str(PATCHES / "tiatoolbox-source_image.png"))
    np.testing.assert_array_equal(stain.reinhard(batch, target_means=means, target_stds=stds, device="cpu"), out)
    with pytest.raises(ConfigError):
        stain.reinhard(batch, target="x.png", target_means=means, device="cpu")


def _stain_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Sum over H and E of the angle (degrees) between two stain matrices' unit vectors."""
    return float(sum(np.degrees(np.arccos(np.clip(np.dot(a[k], b[k]), -1, 1))) for k in range(2)))


def test_macenko_moves_stains_to_target(batch):
    target = str(PATCHES / "tiatoolbox-source_image.png")
    he_t, max_t = (np.asarray(v) for v in stain.macenko_target(target))
    out = stain.macenko(batch, target=target, device="cpu")
    assert out.shape == batch.shape and out.dtype == np.uint8
    for i in range(len(batch)):
        od_in, od_out = (stain._od(np, x.reshape(-1, 3)) for x in (batch[i], out[i]))
        he_in, he_out = (stain._stain_matrix(np, od, 0.15, 1.0) for od in (od_in, od_out))
        assert _stain_angle(he_out, he_t) < 0.5 * _stain_angle(he_in, he_t)
        max_out = np.percentile(stain._concentrations(np, od_out, he_out), 99, axis=1)
        assert np.all(np.abs(max_out - max_t) < 0.15 * max_t)  # 99th-percentile H and E amounts match the target
    default = stain.macenko(batch, device="cpu")
    assert not np.array_equal(default, out)  # the built-in target is another one
    white = np.full((1, 32, 32, 3), 250, np.uint8)
    np.testing.assert_array_equal(stain.macenko(white, device="cpu"), white)  # no tissue: unchanged


def test_bad_batches_are_refused(batch):
    with pytest.raises(ConfigError, match="uint8"):
        histogram.rgb_histogram(batch.astype(np.float32), device="cpu")
    with pytest.raises(ConfigError, match=r"\(n, h, w, 3\)"):
        stain.reinhard(grayscale.grayscale(batch, device="cpu"), device="cpu")
    with pytest.raises(ConfigError, match="device"):
        grayscale.gamma(batch, device="tpu")


@pytest.mark.skipif(gpu_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_config_error(batch):
    with pytest.raises(ConfigError, match="CUDA"):
        grayscale.grayscale(batch, device="cuda")


CASES = [
    ("rgb_histogram", histogram.rgb_histogram, {}, 0, 0.0),
    ("rgb_histogram/stretch", histogram.rgb_histogram, {"method": "stretch"}, 1, 0.01),
    ("grayscale", grayscale.grayscale, {}, 1, 0.01),
    ("clahe", grayscale.clahe, {"clip_limit": 0.02}, 2, 0.05),
    ("gamma", grayscale.gamma, {"gamma": 0.7}, 0, 0.0),
    ("gray_clahe_gamma", grayscale.gray_clahe_gamma, {"gamma": 1.3}, 2, 0.05),
    ("reinhard", stain.reinhard, {}, 2, 0.05),
    ("macenko", stain.macenko, {}, 2, 0.05),
]


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name,fn,params,max_diff,mean_diff", CASES, ids=[c[0] for c in CASES])
def test_cpu_and_gpu_agree(batch, name, fn, params, max_diff, mean_diff):
    import cupy

    cpu = fn(batch, device="cpu", **params)
    gpu = fn(batch, device="cuda", **params)  # numpy in, numpy out, computed on the GPU
    assert isinstance(gpu, np.ndarray) and gpu.shape == cpu.shape and gpu.dtype == np.uint8
    diff = np.abs(gpu.astype(int) - cpu)
    assert diff.max() <= max_diff and diff.mean() <= mean_diff, (name, diff.max(), diff.mean())
    on_device = fn(cupy.asarray(batch), **params)  # cupy in (device auto): cupy out
    assert isinstance(on_device, cupy.ndarray)
    np.testing.assert_array_equal(on_device.get(), gpu)
