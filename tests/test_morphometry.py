"""The weight-free ``morphometry`` encoder: registration, shapes, determinism, regionprops agreement, and that its
features separate small round from large elongated nuclei by a margin chance cannot reach."""
import numpy as np
import torch

from slidestream.engine import config, features, registry, synthetic
from slidestream.plugins.encoders import morphometry as mm


def patches(label: int, slides: int, per: int = 16, patch: int = 64, seed: int = 0) -> np.ndarray:
    """``per`` 64 px patches of each of ``slides`` 10x tissue images of one class (``subtle=False``: only round
    nuclei for 1, only elongated ones for 0)."""
    side = int(np.sqrt(per)) * patch
    out = []
    for s in range(slides):
        img = synthetic.render((side, side), label, seed=seed * 1000 + s, mpp=1.0, full=True)
        out += [img[y:y + patch, x:x + patch] for y in range(0, side, patch) for x in range(0, side, patch)]
    return np.stack(out)


def test_registered_through_the_entry_point_group():
    p = registry.get("encoder", "morphometry")
    assert registry.source("encoder", "morphometry") == "encoders"  # the built-in entry point, as for timm
    assert p.dim == mm.DIM == len(mm.NAMES) == 81 and tuple(p.mean) == (0, 0, 0) and tuple(p.std) == (1, 1, 1)
    module, spec = features.load_encoder({"name": "morphometry", "params": {"input_size": 64}})
    assert spec["dim"] == 81 and spec["input_size"] == 64


def test_shapes_dtype_and_determinism():
    x = patches(1, 1, per=4)
    enc = registry.get("encoder", "morphometry").build(input_size=64)
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    a, b = enc(t), enc(t)
    assert a.shape == (4, 81) and a.dtype == torch.float32 and torch.equal(a, b)
    assert np.allclose(a.numpy(), mm.describe(x), atol=1e-6)  # float 0..1 input == uint8 input
    # a batch is described patch by patch: splitting it changes nothing; a blank patch gives finite zeros
    assert np.array_equal(mm.describe(x), np.concatenate([mm.describe(x[:1]), mm.describe(x[1:])]))
    blank = mm.describe(np.full((1, 64, 64, 3), 240, np.uint8))
    assert np.isfinite(blank).all() and blank[0, mm.NAMES.index("nuclei_count")] == 0


def test_nucleus_properties_equal_regionprops():
    from skimage.color import rgb2hed
    from skimage.measure import regionprops_table

    hema = rgb2hed(patches(0, 1, per=4))[..., 0]
    labels, patch, props = mm.nuclei(hema)
    for i in range(len(hema)):
        ref = regionprops_table(labels[i], hema[i], properties=("area", "eccentricity", "extent", "axis_major_length",
                                                                 "axis_minor_length", "intensity_mean"))
        assert len(ref["area"]) == np.sum(patch == i) > 0
        for k, v in ref.items():
            assert np.allclose(props[k][patch == i], v, rtol=1e-6, atol=1e-9), k


def test_shape_histogram_equals_regionprops_binned():
    """The shape-histogram features (nuclei per fixed bin of area and eccentricity, and their fractions of the
    patch's nuclei) against regionprops of the same labels, binned with explicit ``lo <= v < hi`` comparisons."""
    from skimage.measure import regionprops

    x = np.concatenate([patches(0, 1, per=4), patches(1, 1, per=4, seed=3)])
    f = mm.describe(x)
    labels, _, _ = mm.nuclei(mm.rgb2hed(x)[..., 0])
    col = {n: f[:, i] for i, n in enumerate(mm.NAMES)}
    for prop, edges in (("area", mm.AREA_BINS), ("eccentricity", mm.ECC_BINS)):
        lo, hi = (-np.inf, *edges), (*edges, np.inf)
        names = [n for n in mm.NAMES if n.startswith(f"nuclei_{prop}_") and not n.endswith("_frac")]
        assert len(names) == len(edges) + 1
        for i in range(len(x)):
            values = [getattr(r, prop) for r in regionprops(labels[i])]
            assert len(values) == col["nuclei_count"][i] > 0
            for name, a, b in zip(names, lo, hi):
                want = sum(a <= v < b for v in values)
                assert col[name][i] == want, (name, i)
                assert np.isclose(col[name + "_frac"][i], want / len(values)), (name, i)
    # the classes fill different bins: more round nuclei below eccentricity 0.5, more elongated ones above 0.9
    low, high = col["nuclei_eccentricity_0_0.5_frac"], col["nuclei_eccentricity_0.9_1_frac"]
    assert low[4:].mean() > 2 * low[:4].mean() and high[:4].mean() > 2 * high[4:].mean()
    blank = mm.describe(np.full((1, 64, 64, 3), 240, np.uint8))
    assert (blank[0, [mm.NAMES.index(n) for n in mm.HIST]] == 0).all()


def test_group_stats_match_numpy():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 5, 200)
    g[g == 3] = 4  # group 3 empty
    v = rng.normal(size=200)
    s = mm.group_stats(v, g, 6)
    for i in range(6):
        x = v[g == i]
        want = [x.mean(), x.std(), *np.percentile(x, (10, 50, 90))] if len(x) else [0] * 5
        assert np.allclose(s[i], want)


def test_features_separate_round_from_elongated_nuclei():
    """16 slides per class, 16 patches each. Pre-specified: the patch feature 'mean nucleus eccentricity' ranks
    elongated (wildtype-like) above round (mutant-like) nuclei with AUC >= 0.95. Counting only the 16 + 16 slides
    as independent, the AUC's standard error under the null is sqrt(33 / (12 * 16 * 16)) = 0.10, so 0.95 is 4.3
    SE above chance (one-sided p < 1e-5); the same for the mean major axis length (elongated nuclei are longer)."""
    from sklearn.metrics import roc_auc_score

    x = np.concatenate([patches(0, 16, seed=1), patches(1, 16, seed=2)])
    y = np.repeat([1, 0], 256)  # 1 = elongated
    f = mm.describe(x)
    assert roc_auc_score(y, f[:, mm.NAMES.index("nucleus_eccentricity_mean")]) >= 0.95
    assert roc_auc_score(y, f[:, mm.NAMES.index("nucleus_axis_major_length_mean")]) >= 0.95


def test_feature_store_with_morphometry(tmp_path):
    st = synthetic.make_store(tmp_path / "store", n_patients=4, per_patient=4, patch=32)
    pipe = config.parse({"name": "t", "encoder": {"name": "morphometry", "params": {"input_size": 32}},
                         "features": {"batch_size": 3}})
    s = features.extract_features(pipe, st.path, tmp_path / "f.zarr", progress=False, log=None)
    fs = features.FeatureStore(tmp_path / "f.zarr")
    assert s["dim"] == 81 and fs.features.shape == (16, 81) and fs.complete()
    direct = mm.describe(st.read(0, 16))
    assert np.allclose(np.asarray(fs.features[:], np.float32), direct, rtol=2e-3, atol=1e-3)  # float16 store
