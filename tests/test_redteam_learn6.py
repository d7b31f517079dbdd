"""Red team 6: from a trained bundle to predictions.csv and the metrics, each checked against an independent
computation (numpy by hand, scikit-learn)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from slidestream.engine import evaluate as ev
from slidestream.engine.errors import ConfigError

TARGET = Path(__file__).parent / "data" / "patches" / "tiatoolbox-source_image.png"
PIPE = {"name": "b6", "classifier": {"name": "small_cnn", "params": {"width": 8}}, "fusion": {"name": "age_gda"},
        "normalization": {"classifier": [{"name": "reinhard", "params": {"target": "TARGET"}},
                                         {"name": "gamma", "params": {"gamma": 2.0}}]},
        "training": {"epochs": 1, "batch_size": 16, "lr": 3e-3, "num_workers": 1, "input_size": 32,
                     "aggregation": {"method": "topk", "k_frac": 0.5}}}


def _store(path, ids, labels, ages, seed=0, per=6, patch=32):
    """A store of the given patients (one slide each), like test_redteam_predict4's."""
    from test_redteam_predict4 import _store as make

    return make(path, ids, labels, ages, seed=seed, per=per, patch=patch)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from slidestream.engine import bundle, config, splits, train
    from slidestream.engine.synthetic import make_store

    d = tmp_path_factory.mktemp("rt6")
    shutil.copy(TARGET, d / "target.png")  # the stain target image training normalizes to (reinhard)
    st = make_store(d / "s", n_patients=16, per_patient=4, patch=32)
    splits.split_store(st, (2, 1, 1), seed=0)
    pipe = json.loads(json.dumps(PIPE).replace("TARGET", str(d / "target.png")))
    train.train(config.parse(pipe), st.path, d / "model", log=None)
    b = d / "model" / "small_cnn"
    return st, b, bundle.read(b)[1]


# ---------------------------------------------------------------------------------------------- unsplit store roles
def test_unsplit_store_with_some_of_the_bundles_val_patients_is_never_val_nor_test(trained, tmp_path):
    """Known defect: such patients were written as val, so `evaluate --bundle` refused the whole table (its val
    split lacked the rest of the bundle's val patients). They were tuned on: never test; and a part of val cannot
    choose the threshold: written as train (in no metric), with a warning."""
    from slidestream.engine import predict

    _, b, meta = trained
    val = meta["patients"]["val"]["patients"]
    assert len(val) >= 2
    said = []
    _store(tmp_path / "mix", ["N1", val[0], "N2", "N3"], [1, 0, 0, 1], [50.0, 60.0, 40.0, 45.0], seed=3)
    r = predict.predict_store(b, tmp_path / "mix", tmp_path / "p.csv", warn=said.append)
    t = ev.load_predictions(tmp_path / "p.csv")
    assert dict(zip(t["patient_id"], t["split"])) == {"N1": "test", val[0]: "train", "N2": "test", "N3": "test"}
    assert r["val_as_train"] == [val[0]] and any("val patients" in s and val[0] in s for s in said)
    m = ev.evaluate(t, fitted=meta["fusion"], trained=meta["patients"], bootstrap=0)  # was refused
    scored = {p for p, s in zip(m["patients"]["patient_id"], m["patients"]["split"]) if s in ("val", "test")}
    assert m["test"]["image"]["n"] == 3 and val[0] not in scored and "val" not in m


def test_unsplit_store_with_all_of_the_bundles_val_patients_keeps_them_val(trained, tmp_path):
    from slidestream.engine import predict

    _, b, meta = trained
    val = meta["patients"]["val"]["patients"]
    _store(tmp_path / "all", ["N1", *val], [1] + [i % 2 for i in range(len(val))], [50.0] + [40.0 + 7 * i for i in
                                                                                      range(len(val))], seed=4)
    r = predict.predict_store(b, tmp_path / "all", tmp_path / "p.csv", warn=None)
    t = ev.load_predictions(tmp_path / "p.csv")
    assert dict(zip(t["patient_id"], t["split"])) == {"N1": "test", **{p: "val" for p in val}} and not r["val_as_train"]
    ev.evaluate(t, fitted=meta["fusion"], trained=meta["patients"], bootstrap=0)  # the whole val set: accepted


# ---------------------------------------------------------------------------------------------- patch -> patient
def test_predict_store_is_the_bundles_normalization_network_and_topk_by_hand(trained, tmp_path):
    """Each patient's image_prob = mean of its top half patch probabilities (the bundle's topk, k_frac 0.5), the
    patches reinhard-to-target then gamma-2 normalized (the bundle's pipeline), the network run by hand; batch size and workers change
    nothing beyond float noise."""
    import torch

    from typer.testing import CliRunner

    from slidestream.engine import bundle, predict
    from slidestream.engine.cli import app
    from slidestream.engine.loader import to_tensor
    from slidestream.engine.store import PatchStore
    from slidestream.plugins.normalization import stain

    _, b, meta = trained
    ids = ["A", "B", "C"]
    _store(tmp_path / "new", ids, [1, 0, 1], [50.0, 60.0, 40.0], seed=9, per=9)  # 27 rows: two store blocks of 16
    bd = bundle.load(b)
    st = PatchStore.open(tmp_path / "new")
    means, stds = stain.reinhard_target(str(TARGET))  # the training target's Lab statistics
    x = stain.reinhard(np.asarray(st.patches[:]), target_means=means, target_stds=stds, device="cpu") / 255
    x = np.round(255 * x ** 2).astype(np.uint8)  # gamma 2 by hand
    with torch.no_grad():
        p = torch.softmax(bd.model(to_tensor(x, meta["input_size"])), 1)[:, 1].numpy()
    pid = np.array([str(v) for v in st.table()["patient_id"]])
    want = {i: float(np.mean(np.sort(p[pid == i])[::-1][:5])) for i in ids}  # ceil(0.5 * 9) = 5 highest
    for bs, w in ((64, 1), (1, 3), (4, 2)):
        if bs == 4:  # the command's options (it had none for them)
            res = CliRunner().invoke(app, ["predict", str(b), "--store", str(tmp_path / "new"), "--out",
                                           str(tmp_path / "p4.csv"), "--batch-size", "4", "--workers", "2"])
            assert res.exit_code == 0, res.output
        else:
            predict.predict_store(b, tmp_path / "new", tmp_path / f"p{bs}.csv", batch_size=bs, workers=w, warn=None)
        t = ev.load_predictions(tmp_path / f"p{bs}.csv")
        got = dict(zip(t["patient_id"], t["image_prob"]))
        assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-5 for k in ids), (bs, w, got, want)


# ---------------------------------------------------------------------------------------------- mil predict
@pytest.fixture(scope="module")
def mil_trained(tmp_path_factory):
    from test_mil import PIPE as MPIPE
    from test_mil import coords_store

    from slidestream.engine import config, features, mil

    d = tmp_path_factory.mktemp("rt6mil")
    st = coords_store(d / "store", n_patients=16, per=4)
    pipe = config.parse({**MPIPE, "fusion": {"name": "age_gda"}})
    features.extract_features(pipe, st.path, d / "f.zarr", progress=False, log=None)
    mil.train(pipe, d / "f.zarr", d / "mil", log=None)
    return d, st, pipe


def _bag_store(path, bags):
    """An unsplit patch store (no coordinates needed): patient -> uint8 patches (one slide each)."""
    from slidestream.engine import config
    from slidestream.engine.store import PatchStore

    pipe = config.with_defaults({"name": "t", "magnification": 10, "patches": {"size": 32}, "store": {"chunk": 8}})
    st = PatchStore.create(path, 32, pipe["store"], {"extraction_hash": config.extraction_hash(pipe), "pipeline": pipe})
    for i, (pid, patches) in enumerate(bags.items()):
        st.append(f"N{i}", patches, {"slide_id": f"N{i}", "patient_id": pid, "label": i % 2, "age": 50.0 + i,
                                     "x": np.arange(len(patches)) * 128, "y": np.full(len(patches), 64 * i),
                                     "size0": 128}, {"status": "done"})
    st.append("E", np.zeros((0, 32, 32, 3), np.uint8), {}, {"status": "empty", "patient_id": "EMPTY"})  # no tissue
    return st


def test_mil_predict_scores_as_mil_train_did_and_by_hand(mil_trained, tmp_path):
    """There was no way to score patients with a MIL bundle (`mil predict`): only mil train's own predictions.csv."""
    import torch

    from slidestream.engine import mil
    from slidestream.engine.features import FeatureStore

    d, st, _ = mil_trained
    r = mil.predict(d / "mil", d / "f.zarr", tmp_path / "p.csv", warn=None)
    got, own = ev.load_predictions(tmp_path / "p.csv"), ev.load_predictions(d / "mil" / "predictions.csv")
    assert list(got["patient_id"]) == list(own["patient_id"]) and list(got["split"]) == list(own["split"])
    np.testing.assert_allclose(got["image_prob"], own["image_prob"], atol=1e-6)
    model, _ = mil.load_bundle(d / "mil")
    fs = FeatureStore(d / "f.zarr")
    x = fs.rows()[np.flatnonzero(fs.column("patient_id").astype(str) == "P3")]
    with torch.no_grad():
        want = float(torch.sigmoid(model(torch.from_numpy(x).float())[0]))
    assert abs(dict(zip(got["patient_id"], got["image_prob"]))["P3"] - want) < 1e-6 and r["patients"] == 16


def test_mil_predict_new_unsplit_patients_bag_order_one_patch_and_split_roles(mil_trained, tmp_path):
    from slidestream.engine import features, mil

    d, st, pipe = mil_trained
    meta = mil.read_bundle(d / "mil")
    seen = meta["patients"]["train"]["patients"][0]
    rng = np.random.default_rng(1)
    bag = rng.integers(0, 228, (5, 32, 32, 3), dtype=np.uint8)
    one = rng.integers(0, 228, (1, 32, 32, 3), dtype=np.uint8)
    probs = []
    for name, b in (("a", bag), ("b", bag[::-1].copy())):  # the same bag, its patches in reverse order
        ps = _bag_store(tmp_path / name, {"Q": b, "ONE": one, seen: bag[:2]})
        features.extract_features(pipe, ps.path, tmp_path / f"{name}.zarr", progress=False, log=None)
        said = []
        r = mil.predict(d / "mil", tmp_path / f"{name}.zarr", tmp_path / f"{name}.csv", warn=said.append)
        assert r["without_patches"] == ["EMPTY"]  # said, not scored 0.5
        t = ev.load_predictions(tmp_path / f"{name}.csv")
        assert dict(zip(t["patient_id"], t["split"])) == {"Q": "test", "ONE": "test", seen: "train"}
        assert np.all((t["image_prob"] > 0) & (t["image_prob"] < 1))
        probs.append(dict(zip(t["patient_id"], t["image_prob"])))
    assert abs(probs[0]["Q"] - probs[1]["Q"]) < 1e-4 and abs(probs[0]["ONE"] - probs[1]["ONE"]) < 1e-6
    ev.evaluate(ev.load_predictions(tmp_path / "a.csv"), trained=meta["patients"], bootstrap=0)


def test_mil_predict_refuses_features_of_other_encoder_weights(mil_trained, tmp_path):
    import shutil

    import zarr

    from slidestream.engine import mil

    d, _, _ = mil_trained
    shutil.copytree(d / "f.zarr", tmp_path / "f.zarr")
    g = zarr.open_group(str(tmp_path / "f.zarr"), mode="r+")
    g.attrs["slidestream_features"] = {**g.attrs["slidestream_features"], "weights_sha256": "ab" * 32}
    with pytest.raises(ConfigError, match=r"MIL bundle .* was trained on timm features .*give the feature store it was"):
        mil.predict(d / "mil", tmp_path / "f.zarr", tmp_path / "p.csv", warn=None)
    g.attrs["slidestream_features"] = {**g.attrs["slidestream_features"], "extraction_hash": "cd" * 32,  # other cuts
                                       "weights_sha256": mil.read_bundle(d / "mil")["encoder"]["weights_sha256"]}
    with pytest.raises(ConfigError, match=r"features of patches of extraction hash .* extract the slides with"):
        mil.predict(d / "mil", tmp_path / "f.zarr", tmp_path / "p.csv", warn=None)


# ---------------------------------------------------------------------------------------------- evaluate by hand
def test_evaluate_youden_from_val_on_test_age_groups_and_ci_match_sklearn_by_hand():
    from sklearn.metrics import accuracy_score, roc_auc_score, roc_curve

    rng = np.random.default_rng(3)
    n = 60
    y = rng.integers(0, 2, n)
    p = np.clip(0.35 * y + rng.normal(0.35, 0.2, n), 0.01, 0.99)
    age = rng.uniform(20, 80, n).round(1)
    split = np.array(["val"] * 24 + ["test"] * 36)
    t = {"patient_id": [f"p{i}" for i in range(n)], "label": y, "age": age, "split": split, "image_prob": p}
    m = ev.evaluate(t, threshold="youden", bootstrap=300, seed=7)
    v, te = split == "val", split == "test"
    fpr, tpr, thr = roc_curve(y[v], p[v])
    want = float(thr[np.argmax(tpr - fpr)])
    assert m["meta"]["thresholds"]["image"] == want  # chosen on val, not re-tuned on test
    called = p[te] >= want
    assert m["test"]["image"]["sensitivity"] == np.mean(called[y[te] == 1])
    assert m["test"]["image"]["specificity"] == np.mean(~called[y[te] == 0])
    assert m["test"]["image"]["auc"] == roc_auc_score(y[te], p[te])
    for g, sel in (("<55", te & (age < 55)), (">=55", te & (age >= 55))):
        c = p[sel] >= want
        got = m["age_groups"][g]
        assert got["n"] == sel.sum() and got["accuracy"]["image"] == accuracy_score(y[sel], c)
        assert got["errors"]["image"] == {"mutant": int(np.sum((y[sel] == 1) & ~c)), "wildtype": int(np.sum((y[sel] == 0) & c))}
    again, other = ev.evaluate(t, threshold="youden", bootstrap=300, seed=7), ev.evaluate(t, threshold="youden",
                                                                                           bootstrap=300, seed=8)
    assert again["test"]["image"]["ci"] == m["test"]["image"]["ci"] != other["test"]["image"]["ci"]
    # the BCa bootstrap by hand: the same seeded resamples of the test patients
    from scipy.stats import norm

    idx = np.random.default_rng([7, 1]).integers(0, te.sum(), (300, te.sum()))
    yt, pt = y[te], p[te]
    aucs = np.array([roc_auc_score(yt[i], pt[i]) for i in idx if len(set(yt[i])) == 2])
    est = roc_auc_score(yt, pt)
    z0 = norm.ppf((np.sum(aucs < est - 1e-12) + 0.5 * np.sum(np.abs(aucs - est) <= 1e-12)) / len(aucs))
    jack = np.array([roc_auc_score(np.delete(yt, i), np.delete(pt, i)) for i in range(len(yt))])
    d = jack.mean() - jack
    a = np.sum(d ** 3) / (6 * np.sum(d ** 2) ** 1.5)
    q = norm.cdf(z0 + (z0 + norm.ppf([0.025, 0.975])) / (1 - a * (z0 + norm.ppf([0.025, 0.975]))))
    np.testing.assert_allclose(m["test"]["image"]["ci"]["auc"], np.percentile(aucs, 100 * q), atol=1e-12)


def test_predict_normalizes_to_the_training_stain_target_after_the_file_changed_or_moved(trained, tmp_path):
    """The bundle recorded the reinhard target as a file path: predict re-read it, so an edited target image
    changed every probability silently, and a moved one (or a relative path from another folder) failed."""
    from slidestream.engine import predict
    from slidestream.plugins.normalization import stain

    st, b, _ = trained
    target = Path(st.path).parent / "target.png"  # the file training normalized to
    new = _store(tmp_path / "new", ["A", "B"], [1, 0], [50.0, 60.0], seed=2, per=4).path
    predict.predict_store(b, new, tmp_path / "before.csv", warn=None)
    saved = target.read_bytes()
    try:
        from skimage import io

        io.imsave(target, (255 - io.imread(TARGET)[..., :3]).astype(np.uint8), check_contrast=False)  # another image
        stain.reinhard_target.cache_clear()  # as a new process would
        predict.predict_store(b, new, tmp_path / "edited.csv", warn=None)
        target.unlink()
        stain.reinhard_target.cache_clear()
        predict.predict_store(b, new, tmp_path / "gone.csv", warn=None)  # was: cannot read stain target image
    finally:
        target.write_bytes(saved)
        stain.reinhard_target.cache_clear()
    want = ev.load_predictions(tmp_path / "before.csv")["image_prob"]
    for name in ("edited", "gone"):
        np.testing.assert_array_equal(ev.load_predictions(tmp_path / f"{name}.csv")["image_prob"], want)


@pytest.mark.parametrize("name", ["reinhard", "macenko"])
def test_frozen_stain_params_normalize_exactly_as_the_target_file(name):
    from slidestream.engine import registry
    from slidestream.engine.loader import frozen

    pipe = {"normalization": {"classifier": {"name": name, "params": {"target": str(TARGET), "device": "cpu"}}}}
    ref = frozen(pipe)["normalization"]["classifier"]
    assert "target" not in ref["params"] and ref["name"] == name and json.loads(json.dumps(ref)) == ref
    from skimage import io

    img = io.imread(TARGET)[..., :3]
    batch = np.stack([img[:64, :64], img[64:128, 64:128]]).astype(np.uint8)
    apply = registry.get("normalization", name).apply
    np.testing.assert_array_equal(apply(batch, **ref["params"]), apply(batch, target=str(TARGET), device="cpu"))


# ---------------------------------------------------------------------------------------------- label words
WORDS = {"IDH-mutant": 1, "IDH mutant": 1, " idh_MUT ": 1, "Mutant": 1, "IDH-wt": 0, "IDH wildtype": 0,
         "wild-type": 0, "Wild type": 0, "IDH-WILDTYPE": 0, "-1": -1, "": -1}


def test_label_words_in_a_predictions_csv_and_a_cohort_csv(tmp_path):
    """'IDH-wt' (named in evaluate's own error as read), 'IDH mutant', 'wild-type' were refused."""
    from slidestream.engine.cohort import read_csv

    p = tmp_path / "p.csv"
    rows = "".join(f'p{i},"{w}",50,test,0.{i + 1}\n' for i, w in enumerate(WORDS))
    p.write_text("patient_id,label,age,split,image_prob\n" + rows)
    assert ev.load_predictions(p)["label"].tolist() == list(WORDS.values())
    (tmp_path / "s.svs").write_bytes(b"x")
    c = tmp_path / "c.csv"
    c.write_text("slide_path,patient_id,label,age\n" + "".join(f's.svs,p{i},"{w}",50\n'.replace("s.svs", f"s{i}.svs")
                                                               for i, w in enumerate(WORDS)))
    for i in range(len(WORDS)):
        (tmp_path / f"s{i}.svs").write_bytes(bytes([i]))
    assert [r.label for r in read_csv(c)] == list(WORDS.values())
    for bad in ("IDH", "mutant?", "positive", "1 0", "- 1"):
        p.write_text(f"patient_id,label,age,split,image_prob\na,{bad},50,test,0.5\n")
        with pytest.raises(ConfigError, match="label must be 0 .wildtype. or 1 .mutant., got"):
            ev.load_predictions(p)


def test_predict_of_a_resplit_store_warns_about_the_bundles_val_patients_in_test(trained, tmp_path):
    """Only the bundle's train patients outside train were warned about; its val patients (they chose the epoch)
    in a re-split store's test split went unsaid."""
    import shutil

    from slidestream.engine import predict
    from slidestream.engine.store import PatchStore

    st, b, meta = trained
    copy = tmp_path / "resplit"
    shutil.copytree(st.path, copy)
    ps = PatchStore.open(copy, mode="r+")
    val = meta["patients"]["val"]["patients"]
    tab = ps.table(["patient_id", "split"])
    ps.set_column("split", np.array(["test" if str(p) in val else str(s) for p, s in zip(tab["patient_id"], tab["split"])],
                                    dtype=object))
    said = []
    r = predict.predict_store(b, copy, tmp_path / "p.csv", warn=said.append)
    assert r["selected_on"] == sorted(val) and any("chose the bundle's epoch" in s and val[0] in s for s in said)
    t = ev.load_predictions(tmp_path / "p.csv")  # round 8: the CSV takes the bundle's split, so they are val, not test
    assert {p: s for p, s in zip(t["patient_id"], t["split"]) if p in val} == {p: "val" for p in val}
    ev.evaluate(t, trained=meta["patients"], bootstrap=0)


# ---------------------------------------------------------------------------------------------- age fusion by hand
def test_age_fusion_at_predict_is_the_val_fit_of_training_by_hand(trained, tmp_path):
    """GDA + logistic regression refitted by hand (numpy, scikit-learn) on the val rows of train's predictions.csv
    gives the bundle's fusion; predict's fused probability for a new patient and evaluate --bundle on a held-out
    table use it unchanged (not refitted on the new patients)."""
    from scipy.stats import norm
    from sklearn.linear_model import LogisticRegression

    from slidestream.engine import bundle, predict

    st, b, meta = trained
    tr = ev.load_predictions(b / "predictions.csv")
    v = (tr["split"] == "val") & np.isfinite(tr["age"])
    y, age, img = tr["label"][v], tr["age"][v], tr["image_prob"][v]
    g = [(age[y == c].mean(), age[y == c].std()) for c in (0, 1)]
    prior = np.array([np.mean(y == 0), np.mean(y == 1)])

    def p_age(a):
        d = [prior[c] * norm.pdf(a, *g[c]) for c in (0, 1)]
        return d[1] / (d[0] + d[1])

    lr = LogisticRegression(C=1.0).fit(np.column_stack([img, p_age(age)]), y)
    state = meta["fusion"]["state"]
    np.testing.assert_allclose(state["coef"], lr.coef_[0], rtol=1e-6)
    for a, ip in ((30.0, 0.2), (70.0, 0.8)):
        want = 1 / (1 + np.exp(-(lr.intercept_[0] + lr.coef_[0] @ [ip, p_age(a)])))
        got = predict.fused(bundle.load(b), ip, a)
        assert abs(got["age"] - p_age(a)) < 1e-9 and abs(got["age+image"] - want) < 1e-6
    new = {"patient_id": ["n1", "n2", "n3", "n4"], "label": [1, 0, 1, 0], "age": [30.0, 70.0, np.nan, 50.0],
           "split": ["test"] * 4, "image_prob": [0.9, 0.1, 0.6, 0.4]}
    m = ev.evaluate(new, fitted=meta["fusion"], trained=meta["patients"], bootstrap=0)
    fused = np.array(m["patients"]["age+image_prob"])
    pa = np.array([p_age(30.0), p_age(70.0), prior[1], p_age(50.0)])  # missing age: the class prior
    want = 1 / (1 + np.exp(-(lr.intercept_[0] + lr.coef_[0][0] * np.array(new["image_prob"]) + lr.coef_[0][1] * pa)))
    np.testing.assert_allclose(fused, want, rtol=1e-6)
    with pytest.raises(ConfigError, match="age must be the patient's age in years"):
        predict.fused(bundle.load(b), 0.5, -3.0)
    with pytest.raises(ConfigError, match=r"patient 'n1' has age 744; ages are years, 0 to 130"):  # months
        ev.evaluate({**new, "age": [744.0, 70.0, 60.0, 50.0]}, fitted=meta["fusion"], bootstrap=0)


def test_mil_bundle_keeps_its_val_fusion_and_youden_for_held_out_patients(mil_trained, tmp_path):
    """A MIL bundle had no fusion and no val-chosen thresholds: `evaluate --bundle MIL --threshold youden` of held-out
    patients (mil predict of a new store: no val rows) was refused, and age+image impossible with the leakage check."""
    from typer.testing import CliRunner

    from slidestream.engine import mil
    from slidestream.engine.cli import app

    d, _, _ = mil_trained
    meta = mil.read_bundle(d / "mil")
    own = ev.load_predictions(d / "mil" / "predictions.csv")
    want = ev.fit_fusion(own, "age_gda")  # on its val rows, as evaluate --fusion age_gda fits it
    assert meta["fusion"]["state"] == want["state"] and meta["fusion"]["patients"] == want["patients"]
    v = own["split"] == "val"
    assert meta["youden"]["image"] == ev.youden_threshold(own["label"][v], own["image_prob"][v])
    p = tmp_path / "new.csv"
    p.write_text("patient_id,label,age,split,image_prob\nn1,1,41,test,0.7\nn2,0,66,test,0.4\nn3,1,45,test,0.3\n"
                 "n4,0,70,test,0.6\n")
    res = CliRunner().invoke(app, ["evaluate", str(p), "--out", str(tmp_path / "r"), "--bundle", str(d / "mil"),
                                   "--threshold", "youden", "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert set(m["test"]) == {"age", "image", "age+image"} and m["meta"]["threshold_source"] == "bundle"


def test_predict_of_a_split_store_with_a_slide_added_after_the_split_calls_it_test(trained, tmp_path):
    """A slide extracted after `split` left its new patient with split '': the CSV was refused by evaluate ('has no
    split; the store had none when it was predicted'). A patient the bundle never saw is test."""
    import shutil

    from slidestream.engine import predict
    from slidestream.engine.store import PatchStore

    st, b, meta = trained
    shutil.copytree(st.path, tmp_path / "s")
    ps = PatchStore.open(tmp_path / "s", mode="r+")
    ps.append("LATE", np.asarray(ps.patches[:4]), {"slide_id": "LATE", "patient_id": "LATE", "label": 1, "age": 44.0},
              {"status": "done", "patient_id": "LATE"})
    said = []
    r = predict.predict_store(b, tmp_path / "s", tmp_path / "p.csv", warn=said.append)
    t = ev.load_predictions(tmp_path / "p.csv")  # was refused
    split = dict(zip(t["patient_id"], t["split"]))
    assert split["LATE"] == "test" and not r["unsplit"] and any("in no split" in s and "LATE" in s for s in said)
    tab = PatchStore.open(st.path).table(["patient_id", "split"])
    assert all(split[str(p)] == str(s) for p, s in zip(tab["patient_id"], tab["split"]))  # the others: the store's
    m = ev.evaluate(t, fitted=meta["fusion"], trained=meta["patients"], bootstrap=0)
    assert "LATE" in [p for p, s in zip(m["patients"]["patient_id"], m["patients"]["split"]) if s == "test"]


def test_predict_of_a_mil_bundle_points_to_mil_predict(mil_trained, tmp_path):
    from slidestream.engine import predict

    d, st, _ = mil_trained
    with pytest.raises(ConfigError, match=r"is a MIL bundle \(mil.json\), not a model bundle: .*slidestream mil predict"):
        predict.predict_store(d / "mil", st.path, tmp_path / "p.csv")


def test_predict_of_the_training_store_equals_trains_own_predictions(trained, tmp_path):
    """The bundle (frozen stain target, topk) reproduces what train scored with the pipeline itself."""
    from slidestream.engine import predict

    st, b, _ = trained
    predict.predict_store(b, st.path, tmp_path / "p.csv", warn=None)
    got, own = ev.load_predictions(tmp_path / "p.csv"), ev.load_predictions(b / "predictions.csv")
    for c in ("patient_id", "split", "label"):
        assert got[c].tolist() == own[c].tolist()
    np.testing.assert_array_equal(got["image_prob"], own["image_prob"])
