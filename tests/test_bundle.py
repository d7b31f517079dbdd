"""Model bundles (safetensors, hashes, pipeline check) and prediction."""

import json

import pytest
import torch
from typer.testing import CliRunner

from slidestream.engine import bundle, config, predict, splits, train
from slidestream.engine.cli import app
from slidestream.engine.errors import ConfigError
from slidestream.engine.synthetic import make_store

PIPE = {"name": "b", "classifier": {"name": "small_cnn", "params": {"width": 8}}, "fusion": {"name": "age_gda"},
        "training": {"epochs": 1, "batch_size": 16, "lr": 3e-3, "num_workers": 1}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("bundle")
    st = make_store(d / "s", n_patients=12, per_patient=6, patch=32)
    splits.split_store(st, (2, 1, 1), seed=0)
    train.train(config.parse(PIPE), st.path, d / "model", log=None)
    return st.path, d / "model" / "small_cnn"


@pytest.fixture(scope="module")
def trained_oof(tmp_path_factory):
    """The same store and settings with --fusion-cv 3 (2 epochs): the fusion fitted on out-of-fold scores."""
    d = tmp_path_factory.mktemp("bundle_oof")
    st = make_store(d / "s", n_patients=12, per_patient=6, patch=32)
    splits.split_store(st, (2, 1, 1), seed=0)
    pipe = config.parse({**PIPE, "training": {**PIPE["training"], "epochs": 2}})
    logs: list[str] = []
    train.train(pipe, st.path, d / "model", log=logs.append, fusion_cv=3)
    return st.path, d / "model" / "small_cnn", pipe, logs


def test_roundtrip_no_pickle(trained):
    _, path = trained
    assert not list(path.glob("*.pkl")) and (path / "model.safetensors").is_file()
    b = bundle.load(path.parent)  # the train --out folder with a single bundle resolves to it
    assert b.path == path and b.meta["arch"] == "small_cnn" and not b.model.training
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(b.model(x), bundle.load(path).model(x))
    assert b.meta["versions"]["torch"] and len(b.meta["hash"]) == 64


def test_tampering_detected(trained, tmp_path):
    import shutil

    _, path = trained
    for victim, edit in (("model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:-4] + b"abcd")),
                         ("bundle.json", lambda p: p.write_text(p.read_text().replace('"threshold": 0.5', '"threshold": 0.4')))):
        copy = tmp_path / victim
        shutil.copytree(path, copy)
        edit(copy / victim)
        with pytest.raises(ConfigError, match="sha256|hash"):
            bundle.load(copy)


def test_refuses_other_pipeline(trained):
    store, path = trained
    other = config.parse({"name": "other", "patches": {"size": 128}})
    with pytest.raises(ConfigError) as e:
        bundle.load(path, pipeline=other)
    assert "\n" not in str(e.value) and "extraction hash" in str(e.value)


def test_predict_store_csv_and_cli(trained, tmp_path):
    store, path = trained
    out = tmp_path / "p.csv"
    r = predict.predict_store(path, store, out)
    lines = out.read_text().splitlines()
    assert lines[0] == "patient_id,label,age,split,image_prob" and len(lines) == 1 + r["patients"] == 13
    res = CliRunner().invoke(app, ["predict", str(path), "--store", str(store), "--out", str(tmp_path / "q.csv")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "q.csv").read_text() == out.read_text()


def test_fused_probability(trained):
    _, path = trained
    b = bundle.load(path)
    from slidestream.plugins.fusion.age_gda import age_probability

    # the fusion was fitted on this tiny store's 4 val patients: the direction of age is tested at scale in
    # test_fusion.py; here the bundle's state is what predict applies
    young = predict.fused(b, 0.5, 30.0)
    assert set(young) == {"age", "age+image"}
    assert young["age"] == float(age_probability(b.meta["fusion"]["state"], [30.0])[0])
    assert predict.fused(b, 0.5, None) == {}


@pytest.mark.parametrize("fit_on", ["val", "oof"])
def test_fusion_fitted_on_val_and_identical_in_evaluate_and_predict(fit_on, request, tmp_path):
    import csv as csvmod

    from slidestream.engine.store import PatchStore

    store, path = request.getfixturevalue("trained" if fit_on == "val" else "trained_oof")[:2]
    b = bundle.load(path)
    f = b.meta["fusion"]
    tab = PatchStore.open(store).table(["patient_id", "split"])
    fit = sorted(set(tab["patient_id"][tab["split"] == "val" if fit_on == "val" else tab["split"] != "test"]))
    assert (f["fit_on"], f["n"], f["patients"]) == (fit_on, len(fit), fit)  # out of sample: val, or out-of-fold
    assert (path / "training.json").is_file() and not (path / "metrics.json").exists()  # only evaluate writes it
    doc = json.loads((path / "training.json").read_text())
    assert doc["best_epoch"] == b.meta["best_epoch"] and doc["fusion"]["ids_digest"] == f["ids_digest"]
    assert doc["metrics"]["val"]["role"].startswith("selection set")
    # evaluate --bundle uses exactly the bundle's fusion: the same fused probabilities as predict
    csv = tmp_path / "p.csv"
    predict.predict_store(path, store, csv)
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["evaluate", str(csv), "--out", str(out), "--bundle", str(path), "--bootstrap", "0"])
    assert r.exit_code == 0, r.output
    rows = list(csvmod.DictReader(open(out / "patients.csv")))
    assert len(rows) == 12
    for r in rows:  # written with exact (round-trip) floats
        assert predict.fused(b, float(r["image_prob"]), float(r["age"]))["age+image"] == float(r["age+image_prob"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["meta"]["fusion"]["state"] == f["state"] and metrics["meta"]["best_epoch"] == b.meta["best_epoch"]
    assert "selection-set metrics (it chose the best epoch, fusion fit" in (out / "report.md").read_text()
    assert metrics["meta"]["selection"]["test"] == []


def test_fusion_cv_out_of_fold(trained_oof, tmp_path):
    """--fusion-cv 3: every train+val patient gets exactly one out-of-fold score, from a network whose training
    rows (recorded digest) hold none of the patients it scored; the fusion is the one fitted on those scores;
    the test patients appear nowhere; a rerun resumes every fold (nothing retrained, same fusion)."""
    import numpy as np

    from slidestream.engine.evaluate import fit_fusion, ids_digest
    from slidestream.engine.store import PatchStore

    store, path, pipe, logs = trained_oof
    f = bundle.load(path).meta["fusion"]
    cv = f["cv"]
    tab = PatchStore.open(store).table(["patient_id", "split", "label", "age", "synthetic"])
    pid = np.array([str(p) for p in tab["patient_id"].tolist()])
    real_tv = ~tab["synthetic"].astype(bool) & (tab["split"] != "test")
    trainval, test = sorted(set(pid[real_tv])), set(pid[tab["split"] == "test"])
    assert test and cv["k"] == 3 and len(cv["folds"]) == 3
    held = [p for fold in cv["folds"] for p in fold["held_out"]]
    assert sorted(held) == trainval  # every train+val patient scored exactly once; no test patient
    # the recorded fold assignment digest names exactly this assignment, and it is the seeded stratified one
    assert cv["folds_digest"] == config.digest(sorted((p, fd["fold"]) for fd in cv["folds"] for p in fd["held_out"]))
    lab = {p: int(tab["label"][i]) for i, p in enumerate(pid)}
    assert splits.cv_folds(trainval, [lab[p] for p in trainval], 3, seed=0) == {
        p: fd["fold"] for fd in cv["folds"] for p in fd["held_out"]}
    for fold in cv["folds"]:
        assert fold["held_out"]  # stratified folds: none empty
        # the rows this fold's network trained on (its recorded digest) are the train+val rows of the other folds
        rows = np.nonzero(real_tv & ~np.isin(pid, list(fold["held_out"])))[0]
        assert fold["train_rows"] == {"n": len(rows), "digest": config.digest(rows.tolist())}
        trained_on = set(pid[rows])
        assert fold["train_patients"]["ids_digest"] == ids_digest(sorted(trained_on))
        assert not trained_on & set(fold["held_out"]) and not trained_on & test
    # the fusion equals one fitted directly on the pooled out-of-fold scores
    scores = {p: v for fold in cv["folds"] for p, v in fold["held_out"].items()}
    first = {p: i for i, p in reversed(list(enumerate(pid)))}
    direct = fit_fusion({"patient_id": np.array(trainval), "split": np.array(["train"] * len(trainval)),
                         "label": np.array([int(tab["label"][first[p]]) for p in trainval]),
                         "age": np.array([float(tab["age"][first[p]]) for p in trainval]),
                         "image_prob": np.array([scores[p] for p in trainval])}, "age_gda", None, "train")
    # the same fit up to BLAS rounding (threaded LBFGS can differ in the last digit)
    assert f["state"].keys() == direct["state"].keys()
    for key, value in direct["state"].items():
        assert f["state"][key] == (pytest.approx(value, rel=1e-9, abs=1e-12) if key in ("coef", "intercept") else value), key
    assert f["fit_on"] == "oof" and f["patients"] == trainval
    assert not test & set(f["patients"])
    doc = json.loads((path / "training.json").read_text())
    assert doc["fusion"]["cv"]["folds_digest"] == cv["folds_digest"] and "out-of-fold" in doc["metrics"]["val"]["role"]
    assert cv["epochs"] == doc["best_epoch"] + 1
    assert sum("fusion_cv fold" in line for line in logs) == 3 * cv["epochs"]
    # rerun: the main run and every fold resume from their checkpoints; nothing is retrained
    again: list[str] = []
    train.train(pipe, store, path.parent, log=again.append, fusion_cv=3)
    assert not any("fusion_cv fold" in line or "epoch 1/" in line for line in again), again
    assert bundle.load(path).meta["fusion"]["state"] == f["state"]
    # a lost fold checkpoint: only that fold is trained again, and it reproduces the same scores and fusion
    (path / "fusion_cv" / "fold1" / "checkpoint.pt").unlink()
    again = []
    train.train(pipe, store, path.parent, log=again.append, fusion_cv=3)
    folds_trained = {line.split("fold ")[1].split(":")[0] for line in again if "fusion_cv fold" in line}
    assert folds_trained == {"2/3"}, again
    assert bundle.load(path).meta["fusion"] == f


def test_evaluate_refuses_to_refit_an_oof_pipeline(tmp_path):
    """evaluate cannot compute out-of-fold scores from a predictions table: a pipeline with training.fusion_cv is
    refused (one line, naming --bundle) rather than silently fitted on val."""
    pipe = tmp_path / "p.json"
    pipe.write_text(json.dumps({**PIPE, "training": {**PIPE["training"], "fusion_cv": 3}}))
    csv = tmp_path / "p.csv"
    csv.write_text("patient_id,label,age,split,image_prob\n")
    r = CliRunner().invoke(app, ["evaluate", str(csv), "--out", str(tmp_path / "r"), "--pipeline", str(pipe)])
    assert isinstance(r.exception, ConfigError), r.output
    msg = str(r.exception)
    assert "--bundle" in msg and "fusion_cv" in msg and "\n" not in msg


def _csv_moving(src, dst, patient, to="test"):
    """The predictions CSV ``src`` with ``patient`` moved to split ``to`` (a re-split store, a hand-edited table)."""
    lines = src.read_text().splitlines()
    out = [lines[0]] + [",".join(c[:3] + [to] + c[4:]) if c[0] == patient else ln
                        for ln, c in ((ln, ln.split(",")) for ln in lines[1:])]
    dst.write_text("\n".join(out) + "\n")
    return dst


def test_bundle_records_train_and_val_patients_and_evaluate_refuses_them_in_test(trained, cli, tmp_path):
    """The bundle names the patients it trained on (train) and selected on (val); evaluate --bundle refuses a test
    split holding any of them (one line, exit 2, the patient and the fix); the store's own split passes."""
    import numpy as np

    from slidestream.engine.evaluate import ids_digest
    from slidestream.engine.store import PatchStore

    store, path = trained
    meta = bundle.read(path)[1]
    tab = PatchStore.open(store).table(["patient_id", "split", "synthetic"])
    pid = np.array([str(p) for p in tab["patient_id"].tolist()])
    for split in ("train", "val"):
        ids = sorted(set(pid[(tab["split"] == split) & ~tab["synthetic"].astype(bool)]))
        assert meta["patients"][split] == {"n": len(ids), "patients": ids, "ids_digest": ids_digest(ids)}
    doc = json.loads((path / "training.json").read_text())
    assert doc["patients"]["train"]["ids_digest"] == meta["patients"]["train"]["ids_digest"]
    csv = tmp_path / "p.csv"
    predict.predict_store(path, store, csv)
    code, out, err = cli("evaluate", csv, "--out", tmp_path / "ok", "--bundle", path, "--bootstrap", "0")
    assert code == 0, err
    assert json.loads((tmp_path / "ok" / "metrics.json").read_text())["meta"]["trained_patients"]["train"]["n"] == len(
        meta["patients"]["train"]["patients"])
    for split, role in (("train", "trained on"), ("val", "selected its best epoch on")):
        victim = meta["patients"][split]["patients"][0]
        leaky = _csv_moving(csv, tmp_path / f"leak_{split}.csv", victim)
        code, out, err = cli("evaluate", leaky, "--out", tmp_path / split, "--bundle", path, "--bootstrap", "0")
        assert code == 2 and "\n" not in err.strip(), err
        assert f"patient '{victim}' is in this table's test split, but the bundle {role} it" in err
        assert "retrain on this split" in err and not (tmp_path / split / "metrics.json").exists()


def test_old_bundle_without_patients_evaluates_with_a_note(trained, tmp_path):
    """A bundle written before bundles recorded their patients still evaluates; stderr says what was not checked."""
    import shutil
    import subprocess
    import sys

    store, path = trained
    old = tmp_path / "old"
    shutil.copytree(path, old)
    meta = json.loads((old / "bundle.json").read_text())
    meta = {k: v for k, v in meta.items() if k not in ("patients", "files", "hash")}
    (old / "bundle.json").write_text(json.dumps(bundle.seal(old, meta, bundle.FILES)))
    csv = tmp_path / "p.csv"
    predict.predict_store(old, store, csv)
    leaky = _csv_moving(csv, tmp_path / "leak.csv", bundle.read(path)[1]["patients"]["train"]["patients"][0])
    r = subprocess.run([sys.executable, "-m", "slidestream.engine", "evaluate", str(leaky), "--out", str(tmp_path / "r"),
                        "--bundle", str(old), "--bootstrap", "0"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "records no training patients" in r.stderr and "cannot check" in r.stderr


def test_predict_store_warns_about_training_patients_outside_train(trained, tmp_path, capsys):
    """predict --store on a re-split copy of the training store: patients the model trained on now in val/test
    are named on stderr (in-sample probabilities); the training store itself gives no warning."""
    import shutil

    from slidestream.engine.store import PatchStore

    store, path = trained
    assert predict.predict_store(path, store, tmp_path / "same.csv")["trained_on"] == []
    assert "warning" not in capsys.readouterr().err
    copy = tmp_path / "resplit"
    shutil.copytree(store, copy)
    splits.split_store(PatchStore.open(copy, mode="r+"), (2, 1, 1), seed=7)
    r = predict.predict_store(path, copy, tmp_path / "p.csv")
    train_ids = set(bundle.read(path)[1]["patients"]["train"]["patients"])
    tab = PatchStore.open(copy).table(["patient_id", "split"])
    moved = sorted({str(p) for p, s in zip(tab["patient_id"], tab["split"]) if str(p) in train_ids and s != "train"})
    assert moved and r["trained_on"] == moved
    err = capsys.readouterr().err
    assert f"warning: {len(moved)} patient(s) of store {copy} outside its train split" in err and moved[0] in err


def test_training_json_full_disk_keeps_the_previous_file(trained, tmp_path, monkeypatch):
    """training.json / history.json are replaced atomically: a full disk is one WriteError naming the file, and the
    previous file stays whole (a finished run rerun from its checkpoint rewrites them)."""
    import errno
    import os
    import shutil

    from slidestream.engine.store import WriteError

    store, path = trained
    out = tmp_path / "model"
    shutil.copytree(path.parent, out)
    before = (out / "small_cnn" / "training.json").read_bytes()
    real = os.replace

    def replace(src, dst, *a, **k):
        if str(dst).endswith("training.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(WriteError, match=r"training.json: No space left on device; free space"):
        train.train(config.parse(PIPE), store, out, log=None)
    assert (out / "small_cnn" / "training.json").read_bytes() == before
    assert not list((out / "small_cnn").glob(".*.tmp"))
