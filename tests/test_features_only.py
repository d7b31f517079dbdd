"""`extract --features-only`: tiles straight into the encoder, the feature store `features` writes, no patches kept."""
import csv
import json

import numpy as np
import pytest
import zarr

from conftest import EXAMPLE
from slidestream.engine import config, features, mil, splits, synthetic
from slidestream.engine.errors import ConfigError, StoreError
from slidestream.engine.runner import extract, read_cohort
from slidestream.engine.store import PatchStore

TINY = {"name": "timm", "params": {"model": "vit_tiny_patch16_224", "input_size": 32,
                                   "kwargs": {"img_size": 32, "depth": 2, "embed_dim": 24, "num_heads": 2}}}


def _pipeline(tmp_path, encoder=TINY, **patches):
    doc = json.loads(EXAMPLE.read_text())
    doc["tiling"]["params"].update(size=256, min_tissue=0.2, max_tiles=6)
    doc["patches"] = {"size": 64, "mode": "random", "per_tile": 4, **patches}
    doc["thumbnail"] = {"scale": 16}
    if encoder:
        doc["encoder"] = encoder
        doc["features"] = {"batch_size": 5}  # batches cross tile boundaries (4 patches per tile)
    f = tmp_path / f"pipe{len(list(tmp_path.glob('pipe*.json')))}.json"
    f.write_text(json.dumps(doc))
    return f


def _cohort(tmp_path, n=4, blank=True, missing=True):
    """n synthetic slides (two per patient), plus a blank one (no tissue: empty) and a missing one (error)."""
    rows = []
    for i in range(n):
        p = synthetic.make_slide(tmp_path / f"s{i}.svs", size=(1536, 1024), label=i % 2, seed=i)
        rows.append([p, f"P{i // 2}", (i // 2) % 2, 40 + i // 2, ""])
    if blank:
        real = synthetic.render
        synthetic.render = lambda size, *a, **k: np.full((size[1], size[0], 3), 242, np.uint8)
        try:
            rows.insert(1, [synthetic.make_slide(tmp_path / "blank.svs", size=(1024, 768)), "PB", 0, 60, ""])
        finally:
            synthetic.render = real
    if missing:
        rows.append([tmp_path / "missing.svs", "PM", 1, 70, ""])
    f = tmp_path / "cohort.csv"
    with open(f, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_path", "patient_id", "label", "age", "mpp"])
        w.writerows(rows)
    return f


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The same cohort through `extract` + `features` (ref) and through `extract --features-only` (fo)."""
    root = tmp_path_factory.mktemp("fo")
    pipe_path = _pipeline(root)
    pipe = config.load(pipe_path)
    csvf = _cohort(root)
    extract(pipe, read_cohort(csvf), root / "store", progress=False)
    features.extract_features(pipe, root / "store", root / "ref.zarr", progress=False, log=None)
    s = features.extract_features_only(pipe, read_cohort(csvf), root / "fo.zarr", progress=False,
                                       pipeline_path=str(pipe_path))
    return root, pipe_path, csvf, s


def _same_store(a, b):
    fa, fb = features.FeatureStore(a), features.FeatureStore(b)
    assert len(fa) == len(fb) > 0 and fa.complete() and fb.complete()
    # same encoder, same input batches (EncoderSink batches rows like extract_features): equal float16
    assert np.array_equal(np.asarray(fa.features[:]), np.asarray(fb.features[:]))
    for c in features.CARRIED:
        assert np.array_equal(fa.column(c), fb.column(c), equal_nan=c == "age"), c
    for k in ("encoder", "params", "weights_sha256", "dim", "dtype", "extraction_hash"):
        assert fa.info[k] == fb.info[k], k


def test_features_only_equals_extract_then_features(both):
    root, _, _, s = both
    _same_store(root / "ref.zarr", root / "fo.zarr")
    fo = features.FeatureStore(root / "fo.zarr")
    assert fo.info["features_only"] and fo.info["patch_store"] is None
    assert fo.features.dtype == np.float16 and fo.features.shape[1] == 24
    by = {x["slide_id"]: x for x in s["slides"]}
    assert by["blank"]["status"] == "empty" and "no tissue" in by["blank"]["reason"]
    assert by["missing"]["status"] == "error" and "not found" in by["missing"]["reason"] and s["failed"] == 1
    assert [by[f"s{i}"]["status"] for i in range(4)] == ["done"] * 4
    assert s["rows"] == len(PatchStore.open(root / "store")) == sum(by[f"s{i}"]["patches"] for i in range(4))
    assert set(fo.info["errors"]) == {"missing"} and fo.info["slides"]["blank"]["status"] == "empty"
    assert not (root / "fo.zarr.partial").exists() and not (root / "fo.zarr.lock").exists()
    assert (root / "fo.zarr.qa" / "s0.png").is_file()
    # opens with plain zarr, and MIL reads it unchanged (the split from the equivalent patch store)
    g = zarr.open_group(str(root / "fo.zarr"), mode="r")
    assert g["features"].shape == (s["rows"], 24) and g["meta/x"].dtype == np.int64
    st = PatchStore.open(root / "store", mode="r+")
    splits.split_store(st, (2, 1, 1), seed=0)
    bags = mil.patient_bags(fo, st.column("split"))
    assert sorted(bags["patients"].tolist()) == ["P0", "P1"]
    with pytest.raises(ConfigError, match="use --folds K, or --store"):
        mil.train(config.load(both[1]), root / "fo.zarr", root / "m", log=None)


def test_resume_after_kill_redoes_only_unfinished_slides(both, tmp_path):
    root, pipe_path, csvf, _ = both
    pipe = config.load(pipe_path)
    cohort = read_cohort(csvf)
    out = tmp_path / "fo.zarr"
    s = features.extract_features_only(pipe, cohort[:3], out, progress=False, qa=False)  # s0, blank, s1
    assert [x["status"] for x in s["slides"]] == ["done", "empty", "done"]
    g = zarr.open_group(str(out), mode="r+")
    rows = g.attrs["slidestream_features"]["rows"]
    # as if killed while writing the next slide: arrays grown and half written, the header not yet
    for name in ["features"] + [f"meta/{c}" for c in features.CARRIED]:
        g[name].resize((rows + 1000, *g[name].shape[1:]))  # more than the next slide writes
    g["features"][rows:] = 9
    assert not features.FeatureStore(out).complete()  # a reader sees the unfinished write
    g["features"][0] = 5  # a finished slide: must not be encoded again
    s = features.extract_features_only(pipe, cohort[:3] + cohort[-1:], out, progress=False, qa=False)  # + missing
    assert s["failed"] == 1 and s["rows"] == rows == g["features"].shape[0] == g["meta/x"].shape[0]  # cut back
    s = features.extract_features_only(pipe, cohort, out, progress=False, qa=False)
    by = {x["slide_id"]: x["status"] for x in s["slides"]}
    assert by == {"s0": "skipped", "blank": "skipped", "s1": "skipped", "s2": "done", "s3": "done", "missing": "error"}
    assert s["encoded"] == s["rows"] - rows and s["skipped"] == 3 and s["failed"] == 1
    assert g["features"].shape[0] == g["meta/slide_id"].shape[0] == s["rows"] and features.FeatureStore(out).complete()
    ref = np.asarray(zarr.open_group(str(root / "fo.zarr"), mode="r")["features"][:])
    now = np.asarray(g["features"][:])
    assert np.all(now[0] == 5) and np.array_equal(now[1:], ref[1:])
    # the missing slide appears: a rerun retries only it (its error record goes), the rest is kept
    synthetic.make_slide(tmp_path / "missing.svs", size=(1536, 1024), label=1, seed=9)
    rows_csv = list(csv.reader(open(csvf)))
    rows_csv[-1][0] = str(tmp_path / "missing.svs")
    fixed = tmp_path / "fixed.csv"
    with open(fixed, "w", newline="") as fh:
        csv.writer(fh).writerows(rows_csv)
    s = features.extract_features_only(pipe, read_cohort(fixed), out, progress=False, qa=False)
    by = {x["slide_id"]: x["status"] for x in s["slides"]}
    assert by["missing"] == "done" and sum(v == "skipped" for v in by.values()) == 5 and s["failed"] == 0
    fs = features.FeatureStore(out)
    assert fs.complete() and not fs.info["errors"] and (fs.column("slide_id") == "missing").sum() == s["encoded"] > 0


def test_refuses_another_encoder_or_pipeline(both, tmp_path):
    import shutil

    root, pipe_path, csvf, _ = both
    out = tmp_path / "fo.zarr"
    shutil.copytree(root / "fo.zarr", out)
    cohort = read_cohort(csvf)
    other = config.load(_pipeline(tmp_path, {**TINY, "params": {**TINY["params"], "input_size": 48}}))
    with pytest.raises(StoreError, match="made with another params"):
        features.extract_features_only(other, cohort, out, progress=False)
    other = config.load(_pipeline(tmp_path, per_tile=8))
    with pytest.raises(StoreError, match=r"another pipeline \(tiling, filters, patches\)"):
        features.extract_features_only(other, cohort, out, progress=False)
    with pytest.raises(StoreError, match="not a store of `extract --features-only`"):
        features.extract_features_only(config.load(pipe_path), cohort, root / "ref.zarr", progress=False)
    with pytest.raises(StoreError, match="written by `extract --features-only`"):
        features.extract_features(config.load(pipe_path), root / "store", out, progress=False, log=None)
    assert not (tmp_path / "fo.zarr.lock").exists()


def test_command(both, cli, tmp_path):
    root, pipe_path, csvf, _ = both
    code, out, err = cli("extract", pipe_path, "--slides", csvf, "--out", tmp_path / "f.zarr", "--features-only",
                         "--json", "--no-qa")
    assert code == 1, err  # the missing slide, as for extract
    s = json.loads(out.strip().splitlines()[-1])
    assert s["features_only"] and s["encoder"] == "timm" and s["failed"] == 1
    _same_store(root / "ref.zarr", tmp_path / "f.zarr")
    code, out, err = cli("extract", _pipeline(tmp_path, encoder=None), "--slides", csvf, "--out", tmp_path / "g.zarr",
                         "--features-only")
    assert code == 2 and "no encoder section" in err and "\n" not in err.strip()
    code, out, err = cli("extract", pipe_path, "--slides", csvf, "--out", tmp_path / "g.zarr", "--features-only",
                         "--workers", "2")
    assert code == 2 and "one process" in err
    bad = tmp_path / "bad.csv"
    bad.write_text("slide_path,patient_id,label,age\nx.svs,P1,2,50\n")
    code, out, err = cli("extract", pipe_path, "--slides", bad, "--out", tmp_path / "g.zarr", "--features-only")
    assert code == 2 and "label" in err and not (tmp_path / "g.zarr").exists()


def test_encoder_sink_batches_rows_like_the_feature_command():
    """Whatever the tile batches, the encoder sees batch_size rows counted from the slide's first row (what
    `slidestream features` feeds it), so both paths give the same numbers on any backend."""
    import torch

    class Recorder(torch.nn.Module):  # a real (tiny) encoder that also notes its batch sizes
        def __init__(self):
            super().__init__()
            self.calls = []

        def forward(self, x):
            self.calls.append(len(x))
            return x.mean(dim=(2, 3))

    enc = Recorder()
    spec = {"name": "rec", "dim": 3, "input_size": 8, "mean": [0, 0, 0], "std": [1, 1, 1]}
    patches = np.random.default_rng(0).integers(0, 255, (23, 8, 8, 3), dtype=np.uint8)
    sink = features.EncoderSink(enc, spec, "cpu", 5, 23)
    for a, b in [(0, 4), (4, 8), (8, 9), (9, 21), (21, 23)]:
        sink.write(a, patches[a:b])
    out = sink.close()
    assert enc.calls == [5, 5, 5, 5, 3]
    np.testing.assert_allclose(out, patches.mean(axis=(1, 2)) / 255, rtol=1e-6)
    with pytest.raises(ValueError, match="out of order"):
        features.EncoderSink(enc, spec, "cpu", 5, 23).write(4, patches[4:8])


@pytest.mark.gpu
def test_features_only_on_gpu_matches_features_on_gpu(both, tmp_path):
    root, pipe_path, csvf, _ = both
    pipe = config.load(pipe_path)
    features.extract_features(pipe, root / "store", tmp_path / "ref.zarr", device="cuda", progress=False, log=None)
    features.extract_features_only(pipe, read_cohort(csvf), tmp_path / "fo.zarr", device="cuda", progress=False)
    a = np.asarray(features.FeatureStore(tmp_path / "ref.zarr").features[:], np.float32)
    b = np.asarray(features.FeatureStore(tmp_path / "fo.zarr").features[:], np.float32)
    np.testing.assert_allclose(b, a, rtol=1e-2, atol=1e-2)  # same batches; cuDNN may pick other kernels per run


@pytest.mark.slow
def test_sigkill_and_resume_gives_the_same_features(both, tmp_path):
    """Killed (-9) right after a slide lands, several times, then rerun: the store equals an uninterrupted one."""
    import signal
    import subprocess
    import sys
    import time

    root, pipe_path, csvf, _ = both
    out = tmp_path / "k.zarr"
    cmd = [sys.executable, "-m", "slidestream.engine", "extract", str(pipe_path), "--slides", str(csvf), "--out",
           str(out), "--features-only", "--quiet", "--no-qa"]

    def landed() -> int:
        try:
            return len(zarr.open_group(str(out), mode="r").attrs["slidestream_features"]["done"])
        except Exception:
            return -1

    rng, kills = np.random.default_rng(0), 0
    for _ in range(6):
        before = landed()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and landed() <= before:
            time.sleep(0.002)
        time.sleep(float(rng.uniform(0, 0.05)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if proc.returncode in (0, 1):  # 1: the missing slide
            break
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 1 and "missing" in r.stdout, r.stderr
    assert kills >= 2
    _same_store(root / "fo.zarr", out)


def test_rerun_updates_changed_cohort_values(both, tmp_path):
    import shutil

    root, pipe_path, csvf, _ = both
    out = tmp_path / "fo.zarr"
    shutil.copytree(root / "fo.zarr", out)
    rows = list(csv.reader(open(csvf)))
    for i in (1, 3):  # patient P0 (slides s0, s1): label 0 -> 1, age 40 -> 77
        rows[i][2], rows[i][3] = "1", "77"
    changed = tmp_path / "changed.csv"
    with open(changed, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    s = features.extract_features_only(config.load(pipe_path), read_cohort(changed), out, progress=False, qa=False)
    by = {x["slide_id"]: x for x in s["slides"]}
    assert by["s0"]["status"] == "updated" and "label 0 -> 1" in by["s0"]["reason"] and s["encoded"] == 0
    fs = features.FeatureStore(out)
    r0, r1 = fs.info["done"]["s0"][0], fs.info["done"]["s1"][1]
    assert (fs.column("label")[r0:r1] == 1).all() and np.allclose(fs.column("age")[r0:r1], 77)
    assert (fs.column("label")[r1:] == features.FeatureStore(root / "fo.zarr").column("label")[r1:]).all()
    assert r1 < len(fs) and np.array_equal(np.asarray(fs.features[:]),
                                           np.asarray(features.FeatureStore(root / "fo.zarr").features[:]))
    rows[1][4] = "0.5"  # s0 at a new resolution: other patches, so another store
    with open(changed, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(StoreError, match="mpp .* use a new --out"):
        features.extract_features_only(config.load(pipe_path), read_cohort(changed), out, progress=False, qa=False)


def test_export_from_a_features_only_store(both, cli, tmp_path):
    """`export` reads a store of `extract --features-only` as it reads the patch store + feature store of the same
    extraction: equal GeoJSON, equal h5 (coords, CLAM attributes, features); clear errors otherwise."""
    import shutil

    import h5py

    from slidestream.engine.export import export

    root = both[0]
    a = export(root / "store", "geojson", tmp_path / "a")
    code, out, err = cli("export", root / "fo.zarr", "--format", "geojson", "--out", tmp_path / "b")
    assert code == 0, err
    b = sorted((tmp_path / "b").glob("*.geojson"))
    assert [p.name for p in a] == [p.name for p in b] == [f"s{i}.geojson" for i in range(4)]
    for pa, pb in zip(a, b):
        assert json.loads(pa.read_text()) == json.loads(pb.read_text())
    a = export(root / "store", "h5", tmp_path / "ah", features=root / "ref.zarr")
    b = export(root / "fo.zarr", "h5", tmp_path / "bh")
    assert [p.name for p in a] == [p.name for p in b]
    for pa, pb in zip(a, b):
        with h5py.File(pa, "r") as ha, h5py.File(pb, "r") as hb:
            assert np.array_equal(ha["coords"][:], hb["coords"][:]) and len(hb["coords"]) > 0
            assert dict(ha["coords"].attrs).keys() == dict(hb["coords"].attrs).keys()
            for k, v in ha["coords"].attrs.items():
                assert np.array_equal(v, hb["coords"].attrs[k]), k
            assert np.array_equal(ha["features"][:], hb["features"][:])
    with pytest.raises(ConfigError, match="is a feature store of `slidestream features`: give its patch store"):
        export(root / "ref.zarr", "geojson", tmp_path / "x")
    with pytest.raises(ConfigError, match="holds its own features; drop --features"):
        export(root / "fo.zarr", "h5", tmp_path / "x", features=root / "ref.zarr")
    old = tmp_path / "old.zarr"  # written before the header recorded patch size and magnification
    shutil.copytree(root / "fo.zarr", old)
    g = zarr.open_group(str(old), mode="r+")
    g.attrs[features.ATTR] = {k: v for k, v in g.attrs[features.ATTR].items() if k not in ("patch_size", "magnification")}
    assert len(export(old, "geojson", tmp_path / "og")) == 4
    with pytest.raises(ConfigError, match="did not record the patch size and magnification"):
        export(old, "h5", tmp_path / "oh")
