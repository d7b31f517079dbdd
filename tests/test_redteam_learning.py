"""Red-team of the learning side: split, train, predict, evaluate, fusion, bundle, mil. Bad input or a failed
run must end in one line naming the thing and the fix; the numbers reported must be right (never a
plausible-looking wrong one). Each test fails without the fix it guards (see the commit messages)."""
from pathlib import Path

import numpy as np
import pytest

from slidestream.engine import config, mil, splits, train
from slidestream.engine import evaluate as ev
from slidestream.engine.errors import ConfigError
from slidestream.engine.synthetic import make_store

HEADER = "patient_id,label,age,split,image_prob"
ROWS = ["a,1,40,val,0.9", "b,0,60,val,0.1", "c,1,41,test,0.8", "d,0,62,test,0.3"]


def _csv(tmp_path, header=HEADER, rows=ROWS):
    p = tmp_path / "pred.csv"
    p.write_text("\n".join([header, *rows]) + "\n")
    return p


# ---------------------------------------------------------------------------------------------- diverged models
def test_diverged_training_is_one_line_not_a_nan_traceback(tmp_path):
    """A learning rate that blows the network up: the NaN probabilities used to reach roc_auc_score (ValueError
    'Input contains NaN' traceback); now one ConfigError line that says to lower training.lr."""
    st = make_store(tmp_path / "s", n_patients=8, per_patient=4, patch=32)
    splits.split_store(st, (2, 1, 1), seed=0)
    pipe = config.parse({"name": "div", "classifier": {"name": "small_cnn", "params": {"width": 8}},
                         "training": {"epochs": 1, "batch_size": 16, "lr": 1e4, "num_workers": 1}})
    with pytest.raises(ConfigError, match=r"training\.lr") as e:
        train.train(pipe, st.path, tmp_path / "model", log=None)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "model" / "small_cnn" / "predictions.csv").exists()  # no NaN rows written


def _bags(n=8, per=5, dim=6):
    rng = np.random.default_rng(0)
    label = np.array([0, 1] * (n // 2))
    feats = (rng.normal(size=(n * per, dim)) + label.repeat(per)[:, None]).astype(np.float32)
    bags = {"patients": np.array([f"P{i}" for i in range(n)]), "rows": [np.arange(i * per, (i + 1) * per) for i in range(n)],
            "label": label, "age": np.full(n, 50.0)}
    return feats, bags, np.array(["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4))


def test_diverged_mil_training_is_one_line(tmp_path):
    feats, bags, split = _bags()
    cfg = {**mil.DEFAULTS, "epochs": 2, "lr": 1e30, "device": "cpu"}
    with pytest.raises(ConfigError, match=r"mil\.lr") as e:
        mil.train_one(feats, bags, split, {"name": "abmil", "params": {"hidden": 8, "attention": 4}}, cfg,
                      tmp_path / "mil", {}, log=None)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------- hand-edited CSVs
@pytest.mark.parametrize("header,rows,match", [
    # csv.DictReader kept the last of two same-named columns; evaluate said "columns have different lengths"
    (HEADER + ",image_prob", [r + ",0.5" for r in ROWS], r"column 'image_prob' appears more than once"),
    # a row with more fields than the header (an unquoted comma) was read with its extra fields dropped
    (HEADER, ROWS[:3] + ["d,0,62,test,0.3,0.7"], r"line 5: 6 fields, the header has 5"),
    # the patient with the bad probability is named
    (HEADER, ROWS[:3] + ["d,0,62,test,1.5"], r"patient 'd' has image_prob 1.5"),
])
def test_hand_edited_predictions_csv_is_refused_by_name(tmp_path, header, rows, match):
    with pytest.raises(ConfigError, match=match) as e:
        ev.load_predictions(_csv(tmp_path, header, rows))
    assert "\n" not in str(e.value)


def test_nan_probability_in_a_table_names_the_patient_and_the_cause():
    t = {"patient_id": ["a", "b", "c", "d"], "label": [1, 0, 1, 0], "age": [40, 60, 41, 62],
         "split": ["val", "val", "test", "test"], "image_prob": [0.9, 0.1, np.nan, 0.3]}
    with pytest.raises(ConfigError, match=r"patient 'c' has image_prob nan \(NaN: the model diverged"):
        ev.check_table(t)


# ---------------------------------------------------------------------------------------------- tiny sets
def _table(split, label, age=None, prob=None):
    n = len(split)
    rng = np.random.default_rng(1)
    return {"patient_id": [f"p{i}" for i in range(n)], "split": split, "label": label,
            "age": age if age is not None else rng.uniform(30, 80, n).round(),
            "image_prob": prob if prob is not None else rng.uniform(0, 1, n).round(3)}


def test_bootstrap_interval_of_one_patient_is_left_out_not_zero_width():
    """One mutant in test: every resample's sensitivity is that patient's call, so the percentile interval was
    [x, x] (e.g. sensitivity 1.000 [1.000, 1.000]); now null with a note. AUC intervals say how many resamples
    held both classes."""
    split = ["val"] * 4 + ["test"] * 6
    label = [1, 0, 1, 0] + [1, 0, 0, 0, 0, 0]
    prob = [0.8, 0.2, 0.7, 0.3] + [0.9, 0.1, 0.2, 0.3, 0.6, 0.4]
    m = ev.evaluate(_table(split, label, prob=prob), bootstrap=200)
    test = m["test"]["image"]
    assert test["sensitivity"] == 1.0 and test["ci"]["sensitivity"] is None and test["ci"]["auc"] is None
    assert test["ci"]["specificity"] is not None and test["ci"]["accuracy"] is not None
    assert any(n.startswith("test: no 95% interval for sensitivity, auc") for n in m["meta"]["notes"])
    # two of each class: intervals are given, and the AUC ones say they skipped one-class resamples
    m = ev.evaluate(_table(split, [1, 0, 1, 0] + [1, 1, 0, 0, 0, 0], prob=prob), bootstrap=200)
    assert m["test"]["image"]["ci"]["auc"] is not None
    note = next(n for n in m["meta"]["notes"] if n.startswith("test: AUC intervals from the "))
    assert int(note.split()[5]) < 200


def test_fusion_says_how_many_patients_it_scored_without_an_age():
    split = ["val"] * 8 + ["test"] * 6
    label = [1, 0] * 7
    age = np.array([40, 60, 42, 65, 38, 70, 45, 58, np.nan, 60, 41, np.nan, np.nan, 66], float)
    m = ev.evaluate(_table(split, label, age=age), fusion="age_gda", bootstrap=0)
    assert "test: 3 patient(s) without an age; fusion 'age_gda' gives them age, age+image without one" in \
        " ".join(m["meta"]["notes"])


def test_fusion_fit_error_names_the_split_it_was_fitted_on():
    """age_gda said 'needs at least 2 training patients with an age in each class' when evaluate fitted it on
    val: the message now names the split and the fix."""
    split = ["val"] * 4 + ["test"] * 4
    with pytest.raises(ConfigError, match=r"fusion 'age_gda' is fitted on the val split's 4 patients: .*larger val"):
        ev.evaluate(_table(split, [1, 1, 1, 0, 1, 0, 1, 0]), fusion="age_gda", bootstrap=0)


# ---------------------------------------------------------------------------------------------- GAN rows, splits
@pytest.fixture(scope="module")
def syn_trained(tmp_path_factory):
    """A bundle (no fusion) trained on a store whose GAN rows were hand-set to split val."""
    tmp_path = tmp_path_factory.mktemp("syn")
    st = make_store(tmp_path / "s", n_patients=8, per_patient=4, patch=32)
    splits.split_store(st, (2, 1, 1), seed=0)
    n_val = int(np.sum(st.column("split") == "val"))
    x = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    st.append("gan", x, {"label": 1, "synthetic": True, "generator": "g", "split": "val", "slide_id": "g"},
              {"generator_id": "g", "patients": []}, section="synthetic")
    logs = []
    pipe = config.parse({"name": "syn", "classifier": {"name": "small_cnn", "params": {"width": 8}},
                         "training": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "num_workers": 1}})
    train.train(pipe, st.path, tmp_path / "model", log=logs.append)
    return logs, n_val, tmp_path / "model" / "small_cnn", st.path


def test_synthetic_rows_never_reach_the_validation_split(syn_trained):
    """GAN rows are split "train", but a hand-set split column could call them val: train counted them as
    validation patches (scored as one more 'patient' in the val AUC that picks the best epoch)."""
    logs, n_val, _, _ = syn_trained
    assert any(f"{n_val} validation patches" in line for line in logs), logs


def test_predict_age_without_a_fusion_or_with_a_store_is_refused(syn_trained, cli, tmp_path):
    """--age was silently ignored (the image probability printed alone) by a bundle without a fusion, and with
    --store (where the ages come from the store)."""
    _, _, bundle, store = syn_trained
    code, _, err = cli("predict", bundle, tmp_path / "slide.svs", "--age", "50")
    assert code == 2 and "--age 50 needs a bundle with a fitted fusion" in err
    code, _, err = cli("predict", bundle, "--store", store, "--age", "50", "--out", tmp_path / "p.csv")
    assert code == 2 and "--age is for slide files" in err


def test_predictions_of_an_unsplit_store_name_the_missing_split(tmp_path):
    rows = [r.replace(",val,", ",,").replace(",test,", ",,") for r in ROWS]
    with pytest.raises(ConfigError, match=r"patient 'a' has no split; .*slidestream split"):
        ev.load_predictions(_csv(tmp_path, HEADER, rows))


def test_bundle_evaluation_refuses_a_val_split_holding_its_training_patients():
    """A re-split store moved training patients into val: their in-sample scores chose the Youden threshold that
    test is scored with (only test was checked before)."""
    from slidestream.engine.bundle import patient_set

    split = ["train"] * 4 + ["val"] * 4 + ["test"] * 4
    t = _table(split, [1, 0] * 6)
    trained = {"train": patient_set(["p0", "p1", "p2", "p3", "p4"]), "val": patient_set(["p5", "p6", "p7"])}
    with pytest.raises(ConfigError, match=r"patient 'p4' is in this table's val split, but the bundle trained on it"):
        ev.evaluate(t, threshold="youden", bootstrap=0, trained=trained)
    trained["train"] = patient_set(["p0", "p1", "p2", "p3"])
    trained["val"] = patient_set(["p4", "p5", "p6", "p7"])
    assert ev.evaluate(t, threshold="youden", bootstrap=0, trained=trained)["test"]["image"]["n"] == 4


@pytest.mark.parametrize("text", ["[]", "null", '"model"'])
def test_bundle_json_that_is_not_an_object_is_one_line(tmp_path, cli, text):
    """Valid JSON but no object (an edit, another file copied over it): was AttributeError 'list' object has no
    attribute 'get' from every command that reads a bundle."""
    from slidestream.engine import bundle

    (tmp_path / "bundle.json").write_text(text)
    with pytest.raises(ConfigError, match=r"bundle\.json holds .*, not a bundle's JSON object; re-copy or retrain"):
        bundle.read(tmp_path)
    p = _csv(tmp_path)
    code, _, err = cli("evaluate", p, "--out", tmp_path / "r", "--bundle", tmp_path)
    assert code == 2 and "re-copy or retrain" in err


def test_split_warns_when_val_or_test_cannot_hold_both_classes(tmp_path, cli):
    """5 patients at 6:1:1: test got one mutant and no wildtype, silently (its AUC is undefined); 2 patients: no val,
    and train advised 'use split ratios with a val part (e.g. 6:1:1)' to a store split 6:1:1."""
    import json

    pipe = tmp_path / "p.json"
    pipe.write_text(json.dumps({"name": "p", "magnification": 10, "patches": {"size": 16}}))
    st = make_store(tmp_path / "s5", n_patients=5, per_patient=2, patch=16)
    code, out, err = cli("split", pipe, "--store", st.path, "--ratios", "6:1:1")
    assert code == 0 and "warning: the test split holds 1 mutant and 0 wildtype patients" in err
    assert "val split" not in err
    code, out, err = cli("split", pipe, "--store", st.path, "--ratios", "3:2:0")
    assert code == 0 and "test split" not in err  # asked for no test split
    st = make_store(tmp_path / "s2", n_patients=2, per_patient=4, patch=32)
    splits.split_store(st, (6, 1, 1))
    pipe = config.parse({"name": "v", "classifier": {"name": "small_cnn", "params": {"width": 8}}})
    with pytest.raises(ConfigError, match=r"validation split is empty \(2 patients\); re-split .* enough patients"):
        train.train(pipe, st.path, tmp_path / "m", log=None)


def test_train_refuses_slides_in_no_split_and_a_patient_in_two_splits(tmp_path):
    """Slides extracted after `split` have split '' and were left out of training and evaluation without a word;
    a hand-edited split column could put one patient's patches in train and test (patch-level leakage)."""
    st = make_store(tmp_path / "s", n_patients=8, per_patient=4, patch=32)
    splits.split_store(st, (2, 1, 1), seed=0)
    pipe = config.parse({"name": "v", "classifier": {"name": "small_cnn", "params": {"width": 8}}})
    split = st.column("split").astype(object).astype(str)
    x = np.asarray(st.patches[:3])
    st.append("NEW", x, {"slide_id": "NEW", "patient_id": "P900", "label": 1, "age": 50.0}, {"status": "done"})
    with pytest.raises(ConfigError, match=r"3 patches of 1 slide\(s\) \(e\.g\. NEW\) are in no split"):
        train.train(pipe, st.path, tmp_path / "m", log=None)
    st.set_column("split", np.r_[split, ["train"] * 3])
    first = str(st.column("patient_id")[0])
    split[0] = "test" if split[0] != "test" else "train"
    st.set_column("split", np.r_[split, ["train"] * 3])
    with pytest.raises(ConfigError, match=rf"patient '{first}' has patches in .*: the split column was edited"):
        train.train(pipe, st.path, tmp_path / "m", log=None)


def test_predict_refuses_a_patient_in_two_splits_but_not_an_unsplit_store(syn_trained, tmp_path):
    """predict --store gave such a patient the split of its first slide in the CSV."""
    from slidestream.engine import predict

    _, _, bundle, _ = syn_trained
    st = make_store(tmp_path / "s", n_patients=6, per_patient=4, patch=32, seed=5)
    assert predict.predict_store(bundle, st.path, tmp_path / "p.csv", warn=None)["patients"] == 6  # no split at all
    split = np.full(len(st), "test", dtype=object)
    split[0] = ""  # one patch of the first patient in no split, the rest in test
    st.set_column("split", split.astype(str))
    with pytest.raises(ConfigError, match=r"patient 'P000' has patches in no split, test"):
        predict.predict_store(bundle, st.path, tmp_path / "p.csv", warn=None)


# ---------------------------------------------------------------------------------------------- aggregation
def test_patient_probability_is_the_mean_over_all_its_patches_and_topk_counts_exactly():
    """Documented: the patient probability is the mean of its patch probabilities (pooled over its slides, not a
    mean of slide means). topk averages ceil(k_frac * n) patches: 0.07 * 100 = 7.000000000000001 in floats took 8."""
    from slidestream.engine.aggregate import aggregate
    from slidestream.engine.train import patient_table

    tab = {"patient_id": np.array(["A"] * 10 + ["B"]), "slide_id": np.array(["A1"] + ["A2"] * 9 + ["B1"]),
           "label": np.array([1] * 10 + [0]), "age": np.full(11, 50.0), "split": np.array(["test"] * 11)}
    probs = np.array([1.0] + [0.0] * 9 + [0.3])
    t = patient_table(tab, np.arange(11), probs, {"method": "mean"})
    assert t["patient_id"].tolist() == ["A", "B"] and t["image_prob"].tolist() == [0.1, 0.3]  # not (1 + 0) / 2
    p = np.arange(100, dtype=float)[::-1] / 100  # 0.99, 0.98, ...
    assert aggregate(np.zeros(100, int), p, "topk", k_frac=0.07)[1][0] == pytest.approx(np.mean(p[:7]))


@pytest.mark.parametrize("section,value", [("training", 0), ("training", 1), ("mil", 0), ("mil", 1.0)])
def test_threshold_of_0_or_1_is_refused_like_evaluate_does(section, value):
    """training.threshold 0 calls every patient mutant (sensitivity 1, specificity 0 in training.json); evaluate
    already refused --threshold outside (0, 1), the pipeline schema took [0, 1]."""
    with pytest.raises(ConfigError, match=rf"\$\.{section}\.threshold"):
        config.parse({"name": "t", section: {"threshold": value}})
    with pytest.raises(ConfigError, match=r"threshold must be in \(0, 1\)"):
        ev.evaluate(_table(["val", "val", "test", "test"], [1, 0, 1, 0]), threshold=value, bootstrap=0)


def test_a_constant_predictor_is_named_in_the_notes():
    """A collapsed network gives every patient one probability: AUC 0.5 and sensitivity 1 or 0 were reported
    without a word."""
    m = ev.evaluate(_table(["val", "val", "test", "test", "test"], [1, 0, 1, 0, 1], prob=[0.4, 0.6] + [0.5] * 3),
                    bootstrap=0)
    assert m["test"]["image"]["auc"] == 0.5
    assert "test: image gives every patient the same probability (0.5)" in " ".join(m["meta"]["notes"])
    assert not any(n.startswith("val: image gives") for n in m["meta"]["notes"])


def test_unknown_label_from_predict_says_where_it_comes_from(tmp_path):
    """`predict --store` of patients without an IDH label writes label -1: read as unknown (evaluate leaves such
    patients out and counts them, tests/test_redteam_predict4.py)."""
    assert ev.load_predictions(_csv(tmp_path, HEADER, ROWS[:3] + ["d,-1,62,test,0.3"]))["label"][-1] == -1


def test_demo_cohort_under_a_relative_folder_finds_its_slides(tmp_path, monkeypatch):
    """`slidestream demo --out demo` (a relative path, as in the README) wrote slide paths relative to the working
    folder into cohort.csv, which read_cohort resolves against the CSV's folder: demo/slides/demo/slides/P000.svs,
    'file not found' for every slide, 0 patches, then 'store has no split'."""
    from slidestream.engine.cohort import read_cohort
    from slidestream.engine.synthetic import make_cohort

    monkeypatch.chdir(tmp_path)
    rows = read_cohort(make_cohort(Path("demo") / "slides", n_patients=2, size=(256, 256)))
    assert [Path(r.slide_path).resolve() for r in rows] == [(tmp_path / "demo" / "slides" / f"P00{i}.svs") for i in (0, 1)]
    assert all(Path(r.slide_path).is_file() for r in rows)


@pytest.mark.parametrize("args", [("demo",), ("mil", "demo")])
def test_demo_refuses_fewer_patients_than_its_age_fusion_needs(cli, tmp_path, args):
    """--patients 8 (the old minimum) split 2:1:1 leaves 1 val patient per class: the demo synthesized and
    extracted the cohort, trained, then failed fitting age_gda (needs 2 per class)."""
    code, _, err = cli(*args, "--patients", "8", "--out", tmp_path / "d")
    assert code == 2 and not (tmp_path / "d").exists()


def test_split_of_a_store_without_patches_says_so(tmp_path):
    """Every slide failed: split wrote an empty split and train then said 'no split yet; run split'."""
    from slidestream.engine.store import PatchStore

    pipe = config.with_defaults({"name": "e", "magnification": 10, "patches": {"size": 16}})
    st = PatchStore.create(tmp_path / "s", 16, pipe["store"], {"extraction_hash": config.extraction_hash(pipe), "pipeline": pipe})
    with pytest.raises(ConfigError, match=r"holds no patches of any slide .* extract again"):
        splits.split_store(st, (2, 1, 1))


def test_predict_refuses_other_patch_sizes_when_the_store_records_no_extraction_hash(syn_trained, tmp_path):
    """The extraction check is skipped for a store without an extraction hash: 64 px patches were resized to the
    network's input and scored as if they were the 32 px patches it learned (other magnification of tissue)."""
    from slidestream.engine import predict
    from slidestream.engine.store import PatchStore

    _, _, bundle, _ = syn_trained
    st = PatchStore.create(tmp_path / "s", 64, {"codec": "zstd", "level": 1, "chunk": 16}, {})
    x = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    st.append("S0", x, {"slide_id": "S0", "patient_id": "P0", "label": 1, "age": 50.0}, {"status": "done"})
    with pytest.raises(ConfigError, match=r"trained on 32 px patches, store .* holds 64 px ones"):
        predict.predict_store(bundle, st.path, tmp_path / "p.csv", warn=None)


def test_mil_bags_are_the_patch_stores_patients_after_a_later_re_split(tmp_path):
    """Features computed, then `split --patient-from` rewrote the patch store's patient ids (two slides, one
    patient): mil train built its bags from the feature store's old ids, so predictions.csv and every AUC counted
    slides as patients (and export's attention came from bags training never used). Likewise a label corrected
    in the patch store (a re-extract) after the features: MIL trained and scored the old one."""
    from test_mil import PIPE, coords_store

    from slidestream.engine import export, features
    from slidestream.engine.features import FeatureStore

    st = coords_store(tmp_path / "store")
    pipe = config.parse(PIPE)
    features.extract_features(pipe, st.path, tmp_path / "f.zarr", progress=False, log=None)
    pid = st.column("patient_id").astype(object).astype(str)
    pid[pid == "P2"] = "P0"  # S2 (wildtype, like S0) is a second slide of patient P0
    st.set_column("patient_id", pid)
    label = st.column("label").copy()
    label[pid == "P7"] = 0  # a corrected label (re-extract): P7 is wildtype now
    st.set_column("label", label)
    splits.split_store(st, (2, 1, 1), seed=0)
    mil.train(pipe, tmp_path / "f.zarr", tmp_path / "mil", store=st.path, log=None)
    rows = (tmp_path / "mil" / "predictions.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[0] for r in rows) == ["P0", "P1", "P3", "P4", "P5", "P6", "P7"]
    assert [r.split(",")[1] for r in rows if r.startswith("P7,")] == ["0"]
    att, prob = export.mil_scores(tmp_path / "mil", FeatureStore(tmp_path / "f.zarr"), st.column("patient_id"))
    s0, s2 = pid == "P0", st.column("slide_id").astype(object).astype(str) == "S2"
    assert np.all(prob[s0] == prob[s0][0]) and s2.any() and np.isclose(att[s0].sum(), 1.0, atol=1e-4)


def test_evaluate_defaults_to_the_threshold_training_used(tmp_path, cli):
    """training.threshold 0.3: training.json's calls used 0.3, evaluate --bundle / --pipeline used 0.5 (other
    sensitivity, specificity and accuracy for the same probabilities) unless told --threshold."""
    import json

    st = make_store(tmp_path / "s", n_patients=8, per_patient=4, patch=32)
    splits.split_store(st, (2, 1, 1), seed=0)
    pipe = {"name": "thr", "classifier": {"name": "small_cnn", "params": {"width": 8}},
            "training": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "num_workers": 1, "threshold": 0.3}}
    (tmp_path / "p.json").write_text(json.dumps(pipe))
    train.train(config.parse(pipe), st.path, tmp_path / "m", log=None)
    b = tmp_path / "m" / "small_cnn"
    for args in (("--bundle", b), ("--pipeline", tmp_path / "p.json")):
        code, _, err = cli("evaluate", b / "predictions.csv", "--out", tmp_path / "r", "--bootstrap", "0", *args)
        assert code == 0, err
        assert json.loads((tmp_path / "r" / "metrics.json").read_text())["meta"]["threshold"] == 0.3
    code, _, _ = cli("evaluate", b / "predictions.csv", "--out", tmp_path / "r", "--bootstrap", "0", "--bundle", b,
                     "--threshold", "0.6")
    assert code == 0 and json.loads((tmp_path / "r" / "metrics.json").read_text())["meta"]["threshold"] == 0.6


# UserWarning only (matplotlib's): "error" for all also turned a file another test left open, collected by the
# garbage collector during this test, into this test's failure (a ResourceWarning; seen once in the full suite)
@pytest.mark.filterwarnings("error::UserWarning")
def test_gan_sweep_table_labels_val_as_the_selection_set(tmp_path):
    """training.json and comparison.md call val the selection set (it chose the best epoch); the GAN sweep's
    Table 2 showed its val metrics as plain validation results. A split without a ROC (one class) drew an empty
    legend: matplotlib's 'No artists with labels' warning on stderr (also train's comparison figure)."""
    from slidestream.engine.experiment import write_table

    m = {"n": 4, "sensitivity": 1.0, "specificity": 0.5, "accuracy": 0.75, "auc": 0.75, "roc": None}
    write_table([{"synthetic": 0, "arch": "small_cnn", "best_epoch": 0, "metrics": {"val": m, "test": m}}], tmp_path)
    assert "## On validation set (selection set: it chose each run's best epoch; optimistic)" in \
        (tmp_path / "table.md").read_text()
    train.compare([{"arch": "small_cnn", "best_epoch": 0, "init": "scratch", "metrics": {"val": m, "test": m}}], tmp_path)


def test_mil_folds_keep_the_slides_of_a_patient_together(tmp_path):
    """--folds used the feature store's patient ids: after `split --patient-from` made two slides one patient,
    they could land in a training fold and the test fold (the same patient on both sides of the CV)."""
    from test_mil import PIPE, coords_store

    from slidestream.engine import features

    st = coords_store(tmp_path / "store")
    pipe = config.parse(PIPE)
    features.extract_features(pipe, st.path, tmp_path / "f.zarr", progress=False, log=None)
    pid = st.column("patient_id").astype(object).astype(str)
    pid[pid == "P2"] = "P0"
    st.set_column("patient_id", pid)
    mil.train(pipe, tmp_path / "f.zarr", tmp_path / "cv", folds=3, log=None)  # the feature store records the patch store
    for f in range(3):
        ids = [r.split(",")[0] for r in (tmp_path / "cv" / f"fold{f}" / "predictions.csv").read_text().splitlines()[1:]]
        assert "P2" not in ids and ids.count("P0") == 1
