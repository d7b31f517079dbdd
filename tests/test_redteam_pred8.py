"""Red team, round 8: held-out numbers in the remaining corners (re-split stores, MIL fusion split, slide ids as
file names, h5 export attributes, predict of a slide vs of its store)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from slidestream.engine import evaluate as ev
from slidestream.engine.errors import ConfigError

PIPE = {"name": "b8", "classifier": {"name": "small_cnn", "params": {"width": 8}},
        "training": {"epochs": 1, "batch_size": 16, "lr": 3e-3, "num_workers": 1}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from slidestream.engine import bundle, config, splits, train
    from slidestream.engine.synthetic import make_store

    d = tmp_path_factory.mktemp("rt8")
    st = make_store(d / "s", n_patients=12, per_patient=4, patch=32)
    splits.split_store(st, (2, 1, 1), seed=0)
    train.train(config.parse(PIPE), st.path, d / "model", log=None)
    b = d / "model" / "small_cnn"
    return st.path, b, bundle.read(b)[1]["patients"]


def _bundle_roles(ids, own):
    train, val = set(own["train"]["patients"]), set(own["val"]["patients"])
    return {p: "train" if p in train else "val" if p in val else "test" for p in ids}


def _resplit(store, copy, seed):
    from slidestream.engine import splits
    from slidestream.engine.store import PatchStore

    shutil.copytree(store, copy)
    ps = PatchStore.open(copy, mode="r+")
    splits.split_store(ps, (1, 1, 2), seed=seed)
    tab = ps.table(["patient_id", "split"])
    return {str(p): str(s) for p, s in zip(tab["patient_id"], tab["split"])}


# ---------------------------------------------------------------------------------------------- 1. re-split store
def test_predict_of_a_resplit_store_writes_the_bundles_split_not_the_stores(trained, tmp_path):
    """Known defect: the CSV kept the re-split store's split (warnings only), so a plain `evaluate` reported
    patients the bundle trained or selected on as held-out test."""
    from slidestream.engine import predict

    store, b, own = trained
    now = _resplit(store, tmp_path / "re", seed=7)
    want = _bundle_roles(now, own)
    assert any(now[p] == "test" and want[p] != "test" for p in now)  # the re-split puts seen patients in test
    said = []
    r = predict.predict_store(b, tmp_path / "re", tmp_path / "p.csv", warn=said.append)
    t = ev.load_predictions(tmp_path / "p.csv")
    assert dict(zip(t["patient_id"], t["split"])) == want
    seen = set(own["train"]["patients"]) | set(own["val"]["patients"])
    m = ev.evaluate(t, bootstrap=0)  # plain evaluate: no seen patient in the held-out metrics
    assert not seen & {p for p, s in zip(m["patients"]["patient_id"], m["patients"]["split"]) if s == "test"}
    ev.evaluate(t, trained=own, bootstrap=0)  # and `evaluate --bundle` takes the table (it refused it)
    assert r["trained_on"] and any("outside its train split" in s for s in said)


def test_mil_predict_of_a_resplit_store_writes_the_bundles_split(tmp_path):
    from slidestream.engine import config, features, mil

    from test_mil import coords_store

    st = coords_store(tmp_path / "store", n_patients=12, per=3)
    pipe = config.parse({"name": "m8", "encoder": {"name": "morphometry", "params": {"input_size": 32}},
                         "aggregator": {"name": "abmil", "params": {"hidden": 8, "attention": 4}},
                         "mil": {"epochs": 1, "device": "cpu"}, "fusion": {"name": "age_gda"},
                         "training": {"fusion_split": "train"}})
    features.extract_features(pipe, st.path, tmp_path / "f.zarr", progress=False, log=None)
    mil.train(pipe, tmp_path / "f.zarr", tmp_path / "mil", log=None)
    meta = mil.read_bundle(tmp_path / "mil")
    own = meta["patients"]
    assert meta["fusion"]["fit_on"] == "train" and meta["fusion"]["patients"] == own["train"]["patients"]  # corner 2
    now = _resplit(st.path, tmp_path / "re", seed=3)
    mil.predict(tmp_path / "mil", tmp_path / "f.zarr", tmp_path / "p.csv", store=tmp_path / "re", warn=lambda m: None)
    t = ev.load_predictions(tmp_path / "p.csv")
    assert dict(zip(t["patient_id"], t["split"])) == _bundle_roles(now, own) != now


# ---------------------------------------------------------------------------------------------- 2. MIL fusion split
def test_mil_fusion_honours_training_fusion_split_and_refuses_fusion_cv(tmp_path):
    """Known defect: `mil train` fitted the age fusion on val whatever training.fusion_split said."""
    from slidestream.engine import mil

    from test_mil import key_instance_bags

    feats, bags, _ = key_instance_bags(n_patients=24)
    bags["age"] = np.linspace(30, 75, 24)
    cfg = {**mil.DEFAULTS, "epochs": 1, "lr": 1e-3, "device": "cpu"}
    agg = {"name": "abmil", "params": {"hidden": 8, "attention": 4}}
    res = {}
    for split in ("val", "train"):
        mil.train_one(feats, bags, bags["split"], agg, cfg, tmp_path / split, {}, log=None,
                      fusion={"name": "age_gda"}, fusion_split=split)
        res[split] = mil.read_bundle(tmp_path / split)["fusion"]
    assert res["val"]["fit_on"] == "val" and res["val"]["n"] == int(np.sum(bags["split"] == "val"))
    assert res["train"]["fit_on"] == "train" and res["train"]["n"] == int(np.sum(bags["split"] == "train"))
    pipe = {"name": "x", "fusion": {"name": "age_gda"}, "training": {"fusion_cv": 3}}
    with pytest.raises(ConfigError, match="training.fusion_cv is for `slidestream train`"):
        mil.train(pipe, tmp_path / "none.zarr", tmp_path / "o", log=None)


# ---------------------------------------------------------------------------------------------- 4. slide ids as file names
def test_slide_ids_with_path_characters_keep_their_qa_picture_inside_store_qa(tmp_path):
    """Known defect: a cohort CSV's slide_id 'a/b' failed the slide (no folder STORE.qa/a/) and '../../evil' wrote
    its QA picture outside STORE.qa (two folders up). They are now named as export names them (cohort.file_name),
    and export's heatmap finds the picture under that name."""
    from slidestream.engine import config, export, runner
    from slidestream.engine.cohort import read_cohort
    from slidestream.engine.export import file_name
    from slidestream.engine.store import beside
    from slidestream.engine.synthetic import make_slide

    d = tmp_path / "in" / "deep"
    d.mkdir(parents=True)
    ids = ["a/b", "../../evil"]
    rows = [f"{make_slide(d / f'X{i}.svs', size=(1024, 1024), label=i, seed=i, mpp=1.0, levels=(1,))},P{i},{i},50,{sid}"
            for i, sid in enumerate(ids)]
    (d / "c.csv").write_text("slide_path,patient_id,label,age,slide_id\n" + "\n".join(rows) + "\n")
    pipe = config.with_defaults({"name": "t", "magnification": 10, "patches": {"size": 32}, "store": {"chunk": 8}})
    r = runner.extract(pipe, read_cohort(d / "c.csv"), d / "store", progress=False)
    assert [s["status"] for s in r["slides"]] == ["done", "done"], r["slides"]
    qa = beside(d / "store", "qa")
    assert sorted(p.name for p in qa.iterdir()) == sorted(f"{file_name(s)}.png" for s in ids)
    assert not list(tmp_path.rglob("evil.png"))
    rec = {"dimensions": [1024, 1024]}
    img = np.asarray(export.heatmap(qa, rec, 32.0, "a/b", np.array([0]), np.array([0]), np.array([64]), np.array([1.0])))
    assert img.shape[:2] == (32, 32) and not (img == 255).all()  # the QA thumbnail, not a white canvas


# ---------------------------------------------------------------------------------------------- 5. h5 attributes
def _h5_store(path, size0, patch=16, mag=10):
    from slidestream.engine import config
    from slidestream.engine.store import PatchStore

    pipe = config.with_defaults({"name": "t", "magnification": mag, "patches": {"size": patch}, "store": {"chunk": 8}})
    st = PatchStore.create(path, patch, pipe["store"], {"extraction_hash": config.extraction_hash(pipe), "pipeline": pipe})
    st.append("S0", np.zeros((2, patch, patch, 3), np.uint8), {"slide_id": "S0", "patient_id": "P0", "label": 1,
              "age": 50.0, "x": np.array([0, size0]), "y": np.array([0, 0]), "size0": size0}, {"status": "done"})
    return path


@pytest.mark.parametrize("size0", [64, 16])  # 10x patches of a 40x slide; patches cut at level-0 resolution
def test_h5_coords_attributes_mean_what_trident_and_clam_read(tmp_path, size0):
    """TRIDENT reads patch_size px at target_magnification (level-0 side: x level0_magnification / target);
    CLAM's extract_features_fp reads read_region(coord, patch_level, (patch_size, patch_size)). Known defect:
    patch_level 0 with patch_size 16 (target px) for 64 px level-0 patches: CLAM read a 16 px square at level 0,
    a quarter of the patch's side; downsample said 4 where CLAM means level 0's downsample (1)."""
    import h5py

    from slidestream.engine import export

    (path,) = export.export(_h5_store(tmp_path / "s", size0), "h5", tmp_path / "h5")
    with h5py.File(path, "r") as h:
        a = dict(h["coords"].attrs)
    assert a["patch_size"] == 16 and a["patch_size_level0"] == size0 and a["target_magnification"] == 10
    assert a["patch_size"] * a["level0_magnification"] / a["target_magnification"] == size0  # TRIDENT's side
    if "patch_level" in a or size0 == 16:  # CLAM's region: patch_size px at a level of downsample `downsample`
        assert a["patch_level"] == 0 and list(a["downsample"]) == [1.0, 1.0]
        assert a["patch_size"] * a["downsample"][0] == size0


# ---------------------------------------------------------------------------------------------- 3. slide vs its store
def test_predict_of_a_slide_equals_its_store_row_under_the_same_id_and_says_why_not_otherwise(trained, tmp_path):
    """`predict SLIDE` cuts the slide with the bundle's pipeline under the id of its file name; random patch
    positions (patches.mode random, the default) are seeded by (seed, slide id, tile). Same id as the store's:
    same patches, same probability. A cohort CSV's other slide_id: other (equally valid) positions, so another
    probability: the documented reason (README, predict_slides)."""
    from slidestream.engine import bundle, predict, runner
    from slidestream.engine.cohort import read_cohort
    from slidestream.engine.store import PatchStore
    from slidestream.engine.synthetic import make_slide

    _, b, _ = trained
    pipe = bundle.read(b)[2]
    assert pipe["patches"]["mode"] == "random"
    p = make_slide(tmp_path / "X0.svs", size=(1024, 1024), label=1, seed=3, mpp=1.0, levels=(1, 4))
    q = shutil.copy(p, tmp_path / "copy.svs")  # the same pixels, listed under another slide_id
    (tmp_path / "c.csv").write_text(f"slide_path,patient_id,label,age,slide_id\n{p},A,1,50,X0\n{q},B,1,50,other-id\n")
    runner.extract(pipe, read_cohort(tmp_path / "c.csv"), tmp_path / "s", progress=False)
    predict.predict_store(b, tmp_path / "s", tmp_path / "p.csv", warn=None)
    t = ev.load_predictions(tmp_path / "p.csv")
    store = dict(zip(t["patient_id"], t["image_prob"]))
    (one,) = predict.predict_slides(b, [p], out_dir=tmp_path / "h")
    tab = PatchStore.open(tmp_path / "s").table(["slide_id", "x", "y"])
    _, table, _, _, _ = runner.extract_slide_patches(pipe, str(p))
    for sid, same in (("X0", True), ("other-id", False)):
        rows = tab["slide_id"] == sid
        xy = sorted(zip(tab["x"][rows].tolist(), tab["y"][rows].tolist()))
        assert (xy == sorted(zip(table["x"].tolist(), table["y"].tolist()))) is same
    assert one["image_prob"] == pytest.approx(store["A"], abs=1e-6)
    assert one["image_prob"] != pytest.approx(store["B"], abs=1e-6)
