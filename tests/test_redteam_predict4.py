"""Red team: held-out predictions (predict -> evaluate on new patients) and the learning leftovers."""
from __future__ import annotations

import numpy as np
import pytest

from slidestream.engine import evaluate as ev
from slidestream.engine import experiment
from slidestream.engine.errors import ConfigError


@pytest.mark.parametrize("counts", [[0, 2.5], [True], ["2.5"]])
def test_gan_sweep_refuses_counts_that_are_not_whole(tmp_path, counts):
    with pytest.raises(ConfigError, match="whole numbers"):  # 2.5 was trained as 2
        experiment.gan_sweep({}, tmp_path / "no-store", counts, tmp_path / "out", log=None)


# ---------------------------------------------------------------------------------------------- boolean labels
def _t(label):
    n = len(label)
    return {"patient_id": [f"p{i}" for i in range(n)], "label": label, "age": [50.0] * n, "split": ["test"] * n,
            "image_prob": np.linspace(0.1, 0.9, n)}


@pytest.mark.parametrize("label", [[True, False, True, False], np.array([True, False, True, False]),
                                   [1, 0, True, 0], [np.True_, 0, 1, 0]])
def test_boolean_labels_are_refused_in_python_as_in_the_csv(label):
    with pytest.raises(ConfigError, match="not True/False"):  # were read as 1/0
        ev.check_table(_t(label))


def test_csv_refuses_true_as_a_label(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("patient_id,label,age,split,image_prob\na,True,50,test,0.3\nb,0,50,test,0.6\n")
    with pytest.raises(ConfigError, match="label must be 0 .wildtype. or 1 .mutant., got 'True'"):
        ev.load_predictions(p)


# ---------------------------------------------------------------------------------------------- held-out predict
PIPE = {"name": "b", "classifier": {"name": "small_cnn", "params": {"width": 8}}, "fusion": {"name": "age_gda"},
        "training": {"epochs": 1, "batch_size": 16, "lr": 3e-3, "num_workers": 1}}


def _store(path, ids, labels, ages, seed=0, per=6, patch=32):
    """A store of the given patients (one slide each), cut from rendered images like synthetic.make_store."""
    from slidestream.engine import config
    from slidestream.engine.store import PatchStore
    from slidestream.engine.synthetic import render

    pipe = config.with_defaults({"name": "synthetic-store", "magnification": 10, "patches": {"size": patch},
                                 "store": {"codec": "zstd", "level": 1, "chunk": 16}})
    st = PatchStore.create(path, patch, pipe["store"], {"extraction_hash": config.extraction_hash(pipe), "pipeline": pipe})
    side = 3 * patch
    patches, meta = [], {"slide_id": [], "patient_id": [], "label": [], "age": []}
    for i, (pid, lab, age) in enumerate(zip(ids, labels, ages)):
        img = render((side, side), int(lab), seed=seed * 7919 + i, mpp=1.0, full=True)
        patches += [img[y:y + patch, x:x + patch] for y in range(0, side, patch) for x in range(0, side, patch)][:per]
        for k, v in (("slide_id", f"S-{pid}"), ("patient_id", pid), ("label", int(lab)), ("age", age)):
            meta[k] += [v] * per
    st.append("all", np.stack(patches), {k: np.asarray(v) for k, v in meta.items()}, {"status": "done"})
    return st


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from slidestream.engine import config, splits, train
    from slidestream.engine.synthetic import make_store

    d = tmp_path_factory.mktemp("rt4")
    st = make_store(d / "s", n_patients=12, per_patient=6, patch=32)
    splits.split_store(st, (2, 1, 1), seed=0)
    train.train(config.parse(PIPE), st.path, d / "model", log=None)
    return st.path, d / "model" / "small_cnn"


NEW = ["007", "7", "7.0", "TCGA-06-0129", "0.5e1", "nan"]


def test_predict_on_an_unsplit_store_of_new_patients_evaluates_as_test(trained, tmp_path):
    from typer.testing import CliRunner

    from slidestream.engine import bundle, predict
    from slidestream.engine.cli import app

    _, b = trained
    _store(tmp_path / "new", NEW, [1, 0, 1, 0, 1, 0], [50.0, np.nan, 30.0, 60.0, np.nan, 40.0], seed=5)
    r = predict.predict_store(b, tmp_path / "new", tmp_path / "p.csv")
    t = ev.load_predictions(tmp_path / "p.csv")  # was refused: every patient had split ''
    assert sorted(t["patient_id"]) == sorted(NEW) and set(t["split"]) == {"test"} and r["unsplit"]
    assert np.all((t["image_prob"] >= 0) & (t["image_prob"] <= 1))
    meta = bundle.read(b)[1]
    m = ev.evaluate(t, fitted=meta["fusion"], trained=meta["patients"], bootstrap=0)
    assert m["test"]["image"]["n"] == 6 and "val: no rows; not evaluated" in m["meta"]["notes"]
    # no val rows is no evidence of other fusion patients (the note compared the digest of an empty list)
    assert not any("fitted on other patients" in n for n in m["meta"]["notes"])
    assert any("test: 2 patient(s) without an age" in n and "class prior" in n for n in m["meta"]["notes"])
    assert np.all(np.isfinite(m["patients"]["age+image_prob"]))  # missing ages: the prior, not 0 or NaN
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "p.csv"), "--out", str(tmp_path / "rep"), "--bundle", str(b)])
    assert res.exit_code == 0, res.output


def test_predict_on_an_unsplit_store_keeps_the_bundles_own_patients_out_of_test(trained, tmp_path):
    from slidestream.engine import bundle, predict

    _, b = trained
    meta = bundle.read(b)[1]
    seen = meta["patients"]["train"]["patients"][0]
    _store(tmp_path / "mix", ["N1", seen, "N2"], [1, 0, 0], [50.0, 60.0, 40.0], seed=3)
    predict.predict_store(b, tmp_path / "mix", tmp_path / "p.csv", warn=None)
    t = ev.load_predictions(tmp_path / "p.csv")
    assert dict(zip(t["patient_id"], t["split"])) == {"N1": "test", seen: "train", "N2": "test"}


# ---------------------------------------------------------------------------------------------- unknown labels
def test_evaluate_leaves_out_and_counts_patients_without_a_label(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("patient_id,label,age,split,image_prob\nv1,1,40,val,0.9\nv2,0,60,val,0.2\nv3,,50,val,0.5\n"
                 "a,1,41,test,0.8\nb,0,62,test,0.3\nc,-1,55,test,0.7\nd,unknown,45,test,0.1\ne,1,30,test,0.6\n"
                 "f,0,70,test,0.4\n")
    m = ev.evaluate(ev.load_predictions(p), bootstrap=0)  # was refused: "label must be 0 or 1, got ''"
    assert m["test"]["image"]["n"] == 4 and m["val"]["image"]["n"] == 2
    assert m["meta"]["unlabeled"] == {"train": 0, "val": 1, "test": 2, "patients": ["c", "d", "v3"]}
    assert any("3 patient(s) without a label (-1/empty) left out of every metric (val 1, test 2" in n
               for n in m["meta"]["notes"])
    assert sorted(m["patients"]["patient_id"]) == ["a", "b", "e", "f", "v1", "v2"]


def test_evaluate_refuses_when_no_test_patient_has_a_label():
    t = {"patient_id": ["a", "b", "c"], "label": [1, 0, -1], "age": [40.0, 50.0, 60.0], "split": ["val", "val", "test"],
         "image_prob": [0.2, 0.4, 0.6]}
    with pytest.raises(ConfigError, match="no test patient has a label"):
        ev.evaluate(t, bootstrap=0)


# ---------------------------------------------------------------------------------------------- the bundle's threshold
def test_youden_threshold_chosen_on_val_is_applied_to_held_out_patients(trained, tmp_path):
    """A table of new patients has no val rows: --threshold youden was refused, so held-out data could not be
    called at the threshold the demo's test metrics use. The bundle now records it, and evaluate says so."""
    from typer.testing import CliRunner

    from slidestream.engine import bundle, predict
    from slidestream.engine.cli import app

    store, b = trained
    meta = bundle.read(b)[1]
    predict.predict_store(b, store, tmp_path / "own.csv", warn=None)  # the training store: val rows present
    own = ev.evaluate(ev.load_predictions(tmp_path / "own.csv"), fitted=meta["fusion"], threshold="youden", bootstrap=0)
    assert {k: v for k, v in meta["youden"].items() if v is not None} == {
        k: v for k, v in own["meta"]["thresholds"].items() if k not in own["meta"].get("threshold_fallback", [])}
    _store(tmp_path / "new", NEW, [1, 0, 1, 0, 1, 0], [50.0, 45.0, 30.0, 60.0, 35.0, 40.0], seed=5)
    predict.predict_store(b, tmp_path / "new", tmp_path / "p.csv")
    m = ev.evaluate(ev.load_predictions(tmp_path / "p.csv"), fitted=meta["fusion"], threshold="youden", bootstrap=0,
                    val_thresholds=meta["youden"])
    assert m["meta"]["thresholds"] == own["meta"]["thresholds"] and m["meta"]["threshold_source"] == "bundle"
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "p.csv"), "--out", str(tmp_path / "rep"), "--bundle",
                                   str(b), "--threshold", "youden", "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    assert "recorded in the bundle" in " ".join(res.output.split())
    assert "Youden's J on the validation set of the bundle's training" in (tmp_path / "rep" / "report.md").read_text()
    with pytest.raises(ConfigError, match="no val rows; give --bundle"):  # without the bundle's: one line
        ev.evaluate(ev.load_predictions(tmp_path / "p.csv"), threshold="youden", bootstrap=0)


# ---------------------------------------------------------------------------------------------- store vs slides
def _slides(d, sizes, mpp=1.0):
    import csv

    from slidestream.engine.synthetic import make_slide

    rows = []
    for i, size in enumerate(sizes):
        p = make_slide(d / f"X{i}.svs", size=size, label=i % 2, seed=i, mpp=mpp, levels=(1, 4))
        rows.append({"slide_path": str(p), "patient_id": f"0{i}", "label": i % 2, "age": 50 + i})
    with open(d / "c.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return d / "c.csv", [r["slide_path"] for r in rows]


def test_predict_of_a_store_without_patches_names_the_store(trained, tmp_path):
    from slidestream.engine import bundle, predict, runner
    from slidestream.engine.cohort import read_cohort

    _, b = trained
    cohort, _ = _slides(tmp_path, [(1024, 768)], mpp=0.5)  # 512 x 384 at 10x: no tile, an empty slide
    runner.extract(bundle.read(b)[2], read_cohort(cohort), tmp_path / "empty", progress=False)
    with pytest.raises(ConfigError, match=r"store .*empty holds no patches of real slides"):  # was "aggregate: ..."
        predict.predict_store(b, tmp_path / "empty", tmp_path / "p.csv")


def test_predict_over_a_store_equals_the_slides_one_by_one_and_repeats(trained, tmp_path):
    from slidestream.engine import bundle, predict, runner
    from slidestream.engine.cohort import read_cohort

    _, b = trained
    cohort, paths = _slides(tmp_path, [(1024, 1024)] * 2)
    runner.extract(bundle.read(b)[2], read_cohort(cohort), tmp_path / "new", progress=False)
    predict.predict_store(b, tmp_path / "new", tmp_path / "p1.csv")
    predict.predict_store(b, tmp_path / "new", tmp_path / "p2.csv")
    assert (tmp_path / "p1.csv").read_text() == (tmp_path / "p2.csv").read_text()
    t = ev.load_predictions(tmp_path / "p1.csv")
    assert t["patient_id"].tolist() == ["00", "01"]  # ids kept verbatim, zeros included
    res = predict.predict_slides(b, paths, out_dir=tmp_path / "h")
    assert np.allclose(t["image_prob"], [r["image_prob"] for r in res], atol=1e-6)
    thr = bundle.read(b)[1]["threshold"]  # each slide is called at the bundle's threshold, and says so
    assert [r["call"] for r in res] == ["mutant" if r["image_prob"] >= thr else "wildtype" for r in res]
    from typer.testing import CliRunner

    from slidestream.engine.cli import app

    out = CliRunner().invoke(app, ["predict", str(b), paths[0], "--out", str(tmp_path / "h2")])
    assert out.exit_code == 0 and f"at the bundle's threshold {thr:g}" in out.output, out.output


# ---------------------------------------------------------------------------------------------- ids as text
def test_numeric_patient_ids_from_pandas_are_refused_and_text_ids_kept(tmp_path):
    """pandas.read_csv without dtype=str gave ids 7.0, 7 and 7 for '007', '7', '7.0': their rows no longer matched
    the bundle's patients (leakage checks, fusion ids), silently."""
    pd = pytest.importorskip("pandas")
    p = tmp_path / "p.csv"
    p.write_text("patient_id,label,age,split,image_prob\n007,1,40,val,0.9\n7,0,60,val,0.2\n7.0,1,41,test,0.8\n"
                 "TCGA-06-0129,0,62,test,0.3\n")
    bad = pd.read_csv(p)
    bad = bad[bad["patient_id"] != "TCGA-06-0129"]  # a numeric column, as a cohort of numeric ids gives
    bad = bad.assign(patient_id=pd.to_numeric(bad["patient_id"]))
    with pytest.raises(ConfigError, match=r"row 1 has patient_id 7.0, a number: .*dtype=str"):
        ev.check_table(bad)
    good = ev.check_table(pd.read_csv(p, dtype=str))
    assert good["patient_id"].tolist() == ["007", "7", "7.0", "TCGA-06-0129"]
    assert ev.load_predictions(p)["patient_id"].tolist() == ["007", "7", "7.0", "TCGA-06-0129"]


@pytest.mark.parametrize("kw, match", [({"synthetic": 2.5}, r"training setting synthetic: 2.5 is not of type 'integer'"),
                                       ({"epochs": 2.5}, r"training setting epochs: 2.5 is not of type 'integer'"),
                                       ({"batch_size": 0}, r"training setting batch_size: 0")])
def test_train_overrides_from_python_are_checked_like_a_pipelines(tmp_path, kw, match):
    """train(epochs=2.5) ran 2 epochs and recorded 2.5; synthetic=2.5 (a gan-sweep count) ended in a traceback."""
    from slidestream.engine import config, train

    with pytest.raises(ConfigError, match=match):
        train.train(config.parse(PIPE), tmp_path / "no-store", tmp_path / "m", log=None, **kw)
