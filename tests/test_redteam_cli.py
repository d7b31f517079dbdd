"""Red team of the newer commands (features, mil, export, predict, evaluate): bad input ends in one line naming
the thing and the fix (exit 2, no traceback) and is never used as good data."""
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file, save_file

from conftest import slidestream_cmd
from slidestream.engine import bundle, config, evaluate, export, features, mil, registry, splits
from slidestream.engine.device import resolve_device
from slidestream.engine.errors import ConfigError
from slidestream.engine.store import PatchStore
from test_mil import PIPE

HEADER = "patient_id,label,age,split,image_prob"
ROWS = ["A,1,41,train,0.9", "B,0,60,train,0.2", "C,1,45,val,0.7", "D,0,70,val,0.4", "E,1,50,test,0.8", "F,0,66,test,0.3"]


def _store(path, prefix="S", n=8, per=4, patch=32):
    pipe = config.with_defaults({"name": "t", "magnification": 10, "patches": {"size": patch}, "store": {"chunk": 8}})
    st = PatchStore.create(path, patch, pipe["store"], {"extraction_hash": config.extraction_hash(pipe), "pipeline": pipe})
    rng = np.random.default_rng(0)
    for i in range(n):
        meta = {"slide_id": f"{prefix}{i}", "patient_id": f"P{i}", "label": i % 2, "age": 40.0 + 3 * i,
                "x": np.arange(per) * 128, "y": np.full(per, 64 * i), "size0": 128}
        st.append(f"{prefix}{i}", rng.integers(0, 255, (per, patch, patch, 3), dtype=np.uint8), meta, {"status": "done"})
    splits.split_store(st, (2, 1, 1), seed=0)
    return st


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("redteam")
    st = _store(root / "store")
    pipe = config.parse(PIPE)
    features.extract_features(pipe, st.path, root / "f.zarr", progress=False, log=None)
    mil.train(pipe, root / "f.zarr", root / "m", log=None)
    return root, st, pipe


def _cli(*args, timeout=120):
    r = subprocess.run([*slidestream_cmd(), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stderr


def _table(path, lines, encoding="utf-8"):
    path.write_bytes(("\n".join([HEADER, *lines]) + "\n").encode(encoding))
    return path


def test_output_under_a_regular_file_is_one_line(made, tmp_path):
    root, st, _ = made
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for args in (("evaluate", _table(tmp_path / "p.csv", ROWS), "--out", blocker / "ev", "--bootstrap", "0"),
                 ("export", st.path, "--format", "geojson", "--out", blocker / "gj")):
        code, err = _cli(*args)
        assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
        assert err.startswith(f"error: {blocker}") and "Not a directory" in err, err


@pytest.mark.parametrize("row, encoding, match", [
    ("Eé,1,50,test,0.8", "latin-1", "is not UTF-8 text"),
    (",1,50,test,0.8", "utf-8", "line 6: patient_id is empty"),
    ("E,1,inf,test,0.8", "utf-8", "patient 'E' has age inf"),
    ("E,1,-50,test,0.8", "utf-8", "patient 'E' has age -50"),
    ("E,1,50,test,nan", "utf-8", "image_prob is missing"),
    ("A,1,50,test,0.8", "utf-8", "patient 'A' appears 2 times"),  # A is also in train
])
def test_evaluate_refuses_bad_rows(tmp_path, row, encoding, match):
    p = _table(tmp_path / "p.csv", ROWS[:4] + [row] + ROWS[5:], encoding)
    with pytest.raises(ConfigError, match=match):
        evaluate.load_predictions(p)


def test_one_class_roc_draws_without_warnings(tmp_path):
    t = evaluate.load_predictions(_table(tmp_path / "p.csv", ROWS[:4] + ["E,0,50,test,0.8", "F,0,66,test,0.3"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate.write_report(evaluate.evaluate(t, bootstrap=0), tmp_path / "ev")


def test_predict_refuses_bad_age_and_device(cli, tmp_path):
    for age in ("nan", "inf", "-5", "500"):
        code, _, err = cli("predict", tmp_path / "model", tmp_path / "x.svs", "--age", age)
        assert code == 2 and "--age must be the patient's age in years" in err, err
    with pytest.raises(ConfigError, match="device must be auto, cpu or cuda, not 'tpu'"):
        resolve_device("tpu")


def test_export_refuses_an_incomplete_feature_store(made, tmp_path):
    root, st, _ = made
    fs = tmp_path / "f.zarr"
    shutil.copytree(root / "f.zarr", fs)
    g = zarr.open_group(str(fs), mode="r+")
    info = dict(g.attrs["slidestream_features"])
    info["done"] = {k: v for k, v in info["done"].items() if k != "S7"}  # killed before the last slide
    g.attrs["slidestream_features"] = info
    with pytest.raises(ConfigError, match="is incomplete"):
        export.export(st.path, "h5", tmp_path / "h5", features=fs)


def _reseal(m, meta=None):
    """Rewrite a MIL bundle's mil.json with fresh sha256s and hash (what a careful forger does)."""
    meta = meta or json.loads((m / "mil.json").read_text())
    meta = {k: v for k, v in meta.items() if k not in ("files", "hash")}
    (m / "mil.json").write_text(json.dumps(bundle.seal(m, meta, mil.FILES)))


def test_export_refuses_a_mil_bundle_of_other_encoder_weights(made, tmp_path):
    root, st, _ = made
    m = tmp_path / "m"
    shutil.copytree(root / "m", m)
    meta = json.loads((m / "mil.json").read_text())
    meta["encoder"]["params"] = {**meta["encoder"]["params"], "model": "vit_small_patch16_224"}  # same dim, other net
    _reseal(m, meta)
    with pytest.raises(ConfigError, match="give the feature store it was trained on"):
        export.export(st.path, "geojson", tmp_path / "gj", features=root / "f.zarr", mil=m)


@pytest.mark.parametrize("damage, match", [
    (lambda sd: sd.pop("mean"), "have no tensor 'mean'"),
    (lambda sd: sd.update(extra=torch.zeros(1)), "have a tensor 'extra' the model does not have"),
    (lambda sd: sd.update(mean=sd["mean"][:-1].contiguous()), r"'mean' has shape \(23,\), the model needs \(24,\)"),
])
def test_mil_bundle_weights_mismatch_is_one_line(made, tmp_path, damage, match):
    root, _, _ = made
    m = tmp_path / "m"
    shutil.copytree(root / "m", m)
    sd = load_file(str(m / "model.safetensors"))
    damage(sd)
    save_file(sd, str(m / "model.safetensors"))
    _reseal(m)  # re-hashed: the sha256 check cannot catch it, the shape check must
    with pytest.raises(ConfigError, match=match):
        mil.load_bundle(m)
    (m / "model.safetensors").write_bytes(b"not safetensors")
    _reseal(m)
    with pytest.raises(ConfigError, match="cannot read the weights"):
        mil.load_bundle(m)
    (m / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="incomplete: model.safetensors is missing"):
        mil.load_bundle(m)
    (m / "mil.json").write_text("{")
    with pytest.raises(ConfigError, match="cannot read mil.json"):
        mil.load_bundle(m)


def test_classifier_bundle_with_rehashed_wrong_weights_is_one_line(tmp_path):
    model = registry.get("classifier", "small_cnn").build(num_classes=2, in_channels=3, dropout=0.5, width=8)
    pipe = config.parse({"name": "b", "classifier": {"name": "small_cnn", "params": {"width": 8}}})
    out = bundle.save(tmp_path / "b", model, pipe, {"arch": "small_cnn", "classifier_params": {"width": 8},
                                                     "in_channels": 3, "input_size": 32, "aggregation": {"method": "mean"}})
    sd = load_file(str(out / "model.safetensors"))
    key = next(k for k, v in sd.items() if v.ndim)
    sd[key] = sd[key][:1].contiguous()
    save_file(sd, str(out / "model.safetensors"))  # re-saved and re-hashed: the hashes cannot catch it
    meta = json.loads((out / "bundle.json").read_text())
    meta["files"]["model.safetensors"] = bundle.sha256_file(out / "model.safetensors")
    meta["hash"] = bundle._meta_hash(meta)
    (out / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=f"{key!r} has shape"):
        bundle.load(out)


def test_mil_train_refuses_nan_features_and_another_store(made, tmp_path):
    root, _, pipe = made
    other = _store(tmp_path / "other", prefix="T")  # as many rows, other slides
    with pytest.raises(ConfigError, match="is not the one the feature store"):
        mil.train(pipe, root / "f.zarr", tmp_path / "m1", store=other.path, log=None)
    fs = tmp_path / "nan.zarr"
    shutil.copytree(root / "f.zarr", fs)
    a = zarr.open_group(str(fs), mode="r+")["features"]
    x = a[:]
    x[5] = np.nan
    a[:] = x
    g = zarr.open_group(str(fs), mode="r+")  # as an encoder wrote them: the header's CRC32s of these rows
    info = dict(g.attrs[features.ATTR])
    g.attrs[features.ATTR] = {**info, "sums": {k: features._values_crc(x[r0:r1]) for k, (r0, r1) in info["done"].items()}}
    with pytest.raises(ConfigError, match=r"1 row\(s\) hold NaN/inf features \(first: row 5\)"):
        mil.train(pipe, fs, tmp_path / "m2", log=None)


def test_predict_store_names_patients_without_patches(tmp_path):
    from slidestream.engine import predict

    st = _store(tmp_path / "s", n=4)
    st = PatchStore.open(st.path, mode="r+")
    st.append("S9", np.zeros((0, 32, 32, 3), np.uint8), {}, {"status": "empty", "patient_id": "P9"})  # no tissue
    model = registry.get("classifier", "small_cnn").build(num_classes=2, in_channels=3, dropout=0.5, width=8)
    b = bundle.save(tmp_path / "b", model, config.parse({"name": "b", "classifier": {"name": "small_cnn"}}),
                    {"arch": "small_cnn", "classifier_params": {"width": 8}, "in_channels": 3, "input_size": 32,
                     "aggregation": {"method": "mean"}, "extraction_hash": st.manifest["extraction_hash"]})
    r = predict.predict_store(b, st.path, tmp_path / "p.csv", "cpu")
    assert r["patients"] == 4 and r["without_patches"] == ["P9"]


@pytest.mark.parametrize("damage", ["chunk", "array", "zarr_json"])
def test_damaged_feature_store_is_refused_not_read_as_zeros(made, tmp_path, damage):
    """A lost chunk file read as zeros (zarr's fill value), a missing array or a truncated zarr.json: one line
    naming the store, never features of zeros and never a traceback."""
    root, st, pipe = made
    fs = tmp_path / "f.zarr"
    shutil.copytree(root / "f.zarr", fs)
    if damage == "chunk":
        for f in (fs / "features" / "c").rglob("*"):
            if f.is_file():
                f.unlink()
    elif damage == "array":
        shutil.rmtree(fs / "meta" / "x")
    else:
        text = (fs / "zarr.json").read_text()
        (fs / "zarr.json").write_text(text[: len(text) // 2])
    with pytest.raises(features.StoreError, match=str(fs)):
        features.FeatureStore(fs)
    if damage == "zarr_json":  # resuming `features` into it
        with pytest.raises(features.StoreError, match="choose a new --out"):
            features.extract_features(pipe, st.path, fs, progress=False, log=None)
    (tmp_path / "p.json").write_text(json.dumps(PIPE))
    code, err = _cli("mil", "train", tmp_path / "p.json", "--features", fs, "--store", st.path, "--out", tmp_path / "m")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_missing_patch_shard_is_refused_not_read_as_zeros(tmp_path):
    """A shard file lost from a copied store read as black patches (zarr's fill value) and predictions moved
    silently; now every read path names the slide and the file."""
    st = _store(tmp_path / "s", n=4, per=20)
    shard = next(f for f in sorted((st.path / "patches" / "c").rglob("*")) if f.is_file())
    shard.unlink()
    st = PatchStore.open(st.path)
    with pytest.raises(features.StoreError, match="slides 'S0' are missing"):
        st.read(0, 4)
    with pytest.raises(features.StoreError, match="damaged"):
        np.asarray(st.patches)
    assert st.read(20, 24).shape == (4, 32, 32, 3)  # the other slides' shards are intact


def test_mil_bundle_with_another_runs_weights_of_the_same_shape_is_refused(made, tmp_path, capsys):
    """mil.json records model.safetensors' sha256 and its own hash (bundle.seal): other weights of the same shape
    (another run's) or an edited mil.json are refused in one line; an unsealed (older) bundle loads with a warning."""
    root, _, _ = made
    m = tmp_path / "m"
    shutil.copytree(root / "m", m)
    sd = load_file(str(m / "model.safetensors"))
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in sd.items()}, str(m / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"model.safetensors does not match its recorded sha256 \(modified or corrupt\)"):
        mil.load_bundle(m)
    shutil.copy(root / "m" / "model.safetensors", m / "model.safetensors")
    mil.load_bundle(m)  # the right weights load
    meta = json.loads((m / "mil.json").read_text())
    (m / "mil.json").write_text(json.dumps({**meta, "best_epoch": meta["best_epoch"] + 1}))
    with pytest.raises(ConfigError, match="mil.json does not match its hash"):
        mil.load_bundle(m)
    (m / "mil.json").write_text(json.dumps({k: v for k, v in meta.items() if k not in ("files", "hash")}))
    mil.load_bundle(m)
    assert "records no sha256 of its weights" in capsys.readouterr().err


def test_mil_bundle_records_its_patients_and_evaluate_refuses_them_in_test(made, tmp_path):
    """A MIL bundle names its train and val patients; `evaluate --bundle` on it refuses a test split holding one
    (exit 2, one line); the bundle's own predictions evaluate."""
    root, st, _ = made
    meta = json.loads((root / "m" / "mil.json").read_text())
    tab = st.table(["patient_id", "split"])
    for split in ("train", "val"):
        ids = sorted({str(p) for p, s in zip(tab["patient_id"], tab["split"]) if s == split})
        assert meta["patients"][split] == {"n": len(ids), "patients": ids, "ids_digest": evaluate.ids_digest(ids)}
    preds = root / "m" / "predictions.csv"
    code, err = _cli("evaluate", preds, "--out", tmp_path / "ok", "--bundle", root / "m", "--bootstrap", "0")
    assert code == 0, err
    victim = meta["patients"]["train"]["patients"][0]
    lines = preds.read_text().splitlines()
    leaky = tmp_path / "leak.csv"
    leaky.write_text("\n".join([lines[0]] + [ln.replace(",train,", ",test,") if ln.startswith(victim + ",") else ln
                                             for ln in lines[1:]]) + "\n")
    code, err = _cli("evaluate", leaky, "--out", tmp_path / "bad", "--bundle", root / "m", "--bootstrap", "0")
    assert code == 2 and err.count("\n") == 1, err
    assert f"patient '{victim}' is in this table's test split, but the bundle trained on it" in err


def test_heatmap_is_drawn_over_the_qa_thumbnail_beside_the_store(tmp_path):
    """`export --format png` paints attention over extract's QA picture, which lives beside the store
    (STORE.qa/); it looked inside the store (the layout before format 2) and drew on a blank white canvas."""
    from PIL import Image

    from slidestream.engine.store import beside

    pipe = config.with_defaults({"name": "t", "magnification": 10, "patches": {"size": 16}, "store": {"chunk": 8}})
    st = PatchStore.create(tmp_path / "s", 16, pipe["store"], {"extraction_hash": config.extraction_hash(pipe), "pipeline": pipe})
    st.append("S0", np.zeros((2, 16, 16, 3), np.uint8) + 100, {"slide_id": "S0", "patient_id": "P0", "label": 1, "age": 50.0,
              "x": np.array([0, 320]), "y": np.array([0, 0]), "size0": 64}, {"status": "done", "dimensions": [640, 320]})
    qa = beside(st.path, "qa")
    qa.mkdir()
    Image.new("RGB", (20, 10), (10, 200, 30)).save(qa / "S0.png")  # the 1/32 thumbnail of a 640 x 320 slide
    img = np.asarray(export.heatmap(qa, st.records()["S0"], 32.0, "S0", np.array([0, 320]), np.array([0, 0]),
                                    np.array([64, 64]), np.array([0.2, 0.8])))
    assert img.shape == (10, 20, 3)
    assert (img[5:, :] == (10, 200, 30)).all()  # unpainted: the thumbnail's pixels, not white
    assert not (img[:2, :2] == (10, 200, 30)).all()  # the patches are painted over it


@pytest.mark.parametrize("args, where, what", [
    (["extract"], "slidestream extract", "Missing argument 'pipeline'"),
    (["extract", "--bogus", "p.json"], "slidestream extract", "No such option: --bogus"),
    (["frobnicate"], "slidestream", "No such command 'frobnicate'"),
    (["train", "--epochs", "x", "a", "b"], "slidestream train", "Invalid value for '--epochs'"),
])
def test_usage_errors_are_one_line_naming_the_command_and_its_help(tmp_path, args, where, what):
    """A command-line usage error is `error: <command>: <what>; see '<command> --help'`, one line, exit 2, as
    every other error (it was click's five-line boxed usage message)."""
    exe = shutil.which("slidestream", path=str(Path(sys.executable).parent)) or "slidestream"  # the console script
    p = subprocess.run([exe, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith(f"error: {where}: {what}"), p.stderr
    assert p.stderr.rstrip().endswith(f"see '{where} --help'"), p.stderr
    assert p.stdout == ""


def test_help_and_no_arguments_still_print_the_help(tmp_path):
    for args, code in (([], 2), (["--help"], 0), (["extract", "--help"], 0)):
        p = subprocess.run([*slidestream_cmd(), *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert p.returncode == code and "Usage: " in p.stdout + p.stderr, (args, p.returncode, p.stderr[-300:])
