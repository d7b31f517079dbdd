"""Feature store, attention-MIL aggregators, k-fold CV, exports and the commands that run them."""
import json

import numpy as np
import pytest
import zarr

from slidestream.engine import config, features, mil, registry, splits
from slidestream.engine.aggregate import aggregate
from slidestream.engine.errors import ConfigError, StoreError
from slidestream.engine.store import PatchStore

TINY = {"name": "timm", "params": {"model": "vit_tiny_patch16_224", "input_size": 32,
                                   "kwargs": {"img_size": 32, "depth": 2, "embed_dim": 24, "num_heads": 2}}}
PIPE = {"name": "mil-test", "encoder": TINY, "aggregator": {"name": "abmil", "params": {"hidden": 16, "attention": 8}},
        "features": {"batch_size": 5}, "mil": {"epochs": 2, "lr": 1e-3}}


def coords_store(path, n_patients=8, per=6, patch=32):
    """A store of n_patients one-slide patients with level-0 coordinates (row r of slide i at x = 128 r, y = 64 i)."""
    pipe = config.with_defaults({"name": "t", "magnification": 10, "patches": {"size": patch}, "store": {"chunk": 8}})
    st = PatchStore.create(path, patch, pipe["store"], {"extraction_hash": config.extraction_hash(pipe), "pipeline": pipe})
    rng = np.random.default_rng(0)
    for i in range(n_patients):
        lab = i % 2
        patches = rng.integers(0, 128, (per, patch, patch, 3), dtype=np.uint8) + np.uint8(100 * lab)
        meta = {"slide_id": f"S{i}", "patient_id": f"P{i}", "label": lab, "age": 40.0 + 3 * i,
                "x": np.arange(per) * 128, "y": np.full(per, 64 * i), "size0": 128}
        st.append(f"S{i}", patches, meta, {"status": "done"})
    splits.split_store(st, (2, 1, 1), seed=0)
    return st


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("mil")
    st = coords_store(root / "store")
    pipe = config.parse(PIPE)
    features.extract_features(pipe, st.path, root / "f.zarr", progress=False, log=None)
    return root, st, pipe


def test_feature_store_opens_with_plain_zarr_row_aligned(made):
    root, st, pipe = made
    g = zarr.open_group(str(root / "f.zarr"), mode="r")
    f = g["features"]
    assert f.shape == (len(st), 24) and f.dtype == np.float16
    for c in ("slide_id", "patient_id", "x", "y", "size0"):
        assert [str(v) for v in g[f"meta/{c}"][:].tolist()] == [str(v) for v in st.column(c).tolist()]
    info = g.attrs["slidestream_features"]
    assert info["encoder"] == "timm" and info["dim"] == 24 and len(info["done"]) == 8
    enc, spec = features.load_encoder(pipe["encoder"])
    rows = [0, 13, len(st) - 1]  # what the encoder gives for these patches, in float16
    want = enc(features.preprocess(st.patches[np.array(rows)], spec, "cpu")).numpy()
    np.testing.assert_allclose(np.asarray(f[:])[rows], want, rtol=2e-3, atol=2e-3)


def test_feature_store_resumes_per_slide(made, tmp_path):
    import shutil

    root, st, pipe = made
    out = tmp_path / "f.zarr"
    shutil.copytree(root / "f.zarr", out)
    g = zarr.open_group(str(out), mode="r+")
    full = np.asarray(g["features"][:])
    info = dict(g.attrs["slidestream_features"])
    r0, r1 = info["done"].pop("S7")  # as if killed while encoding the last slide
    g.attrs["slidestream_features"] = info
    g["features"][r0:r1] = 0
    g["features"][0:6] = 7  # a finished slide: must not be encoded again
    s = features.extract_features(pipe, st.path, out, progress=False, log=None)
    assert s["encoded"] == r1 - r0 and s["skipped"] == 7
    now = np.asarray(g["features"][:])
    assert np.array_equal(now[r0:r1], full[r0:r1]) and np.all(now[0:6] == 7)
    other = config.parse({**PIPE, "encoder": {**TINY, "params": {**TINY["params"], "input_size": 48}}})
    with pytest.raises(StoreError, match="made with another params"):
        features.extract_features(other, st.path, out, progress=False, log=None)


def key_instance_bags(n_patients=48, n=20, d=16, seed=0):
    """Classic MIL data: every patch is noise; a positive patient's bag has 2 'key' patches shifted along one
    direction. Mean pooling dilutes them 10x; attention can find them."""
    rng = np.random.default_rng(seed)
    labels = np.array([0, 1] * (n_patients // 2))
    feats, rows, key = [], [], np.zeros(n_patients * n, bool)
    for i, y in enumerate(labels):
        f = rng.normal(size=(n, d)).astype(np.float32)
        if y:
            f[:2, 0] += 6.0
            key[i * n: i * n + 2] = True
        feats.append(f)
        rows.append(np.arange(i * n, (i + 1) * n))
    split = np.array((["train"] * 6 + ["val"] * 2 + ["test"] * 4) * (n_patients // 12))
    bags = {"patients": np.array([f"P{i:02d}" for i in range(n_patients)]), "rows": rows, "label": labels,
            "age": np.full(n_patients, 50.0), "split": split}
    return np.concatenate(feats), bags, key


@pytest.mark.parametrize("name", ["abmil", "clam_sb"])
def test_attention_mil_finds_key_instances(name, tmp_path):
    """16 test patients (8 + 8): a random scorer reaches AUC >= 0.9 with p = 30/12870 = 0.002 (at most 6 of
    the 64 mutant/wildtype pairs misordered), so this needs learning; attention must also single out the
    key patches (uniform attention would give them 1/20 each)."""
    feats, bags, key = key_instance_bags()
    cfg = {**mil.DEFAULTS, "epochs": 20, "lr": 1e-3, "device": "cpu"}
    res = mil.train_one(feats, bags, bags["split"], {"name": name, "params": {"hidden": 32, "attention": 16}}, cfg,
                        tmp_path, {"encoder": "synthetic"}, log=None)
    assert res["metrics"]["test"]["auc"] >= 0.9
    att = np.load(tmp_path / "attention.npy")
    pos = np.concatenate([bags["rows"][i] for i in np.flatnonzero((bags["split"] == "test") & (bags["label"] == 1))])
    assert att[pos][key[pos]].mean() > 4 * (1 / 20)
    np.testing.assert_allclose([att[r].sum() for r in bags["rows"]], 1, rtol=1e-5)


def test_mil_resume_equals_uninterrupted(tmp_path):
    feats, bags, _ = key_instance_bags(n_patients=24)
    cfg = {**mil.DEFAULTS, "lr": 1e-3, "device": "cpu", "max_patches": 10}
    agg = {"name": "abmil", "params": {"hidden": 16, "attention": 8}}
    mil.train_one(feats, bags, bags["split"], agg, {**cfg, "epochs": 2}, tmp_path / "a", {}, log=None)
    mil.train_one(feats, bags, bags["split"], agg, {**cfg, "epochs": 4}, tmp_path / "a", {}, log=None)  # resumes
    mil.train_one(feats, bags, bags["split"], agg, {**cfg, "epochs": 4}, tmp_path / "b", {}, log=None)
    ha, hb = (json.loads((tmp_path / x / "history.json").read_text()) for x in "ab")
    assert len(ha) == 4 and ha == hb
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="checkpoint of another MIL run"):
        mil.train_one(feats, bags, bags["split"], agg, {**cfg, "epochs": 4, "lr": 1e-2}, tmp_path / "a", {}, log=None)


def test_early_stopping_after_patience_epochs_without_a_better_one(tmp_path):
    """With patience P, training stops P epochs after the best one (not at mil.epochs), keeps the best epoch's
    weights, equals the same epochs of a run without early stopping, and a rerun stops again."""
    _, bags, _ = key_instance_bags(n_patients=24)
    feats = np.random.default_rng(1).normal(size=(24 * 20, 8)).astype(np.float32)  # no signal: val AUC plateaus
    cfg = {**mil.DEFAULTS, "lr": 1e-2, "device": "cpu", "epochs": 30}  # overfits the noise: val AUC falls
    agg = {"name": "abmil", "params": {"hidden": 16, "attention": 8}}
    mil.train_one(feats, bags, bags["split"], agg, cfg, tmp_path / "full", {}, log=None)
    hist = json.loads((tmp_path / "full" / "history.json").read_text())
    # the first epoch after which P epochs pass without a better one (the rule applied to the full run's history)
    best, stop = None, len(hist)
    for i, m in enumerate(hist):
        if best is not None and i - best["epoch"] >= 3:
            stop = i
            break
        if mil._better(m, best):
            best = m
    assert stop < 30, "the toy run must plateau for this test to test anything"
    res = mil.train_one(feats, bags, bags["split"], agg, {**cfg, "patience": 3}, tmp_path / "es", {}, log=None)
    es = json.loads((tmp_path / "es" / "history.json").read_text())
    assert res["epochs_trained"] == len(es) == stop == res["best_epoch"] + 3 and es == hist[:stop]
    again = mil.train_one(feats, bags, bags["split"], agg, {**cfg, "patience": 3}, tmp_path / "es", {}, log=None)
    assert again["epochs_trained"] == stop and again["metrics"] == res["metrics"]
    assert json.loads((tmp_path / "es" / "mil.json").read_text())["epochs_trained"] == stop


def test_kfold_splits_each_patient_tested_once():
    labels = np.array([0] * 12 + [1] * 8)
    folds = mil.kfold_splits(labels, 4, seed=1)
    tested = np.stack([f == "test" for f in folds])
    assert np.all(tested.sum(0) == 1) and np.all(np.stack([f == "val" for f in folds]).sum(0) == 1)
    assert all(labels[t].sum() == 2 for t in tested)  # stratified: 2 of the 8 mutants per fold
    with pytest.raises(ConfigError, match="fewer than 10 patients"):
        mil.kfold_splits(labels, 10, seed=0)


def test_aggregate_dispatches_to_plugins():
    from slidestream.engine.hookspecs import AggregatorPlugin, hookimpl

    class Lab:
        @staticmethod
        @hookimpl
        def slidestream_aggregators():
            return [AggregatorPlugin(name="lab.max", aggregate=lambda p: (float(np.max(p)), None))]

    registry.register(Lab, name="lab-agg")
    try:
        _, p = aggregate(["a", "b", "a"], [0.2, 0.5, 0.9], "lab.max")
        np.testing.assert_allclose(p, [0.9, 0.5])
        assert "lab.max" in config.schema()["properties"]["training"]["properties"]["aggregation"]["properties"]["method"]["enum"]
    finally:
        registry.manager().unregister(name="lab-agg")
        registry._table.cache_clear()
    with pytest.raises(ConfigError, match="method must be one of"):
        aggregate(["a"], [0.5], "abmil")  # an attention-MIL model, not a pooling rule


def test_commands_features_mil_evaluate_export(made, cli, tmp_path):
    import h5py

    root, st, _ = made
    pipe = tmp_path / "p.json"
    pipe.write_text(json.dumps(PIPE))
    code, out, err = cli("features", pipe, "--store", st.path, "--out", tmp_path / "f.zarr", "--quiet")
    assert code == 0, err
    code, out, err = cli("mil", "train", pipe, "--features", tmp_path / "f.zarr", "--out", tmp_path / "m")
    assert code == 0, err
    assert "best epoch" in out and (tmp_path / "m" / "model.safetensors").is_file()
    meta = json.loads((tmp_path / "m" / "mil.json").read_text())
    assert meta["aggregator"] == "abmil" and meta["encoder"]["encoder"] == "timm"
    code, out, err = cli("evaluate", tmp_path / "m" / "predictions.csv", "--out", tmp_path / "ev", "--fusion", "age_gda",
                         "--fusion-split", "train", "--bootstrap", "0")  # plumbing only: 8 patients, val has 1 per class
    assert code == 0, err
    assert "age+image" in json.loads((tmp_path / "ev" / "metrics.json").read_text())["test"]

    code, out, err = cli("export", st.path, "--format", "geojson", "--out", tmp_path / "gj",
                         "--features", tmp_path / "f.zarr", "--mil", tmp_path / "m")
    assert code == 0, err
    doc = json.loads((tmp_path / "gj" / "S3.geojson").read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 6
    for r, feat in enumerate(doc["features"]):
        ring = feat["geometry"]["coordinates"][0]
        assert feat["geometry"]["type"] == "Polygon" and len(ring) == 5 and ring[0] == ring[-1]
        assert ring[0] == [128 * r, 64 * 3] and ring[2] == [128 * r + 128, 64 * 3 + 128]  # level-0 px
    att = [f["properties"]["attention"] for f in doc["features"]]
    assert abs(sum(att) - 1) < 1e-5 and len({f["properties"]["probability"] for f in doc["features"]}) == 1
    # the reloaded bundle (weights + standardization) gives what the trained model gave
    np.testing.assert_allclose(att, np.load(tmp_path / "m" / "attention.npy")[18:24], rtol=1e-4, atol=1e-6)
    prob = {r.split(",")[0]: float(r.split(",")[-1]) for r in (tmp_path / "m" / "predictions.csv").read_text().split()[1:]}
    assert abs(doc["features"][0]["properties"]["probability"] - prob["P3"]) < 1e-5

    code, out, err = cli("export", st.path, "--format", "h5", "--out", tmp_path / "h5", "--features", tmp_path / "f.zarr")
    assert code == 0, err
    with h5py.File(tmp_path / "h5" / "S3.h5", "r") as h:
        c = h["coords"]
        assert c.shape == (6, 2) and c[1].tolist() == [128, 192]
        assert (c.attrs["patch_size"], c.attrs["patch_size_level0"]) == (32, 128) and "patch_level" not in c.attrs
        assert c.attrs["target_magnification"] == 10 and c.attrs["level0_magnification"] == 40
        feats = np.asarray(zarr.open_group(str(tmp_path / "f.zarr"), mode="r")["features"][18:24], np.float32)
        assert h["features"].shape == (6, 24) and np.array_equal(h["features"][:], feats)

    code, out, err = cli("mil", "train", pipe, "--features", tmp_path / "f.zarr", "--out", tmp_path / "cv", "--folds", "3")
    assert code == 0, err
    cv = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert cv["folds"] == 3 and len(cv["test_auc"]) == 3 and "mean ± sd" in out
    code, out, err = cli("export", st.path, "--format", "png", "--out", tmp_path / "png", "--features", tmp_path / "f.zarr",
                         "--mil", tmp_path / "m")
    assert code == 0, err
    from PIL import Image

    from matplotlib import colormaps

    img = np.asarray(Image.open(tmp_path / "png" / "S3.png")).astype(int)
    # no QA picture: a white canvas at the thumbnail scale 1/32; patch r covers x 4r..4r+3, y 6..9
    assert img.shape == (11, 25, 3) and (img[:6] == 255).all() and (img[10:] == 255).all()
    assert not (img[6:10, :24] == 255).all(axis=-1).any()  # every patch painted
    top = int(np.argmax(att))
    want = 0.4 * 255 + 0.6 * 255 * np.array(colormaps["inferno"](1.0)[:3])  # the most attended: the hottest colour
    np.testing.assert_allclose(img[7, 4 * top + 1], want, atol=1.5)
    code, out, err = cli("export", st.path, "--format", "shp", "--out", tmp_path / "x")
    assert code == 2 and "--format must be one of geojson, h5, png" in err


@pytest.mark.gpu
def test_features_on_gpu_match_cpu(made, tmp_path):
    root, st, pipe = made
    features.extract_features(pipe, st.path, tmp_path / "g.zarr", device="cuda", progress=False, log=None)
    cpu = np.asarray(zarr.open_group(str(root / "f.zarr"), mode="r")["features"][:], np.float32)
    gpu = np.asarray(zarr.open_group(str(tmp_path / "g.zarr"), mode="r")["features"][:], np.float32)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-2, atol=1e-2)


def test_example_pipeline_extends_liu2020():
    """schemas/examples/uni_abmil.json validates and extracts exactly like liu2020.json (same store)."""
    uni = config.load(config.example("uni_abmil"))
    assert uni["encoder"]["name"] == "uni" and uni["aggregator"]["name"] == "abmil"
    assert config.extraction_hash(uni) == config.extraction_hash(config.load(config.example("liu2020")))
    errs = config.validation_errors({"encoder": {"name": "uni", "params": {"weigths": "x"}}, "mil": {"epochs": 0}})
    assert any("weigths" in e for e in errs) and any("epochs" in e for e in errs)


@pytest.mark.slow
def test_mil_demo_end_to_end(tmp_path):
    """`slidestream mil demo` in miniature: synthetic slides -> extract -> features -> ABMIL -> evaluate -> heatmap."""
    r = mil.demo(tmp_path, n_patients=8, epochs=3, bootstrap=0, log=None,
                 fusion_split="train")  # plumbing only: with 8 patients val holds 1 per class, too few to fit age_gda
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "mil" / "model.safetensors").is_file()
    assert "image" in r["metrics"]["test"] and "age+image" in r["metrics"]["test"]
    assert len(r["heatmaps"]) == 1 and r["heatmaps"][0].endswith(".png")
    settings = json.loads((tmp_path / "mil" / "mil.json").read_text())["settings"]
    assert settings["weight_decay"] == 0.1 and settings["patience"] == 5  # the demo's settings, recorded in its bundle
