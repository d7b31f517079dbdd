"""Red team 7: the feature store, MIL and export never take bad input as good (tiny encoders, tiny stores)."""
import numpy as np
import pytest
import torch

from slidestream.engine import config, export, features, mil, registry, splits
from slidestream.engine.errors import ConfigError, StoreError
from slidestream.engine.hookspecs import EncoderPlugin, hookimpl
from slidestream.engine.store import PatchStore
from test_mil import coords_store


class _Net(torch.nn.Module):
    """6-d features: the patch's mean RGB, twice, times ``scale``; ``bad`` (e.g. NaN) for bright patches (label 1)."""

    def __init__(self, scale=1.0, bad=None, drop=0):
        super().__init__()
        self.scale, self.bad, self.drop = scale, bad, drop

    def forward(self, x):
        f = x.mean((2, 3)).repeat(1, 2) * self.scale
        if self.bad is not None:
            f[x.mean((1, 2, 3)) > 0.5] = float(self.bad)
        return f[self.drop:]


class _Tiny:
    @staticmethod
    @hookimpl
    def slidestream_encoders():
        return [EncoderPlugin(name="rt7.tiny", build=lambda scale=1.0, bad=None, drop=0: _Net(scale, bad, drop),
                              params={"scale": {"type": "number"}, "bad": {"type": "string"},
                                      "drop": {"type": "integer"}},
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


def _other_pixels(path, n=4, per=4, seed=1, ids=None, split=True):
    """coords_store's slides, patients, labels and coordinates with other patches (a re-extraction)."""
    ids = ids or [f"S{i}" for i in range(n)]
    pipe = config.with_defaults({"name": "t", "magnification": 10, "patches": {"size": 32}, "store": {"chunk": 8}})
    st = PatchStore.create(path, 32, pipe["store"], {"extraction_hash": config.extraction_hash(pipe), "pipeline": pipe})
    rng = np.random.default_rng(seed)
    for i in range(n):
        patches = rng.integers(0, 128, (per, 32, 32, 3), dtype=np.uint8) + np.uint8(100 * (i % 2))
        st.append(ids[i], patches, {"slide_id": ids[i], "patient_id": f"P{i}", "label": i % 2, "age": 40.0 + 3 * i,
                                     "x": np.arange(per) * 128, "y": np.full(per, 64 * i), "size0": 128}, {"status": "done"})
    if split:
        splits.split_store(st, (2, 1, 1), seed=0)
    return st


def test_stale_features_of_another_extraction_refused_by_mil_and_export(store, tmp_path):
    """Same slides, rows and coordinates, other patches: mil train/predict --store and export --features took the
    old features as this store's (only the row count and slide ids were compared)."""
    pipe = {**_pipe(), "aggregator": {"name": "abmil", "params": {"hidden": 8, "attention": 4}}, "mil": {"epochs": 1}}
    features.extract_features(pipe, store.path, tmp_path / "f.zarr", progress=False, log=None)
    mil.train(pipe, tmp_path / "f.zarr", tmp_path / "mil", store=store.path, log=None, device="cpu")  # its own: fine
    other = _other_pixels(tmp_path / "other")
    for run in (lambda: mil.train(pipe, tmp_path / "f.zarr", tmp_path / "m2", store=other.path, log=None, device="cpu"),
                lambda: mil.predict(tmp_path / "mil", tmp_path / "f.zarr", tmp_path / "p.csv", store=other.path, warn=None),
                lambda: export.export(other.path, "h5", tmp_path / "h5", features=tmp_path / "f.zarr")):
        with pytest.raises(ConfigError, match=r"feature store .*f\.zarr is stale: the patch store .*other holds other patches"):
            run()
    assert not (tmp_path / "m2").exists() and not (tmp_path / "h5").exists()


def test_export_unsafe_slide_ids_never_share_or_escape_a_file(tmp_path):
    """'a/b' and 'a_b' were both written to a_b.geojson (the second overwrote the first, silently)."""
    import json

    import h5py

    ids = ["a/b", "a_b", "..", "é x", "ok-1.2"]
    st = _other_pixels(tmp_path / "s", n=5, ids=ids, split=False)
    for fmt in ("geojson", "h5"):
        paths = export.export(st.path, fmt, tmp_path / fmt)
        assert len({p.name for p in paths}) == 5 and sorted((tmp_path / fmt).iterdir()) == sorted(paths)
        assert tmp_path / fmt / f"ok-1.2.{fmt}" in paths and tmp_path / fmt / f"a_b.{fmt}" in paths
    x, y, s0 = st.column("x"), st.column("y"), st.column("size0")
    for i, sid in enumerate(ids):
        rows = slice(4 * i, 4 * i + 4)
        g = json.loads((tmp_path / "geojson" / f"{export.file_name(sid)}.geojson").read_text())
        assert {f["properties"]["slide_id"] for f in g["features"]} == {sid}
        assert [f["geometry"]["coordinates"][0][2] for f in g["features"]] == (
            np.stack([x[rows] + s0[rows], y[rows] + s0[rows]], 1).tolist())
        with h5py.File(tmp_path / "h5" / f"{export.file_name(sid)}.h5") as h:
            assert h["coords"].attrs["name"] == sid and h["coords"][:].tolist() == np.stack([x[rows], y[rows]], 1).tolist()


def test_mil_refuses_a_patient_whose_slides_have_two_labels(tmp_path):
    """Two slides of P0, labels 0 and 1 (--folds, no split to catch it): the bag took its first slide's label."""
    st = _other_pixels(tmp_path / "s", n=9, split=False)
    pid = st.column("patient_id").astype(object).astype(str)
    pid[pid == "P1"] = "P0"  # S1 (label 1) becomes a second slide of P0 (label 0)
    st.set_column("patient_id", pid)
    pipe = {**_pipe(), "mil": {"epochs": 1}}
    features.extract_features(pipe, st.path, tmp_path / "f.zarr", progress=False, log=None)
    with pytest.raises(ConfigError, match=r"patient 'P0' has slides with different labels \(0 and 1\); give all"):
        mil.train(pipe, tmp_path / "f.zarr", tmp_path / "cv", folds=3, log=None, device="cpu")
    assert not (tmp_path / "cv").exists()


def test_features_refuse_a_patch_store_extract_is_still_writing(tmp_path):
    """A live extract holds STORE.lock: features encoded the slides committed so far and called the result complete."""
    import json
    import socket
    import subprocess

    from slidestream.engine.store import beside

    store = _other_pixels(tmp_path / "s", split=False)
    store.close()  # this process's lock released: another one's extract is writing it
    lock = beside(store.path, "lock")
    writer = subprocess.Popen(["sleep", "30"])
    try:
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": writer.pid}))
        with pytest.raises(StoreError, match=rf"is being written by pid {writer.pid} on host .*wait for it to finish"):
            features.extract_features(_pipe(), store.path, tmp_path / "f.zarr", progress=False, log=None)
        writer.kill()
        writer.wait()  # killed: its committed slides are the store
        features.extract_features(_pipe(), store.path, tmp_path / "f.zarr", progress=False, log=None)
    finally:
        writer.kill()


def test_features_only_refuses_nan_features_naming_the_slide(tmp_path):
    """extract --features-only wrote an encoder's NaN rows as the slide's features; now refused, nothing committed."""
    import json

    from conftest import EXAMPLE

    from slidestream.engine import synthetic
    from slidestream.engine.runner import read_cohort

    doc = json.loads(EXAMPLE.read_text())
    doc["tiling"]["params"].update(size=256, min_tissue=0.2, max_tiles=2)
    doc.update(patches={"size": 64, "mode": "random", "per_tile": 2}, features={"batch_size": 5},
               encoder={"name": "rt7.tiny", "params": {"bad": "nan"}})
    slide = synthetic.make_slide(tmp_path / "s0.svs", size=(1536, 1024), label=1, seed=0)
    (tmp_path / "c.csv").write_text(f"slide_path,patient_id,label,age\n{slide},P0,1,50\n")
    with pytest.raises(ConfigError, match=r"NaN/inf features for \d+ of \d+ patches of 's0'"):
        features.extract_features_only(config.parse(doc), read_cohort(tmp_path / "c.csv"), tmp_path / "f.zarr",
                                       progress=False, qa=False)
    info = features.FeatureStore(tmp_path / "f.zarr").info
    assert info["done"] == {} and info["rows"] == 0 and info["pending"] == ["s0"]


def test_export_attention_of_new_unlabeled_patients(tmp_path):
    """export --mil on a new cohort (labels unknown, -1) was refused ("has no IDH label"), though attention and
    probability need no label (mil predict scores them)."""
    import csv
    import json

    pipe = {**_pipe(), "aggregator": {"name": "abmil", "params": {"hidden": 8, "attention": 4}}, "mil": {"epochs": 1}}
    train = coords_store(tmp_path / "train", n_patients=4, per=4)
    features.extract_features(pipe, train.path, tmp_path / "f.zarr", progress=False, log=None)
    mil.train(pipe, tmp_path / "f.zarr", tmp_path / "mil", log=None, device="cpu")
    new = _other_pixels(tmp_path / "new", split=False)
    new.set_column("label", np.full(len(new), -1))
    features.extract_features(pipe, new.path, tmp_path / "g.zarr", progress=False, log=None)
    mil.predict(tmp_path / "mil", tmp_path / "g.zarr", tmp_path / "p.csv", warn=None)
    want = {r["patient_id"]: float(r["image_prob"]) for r in csv.DictReader(open(tmp_path / "p.csv"))}
    paths = export.export(new.path, "geojson", tmp_path / "gj", features=tmp_path / "g.zarr", mil=tmp_path / "mil")
    assert len(paths) == 4
    for p in paths:
        props = [f["properties"] for f in json.loads(p.read_text())["features"]]
        assert np.isclose(sum(q["attention"] for q in props), 1, atol=1e-4)
        assert np.isclose(props[0]["probability"], want[props[0]["patient_id"]], atol=1e-6)


def test_encoder_returning_fewer_rows_than_patches_refused(store, tmp_path):
    """An encoder giving 4 rows for 5 patches: each later row went to another patch, the slide's last rows stayed 0."""
    with pytest.raises(ConfigError, match=r"returned features of shape \(6,\) for 4 patches \(3 rows\)"):
        features.extract_features(_pipe(drop=1), store.path, tmp_path / "f.zarr", progress=False, log=None)


def test_mil_rerun_into_the_same_out_with_other_features_is_refused(tmp_path):
    """A finished run's --out, rerun with features recomputed from a re-extracted store (same encoder, split and
    settings): it 'resumed' with 0 epochs to go and wrote predictions of the old model on the new features."""
    pipe = {**_pipe(), "aggregator": {"name": "abmil", "params": {"hidden": 8, "attention": 4}}, "mil": {"epochs": 1}}
    a = coords_store(tmp_path / "a", n_patients=4, per=4)
    b = _other_pixels(tmp_path / "b")
    assert np.array_equal(a.column("split"), b.column("split"))
    for st, f in ((a, "fa.zarr"), (b, "fb.zarr")):
        features.extract_features(pipe, st.path, tmp_path / f, progress=False, log=None)
    mil.train(pipe, tmp_path / "fa.zarr", tmp_path / "mil", log=None, device="cpu")
    mil.train(pipe, tmp_path / "fa.zarr", tmp_path / "mil", log=None, device="cpu")  # the same run: resumes
    with pytest.raises(ConfigError, match="holds a checkpoint of another MIL run"):
        mil.train(pipe, tmp_path / "fb.zarr", tmp_path / "mil", log=None, device="cpu")


def test_export_with_features_of_another_store_names_the_fix(store, tmp_path):
    features.extract_features(_pipe(), store.path, tmp_path / "f.zarr", progress=False, log=None)
    small = _other_pixels(tmp_path / "s3", n=3, split=False)
    with pytest.raises(ConfigError, match=r"was not computed from the patch store .*s3 \(16 vs 12 rows, or another "
                                          r"extraction\); give the feature store .* or run `slidestream features` on it"):
        export.export(small.path, "geojson", tmp_path / "gj", features=tmp_path / "f.zarr")


class _OneWeight(torch.nn.Module):
    """A bag's mean through a linear layer, with one attention weight for the whole bag (not one per patch)."""

    def __init__(self, in_dim):
        super().__init__()
        self.lin = torch.nn.Linear(in_dim, 1)

    def forward(self, bag):
        return self.lin(bag.mean(0)).squeeze(-1), torch.ones(1)


def test_aggregator_attention_not_one_per_patch_refused(tmp_path):
    """An aggregator returning (1,) attention: broadcast onto every row of attention.npy (all 1.0) and exports."""
    from slidestream.engine.hookspecs import AggregatorPlugin
    from test_mil import key_instance_bags

    class Agg:
        @staticmethod
        @hookimpl
        def slidestream_aggregators():
            return [AggregatorPlugin(name="rt7.one", input="features", build=lambda in_dim: _OneWeight(in_dim))]

    registry.register(Agg, name="rt7-agg")
    try:
        feats, bags, _ = key_instance_bags(n_patients=12, n=4, d=6)
        cfg = {**mil.DEFAULTS, "epochs": 1, "device": "cpu"}
        with pytest.raises(ConfigError, match=r"aggregator 'rt7.one' returned a logit of shape \(\) and attention of "
                                              r"shape \(1,\) for a bag of 4 patches; it must return"):
            mil.train_one(feats, bags, bags["split"], {"name": "rt7.one", "params": {}}, cfg, tmp_path, {}, log=None)
    finally:
        registry.manager().unregister(name="rt7-agg")
        registry._table.cache_clear()


def test_resume_refuses_another_input_transform(store, tmp_path):
    """The same encoder name, params and weights with another input transform (a plugin upgrade changed its mean/std):
    the rerun resumed, the store mixing slides encoded two ways."""
    import zarr

    out = tmp_path / "f.zarr"
    features.extract_features(_pipe(), store.path, out, progress=False, log=None)
    g = zarr.open_group(str(out), mode="r+")
    info = dict(g.attrs[features.ATTR])
    info["done"].pop("S3")
    info["mean"] = [0.5, 0.5, 0.5]  # as the plugin's earlier version declared it
    g.attrs[features.ATTR] = info
    with pytest.raises(StoreError, match=r"was made with another mean \(\[0.5, 0.5, 0.5\] vs \[0, 0, 0\]\)"):
        features.extract_features(_pipe(), store.path, out, progress=False, log=None)


def test_mil_predict_refuses_features_of_another_input_transform(store, tmp_path):
    import shutil

    import zarr

    pipe = {**_pipe(), "aggregator": {"name": "abmil", "params": {"hidden": 8, "attention": 4}}, "mil": {"epochs": 1}}
    features.extract_features(pipe, store.path, tmp_path / "f.zarr", progress=False, log=None)
    mil.train(pipe, tmp_path / "f.zarr", tmp_path / "mil", log=None, device="cpu")
    shutil.copytree(tmp_path / "f.zarr", tmp_path / "g.zarr")
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="r+")
    g.attrs[features.ATTR] = {**g.attrs[features.ATTR], "std": [0.2, 0.2, 0.2]}  # another version of the plugin
    with pytest.raises(ConfigError, match=r"trained on features of patches with encoder std \[1, 1, 1\], this feature "
                                          r"store's have \[0.2, 0.2, 0.2\]"):
        mil.predict(tmp_path / "mil", tmp_path / "g.zarr", tmp_path / "p.csv", warn=None)
