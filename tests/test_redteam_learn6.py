"""Red team 6: from a trained bundle to predictions.csv and the metrics, each checked against an independent
computation (numpy by hand, scikit-learn)."""
from __future__ import annotations

import numpy as np
import pytest

from slidestream.engine import evaluate as ev
from slidestream.engine.errors import ConfigError

PIPE = {"name": "b6", "classifier": {"name": "small_cnn", "params": {"width": 8}}, "fusion": {"name": "age_gda"},
        "normalization": {"classifier": [{"name": "gamma", "params": {"gamma": 2.0}}]},
        "training": {"epochs": 1, "batch_size": 16, "lr": 3e-3, "num_workers": 1,
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
    st = make_store(d / "s", n_patients=16, per_patient=6, patch=32)
    splits.split_store(st, (2, 1, 1), seed=0)
    train.train(config.parse(PIPE), st.path, d / "model", log=None)
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
    patches gamma-2 normalized (the bundle's pipeline), the network run by hand; batch size and workers change
    nothing beyond float noise."""
    import torch

    from slidestream.engine import bundle, predict
    from slidestream.engine.loader import to_tensor
    from slidestream.engine.store import PatchStore

    _, b, meta = trained
    ids = ["A", "B", "C"]
    _store(tmp_path / "new", ids, [1, 0, 1], [50.0, 60.0, 40.0], seed=9, per=5)
    bd = bundle.load(b)
    st = PatchStore.open(tmp_path / "new")
    x = np.asarray(st.patches[:]).astype(np.float64) / 255
    x = np.round(255 * x ** 2).astype(np.uint8)  # gamma 2 by hand
    with torch.no_grad():
        p = torch.softmax(bd.model(to_tensor(x, meta["input_size"])), 1)[:, 1].numpy()
    pid = np.array([str(v) for v in st.table()["patient_id"]])
    want = {i: float(np.mean(np.sort(p[pid == i])[::-1][:3])) for i in ids}  # ceil(0.5 * 5) = 3 highest
    for bs, w in ((64, 1), (1, 3), (4, 2)):
        predict.predict_store(b, tmp_path / "new", tmp_path / f"p{bs}.csv", batch_size=bs, workers=w, warn=None)
        t = ev.load_predictions(tmp_path / f"p{bs}.csv")
        got = dict(zip(t["patient_id"], t["image_prob"]))
        assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-5 for k in ids), (bs, w, got, want)
