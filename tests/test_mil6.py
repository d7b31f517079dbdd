"""Issue 8, round 6: MIL training settings (learning-rate schedule) and the bundle applying what training fitted."""
import json
import math

import numpy as np
import pytest
import torch

from slidestream.engine import mil

from test_mil import key_instance_bags

AGG = {"name": "abmil", "params": {"hidden": 16, "attention": 8}}


def test_bundle_applies_the_training_standardization(tmp_path):
    """Features far from unit scale (x 1000 + 500): the bundle's model, given the raw bag as `export` gives it,
    reproduces the training run's patient probabilities, so the mean/sd fitted on the training patches are
    stored and applied; with them left out (identity) the probabilities are not those of training."""
    feats, bags, _ = key_instance_bags(n_patients=24)
    feats = feats * 1000 + 500
    cfg = {**mil.DEFAULTS, "epochs": 3, "lr": 1e-3, "device": "cpu"}
    mil.train_one(feats, bags, bags["split"], AGG, cfg, tmp_path, {}, log=None)
    want = np.loadtxt(tmp_path / "predictions.csv", delimiter=",", skiprows=1, usecols=4)
    model, meta = mil.load_bundle(tmp_path)
    rows = np.concatenate([bags["rows"][i] for i in np.flatnonzero(bags["split"] == "train")])
    with torch.no_grad():
        got = [float(torch.sigmoid(model(torch.from_numpy(feats[r]).float())[0])) for r in bags["rows"]]
        raw = [float(torch.sigmoid(model.net(torch.from_numpy(feats[r]).float())[0])) for r in bags["rows"]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.abs(np.array(raw) - want).max() > 0.05
    np.testing.assert_allclose(model.mean.numpy(), feats[rows].mean(0), rtol=1e-4)


def test_cosine_schedule_decays_lr_per_epoch_and_resumes(tmp_path):
    """mil.schedule cosine: epoch e trains at lr * (1 + cos(pi e / epochs)) / 2 (recorded in history.json and the
    bundle's settings); a run killed after 2 of 4 epochs and resumed equals an uninterrupted one byte for byte;
    resuming it with other epochs (other rates) or without the schedule is refused."""
    feats, bags, _ = key_instance_bags(n_patients=24)
    cfg = {**mil.DEFAULTS, "epochs": 4, "lr": 1e-3, "device": "cpu", "schedule": "cosine"}

    def kill(line):
        if line.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mil.train_one(feats, bags, bags["split"], AGG, cfg, tmp_path / "a", {}, log=kill)
    for other in ({"epochs": 6}, {"schedule": "constant"}):
        with pytest.raises(mil.ConfigError, match="checkpoint of another MIL run"):
            mil.train_one(feats, bags, bags["split"], AGG, {**cfg, **other}, tmp_path / "a", {}, log=None)
    mil.train_one(feats, bags, bags["split"], AGG, cfg, tmp_path / "a", {}, log=None)
    mil.train_one(feats, bags, bags["split"], AGG, cfg, tmp_path / "b", {}, log=None)
    hist = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [m["lr"] for m in hist] == pytest.approx([1e-3 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
    assert json.loads((tmp_path / "a" / "history.json").read_text()) == hist
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert json.loads((tmp_path / "b" / "mil.json").read_text())["settings"]["schedule"] == "cosine"


def test_balanced_class_weight_centres_an_imbalanced_cohort(tmp_path):
    """Features without signal, 1 positive patient in 4: unweighted BCE learns the prevalence (mean probability
    ~0.25); mil.class_weight balanced weighs each class half of the loss, so the mean probability is ~0.5. It is
    recorded in the bundle, part of the checkpoint's identity, and refused on a one-class training split."""
    rng = np.random.default_rng(0)
    n, per = 48, 8
    labels = (np.arange(n) % 4 == 0).astype(int)
    bags = {"patients": np.array([f"P{i:02d}" for i in range(n)]), "rows": [np.arange(i * per, (i + 1) * per) for i in range(n)],
            "label": labels, "age": np.full(n, 50.0),  # 4 consecutive patients (one positive) share a split
            "split": np.array(["train", "train", "val", "test"])[(np.arange(n) // 4) % 4]}
    feats = rng.normal(size=(n * per, 4)).astype(np.float32)
    cfg = {**mil.DEFAULTS, "epochs": 4, "lr": 5e-2, "device": "cpu"}
    mean_p = {}
    for cw in (None, "balanced"):
        out = tmp_path / str(cw)
        mil.train_one(feats, bags, bags["split"], AGG, {**cfg, "class_weight": cw}, out, {}, log=None)
        mean_p[cw] = np.loadtxt(out / "predictions.csv", delimiter=",", skiprows=1, usecols=4).mean()
    assert mean_p[None] < 0.35 and 0.4 < mean_p["balanced"] < 0.6, mean_p
    assert json.loads((tmp_path / "balanced" / "mil.json").read_text())["settings"]["class_weight"] == "balanced"
    with pytest.raises(mil.ConfigError, match="checkpoint of another MIL run"):
        mil.train_one(feats, bags, bags["split"], AGG, cfg, tmp_path / "balanced", {}, log=None)
    one = bags["split"].copy()
    one[(labels == 1) & (one == "train")] = "test"
    with pytest.raises(mil.ConfigError, match="one class only"):
        mil.train_one(feats, bags, one, AGG, {**cfg, "class_weight": "balanced"}, tmp_path / "one", {}, log=None)


def test_bench_mean_paired_delta_is_the_mean_of_the_cohorts_differences(tmp_path):
    """bench/mil.py's mean rows: the mean over cohorts of AUC(a) - AUC(b), with an interval from resampling every
    cohort's patients at once; with one cohort it is the plain paired bootstrap (``paired_auc_delta``)."""
    import importlib.util
    from pathlib import Path

    from slidestream.engine.train import write_predictions

    spec = importlib.util.spec_from_file_location("bench_mil", Path(__file__).parent.parent / "bench" / "mil.py")
    b = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(b)
    rng = np.random.default_rng(0)
    pairs, want = [], []
    for c in range(2):
        y = np.array([0, 1] * 10)
        qa, qb = 1 / (1 + np.exp(-(4 * y - 2 + rng.normal(0, 1 + c, 20)))), rng.random(20)
        for name, q in (("a", qa), ("b", qb)):
            write_predictions(tmp_path / f"{name}{c}.csv", {"patient_id": np.array([f"P{i}" for i in range(20)]),
                              "label": y, "age": np.full(20, np.nan), "split": np.array(["test"] * 20), "image_prob": q})
        pairs.append((tmp_path / f"a{c}.csv", tmp_path / f"b{c}.csv"))
        want.append(b.paired_auc_delta(*pairs[-1], n=200)["delta_auc"])
    m = b.mean_paired_delta(pairs, n=200)
    assert m["delta_auc"] == pytest.approx(np.mean(want), abs=1e-3) and m["patients"] == 40
    assert m["ci95"][0] < m["delta_auc"] < m["ci95"][1]
    assert b.mean_paired_delta(pairs[:1], n=200) == b.paired_auc_delta(*pairs[0], n=200)
