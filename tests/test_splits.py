"""Patient-level, stratified splits."""
import numpy as np
import pytest

from slidestream.engine import splits
from slidestream.engine.errors import ConfigError
from slidestream.engine.synthetic import make_store


def _cohort(n=48):
    pids = [f"P{i:02d}" for i in range(n)]
    labels = [i % 2 for i in range(n)]
    return pids, labels


def test_six_one_one_stratified_and_seeded():
    pids, labels = _cohort(48)
    a = splits.assign(pids, labels, (6, 1, 1), seed=3)
    counts = {s: sum(v == s for v in a.values()) for s in splits.NAMES}
    assert counts == {"train": 36, "val": 6, "test": 6}
    for s in splits.NAMES:  # stratified: half mutant in every split
        assert sum(labels[pids.index(p)] for p, v in a.items() if v == s) == counts[s] // 2
    assert a == splits.assign(pids, labels, (6, 1, 1), seed=3)
    assert a != splits.assign(pids, labels, (6, 1, 1), seed=4)


def test_kfold_each_patient_tested_once():
    pids, labels = _cohort(20)
    tested = [p for f in range(5) for p, s in splits.assign(pids, labels, seed=0, kfold=5, fold=f).items() if s == "test"]
    assert sorted(tested) == sorted(pids)
    with pytest.raises(ConfigError):
        splits.assign(pids, labels, kfold=5, fold=5)


def test_store_split_no_patient_in_two_splits_synthetic_to_train(tmp_path):
    st = make_store(tmp_path / "s", n_patients=16, per_patient=4, patch=16)
    # add synthetic rows (as the GAN augmenter does)
    st.append("gan", np.zeros((3, 16, 16, 3), np.uint8), {"synthetic": True, "label": np.array([1, 0, 1]),
                                                          "patient_id": "", "generator": "g"}, {"status": "done"})
    summary = splits.split_store(st, (6, 1, 1), seed=0)
    t = st.table(["patient_id", "split", "synthetic"])
    real = ~t["synthetic"]
    for p in np.unique(t["patient_id"][real]):
        assert len(set(t["split"][real][t["patient_id"][real] == p])) == 1
    assert set(t["split"][~real]) == {"train"}
    assert summary["train"]["synthetic"] == 3
    assert sum(v["patients"] for v in summary.values()) == 16
    assert all(v["mutant"] >= 1 and v["wildtype"] >= 1 for v in summary.values())


# ---------------------------------------------------------------------------------------------- patient identity
def _multi_slide_store(path, n_patients=24, source="slide", ids=None):
    """Patients with 1-4 slides each (TCGA barcodes: TCGA-AB-0000-01Z-00-DX1, ...-DX2, ...), blank patches.
    ``source="slide"``: the cohort gave no patient_id, so patient_id = slide id (the runner's fallback) and the
    slide records say so; ``"table"``: patient_id = the patient barcode."""
    from slidestream.engine import config
    from slidestream.engine.store import PatchStore

    pipe = config.with_defaults({"name": "multi", "patches": {"size": 8}, "store": {"codec": "zstd", "chunk": 4}})
    st = PatchStore.create(path, 8, pipe["store"], {"extraction_hash": config.extraction_hash(pipe), "pipeline": pipe})
    slides = []
    for i in range(n_patients):
        for k in range(1 + i % 4):
            slides.append((f"TCGA-AB-{i:04d}-0{k + 1}Z-00-DX{k + 1}" if ids is None else ids(i, k), f"TCGA-AB-{i:04d}", i % 2))
    if source == "table":  # one commit for all slides (faster; what the records say is all that matters)
        sid, patient, label = (np.repeat(c, 3) for c in zip(*slides))
        st.append("all", np.zeros((len(sid), 8, 8, 3), np.uint8),
                  {"slide_id": sid, "patient_id": patient, "label": label, "age": 50.0}, {"patient_source": "table"})
        return st
    for sid, patient, label in slides:  # one commit per slide, as the runner does
        st.append(sid, np.zeros((3, 8, 8, 3), np.uint8), {"slide_id": sid, "patient_id": sid, "label": label, "age": 50.0},
                  {"status": "done", "patient_source": "slide"})
    return st


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The multi-slide stores, built once (60 slide commits take seconds); tests work on copies."""
    root = tmp_path_factory.mktemp("multi")
    return {source: _multi_slide_store(root / source, source=source).path for source in ("slide", "table")}


def _copy(made, source, tmp_path):
    import shutil

    from slidestream.engine.store import PatchStore

    shutil.copytree(made[source], tmp_path / source)
    return PatchStore.open(tmp_path / source, mode="r+")


def _slides_share_split(st) -> bool:
    t = st.table(["slide_id", "split"])
    by_patient: dict[str, set] = {}
    for sid, s in zip(t["slide_id"], t["split"]):
        by_patient.setdefault(str(sid)[:12], set()).add(str(s))
    return all(len(v) == 1 for v in by_patient.values())


def test_fallback_patient_ids_are_refused_unless_told(made, tmp_path):
    st = _copy(made, "slide", tmp_path)
    with pytest.raises(ConfigError, match="--patient-from tcga") as e:
        splits.split_store(st, (6, 1, 1), seed=0)
    assert "\n" not in str(e.value) and "fell back to slide ids" in str(e.value)
    assert set(st.column("split")) == {""}  # nothing written
    splits.split_store(st, (6, 1, 1), seed=0, patient_from="slide")  # explicit: every slide its own patient
    assert len(set(st.column("patient_id"))) == len(set(st.column("slide_id"))) == 60
    assert st.manifest["split"]["patient_from"] == "slide"
    splits.check_patients(st)  # train accepts the explicit choice; a different one must re-split
    with pytest.raises(ConfigError, match="re-run `slidestream split"):
        splits.check_patients(st, "tcga")


def test_train_refuses_a_store_split_by_fallback_slide_ids(made, tmp_path):
    from slidestream.engine import config, train

    st = _copy(made, "slide", tmp_path)
    st.set_column("split", np.array(["train", "val", "test"] * (len(st) // 3)))  # a split made before this check
    with pytest.raises(ConfigError, match="fell back to slide ids"):
        train.train(config.parse({"name": "t", "classifier": {"name": "small_cnn"}}), st.path, tmp_path / "m", log=None)
    splits.check_patients(st, "slide")  # told explicitly: accepted
    with pytest.raises(ConfigError, match="--patient-from tcga"):
        splits.check_patients(st, "tcga")


@pytest.mark.parametrize("source", ["slide", "table"])
def test_all_slides_of_a_patient_share_a_split(made, tmp_path, source):
    """24 patients with 1-4 slides (60 slides): over seeds and k-fold folds no patient's slides are split apart.
    Splitting by slide instead puts the slides of some multi-slide patient into two splits in every one of
    these runs (36 patients' slides would each need to land together by chance)."""
    st = _copy(made, source, tmp_path)
    runs = [dict(seed=s) for s in range(4)] + [dict(seed=0, kfold=4, fold=f) for f in range(4)]
    for kw in runs:
        summary = splits.split_store(st, (6, 1, 1), patient_from="tcga" if source == "slide" else None, **kw)
        assert _slides_share_split(st), kw
        assert sum(v["patients"] for v in summary.values()) == 24
        assert set(st.column("patient_id")) == {f"TCGA-AB-{i:04d}" for i in range(24)}
    assert st.manifest["split"]["patient_from"] == ("tcga" if source == "slide" else "table")


def test_tcga_refuses_ids_that_are_not_barcodes(tmp_path):
    st = _multi_slide_store(tmp_path / "s", n_patients=4, ids=lambda i, k: f"slide-{i}-{k}" if i == 2 else
                            f"TCGA-AB-{i:04d}-0{k + 1}Z")
    with pytest.raises(ConfigError, match="'slide-2-0' is not a TCGA barcode") as e:
        splits.split_store(st, (2, 1, 1), patient_from="tcga")
    assert "\n" not in str(e.value)
    assert splits.tcga_patients(["tcga-cs-4938-01z-00-dx1"]).tolist() == ["TCGA-CS-4938"]


def test_cli_patient_from(made, tmp_path):
    from typer.testing import CliRunner

    from slidestream.engine.cli import app

    st = _copy(made, "slide", tmp_path)
    pipe = tmp_path / "p.json"
    pipe.write_text('{"name": "p"}')
    r = CliRunner().invoke(app, ["split", str(pipe), "--store", str(st.path)])
    assert isinstance(r.exception, ConfigError)
    r = CliRunner().invoke(app, ["split", str(pipe), "--store", str(st.path), "--patient-from", "tcga", "--ratios", "2:1:1"])
    assert r.exit_code == 0, r.output
    assert "train: 12 patients" in r.output and "test: 6 patients" in r.output


def test_cv_folds_stratified_seeded_and_checked():
    """training.fusion_cv's folds: every patient in exactly one fold, each fold with the class mix of the whole,
    fixed by the seed and independent of the input order; K above a class's patient count is refused."""
    import numpy as np

    from slidestream.engine.errors import ConfigError
    from slidestream.engine.splits import cv_folds

    pids = [f"P{i:02d}" for i in range(30)]
    labels = [1] * 20 + [0] * 10
    f = cv_folds(pids, labels, 5, seed=0)
    assert sorted(f) == pids and set(f.values()) == set(range(5))
    for k in range(5):
        members = [i for i, p in enumerate(pids) if f[p] == k]
        assert sum(labels[i] for i in members) == 4 and len(members) == 6
    assert cv_folds(pids[::-1], labels[::-1], 5, seed=0) == f
    assert cv_folds(pids, labels, 5, seed=1) != f
    with pytest.raises(ConfigError, match="fusion_cv = 11") as e:
        cv_folds(pids, labels, 11)
    assert "\n" not in str(e.value)
    assert np.bincount(list(cv_folds(pids, labels, 10).values())).tolist() == [3] * 10


@pytest.mark.parametrize("what", ["split", "set_column", "update_rows"])
def test_full_disk_while_writing_the_split_or_rows_names_the_store(tmp_path, monkeypatch, what):
    """`split`, PatchStore.set_column and update_rows on a full disk: one WriteError line naming the store and the
    fix (was a raw OSError traceback from zarr's writer)."""
    import errno
    import os

    from slidestream.engine import store as store_mod
    from slidestream.engine.store import PatchStore, WriteError

    st = make_store(tmp_path / "s", n_patients=6, per_patient=3, patch=16)
    st = PatchStore.open(st.path, mode="r+")
    key = next(iter(st.records()))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_mod.zarr3, "put", full)  # every file the store writes
    with pytest.raises(WriteError, match=rf"^{st.path}: No space left on device; free space and run the same command"):
        if what == "split":
            splits.split_store(st, (2, 1, 1), seed=0)
        elif what == "set_column":
            st.set_column("split", np.full(len(st), "train"))
        else:
            st.update_rows(key, {"age": 50.0}, {"status": "done"})


def test_full_disk_while_saving_the_manifest_names_the_store(tmp_path, monkeypatch):
    """PatchStore.save_manifest (any caller, not only `split`) on a full disk: one WriteError naming the store."""
    import errno
    import os

    from slidestream.engine import store as store_mod
    from slidestream.engine.store import PatchStore, WriteError

    st = PatchStore.open(make_store(tmp_path / "s", n_patients=6, per_patient=3, patch=16).path, mode="r+")

    def full(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_mod.zarr3, "put", lambda path, data: full(path))
    with pytest.raises(WriteError, match=rf"^{st.path}: No space left on device; free space"):
        st.save_manifest()


def test_split_refuses_a_slide_copied_under_another_patient(tmp_path):
    """Byte-identical slide files (equal record fingerprints) under two patients would put the same pixels in
    train and test: refused, naming both. Copies within one patient stay together and are allowed."""
    from slidestream.engine import config
    from slidestream.engine.store import PatchStore

    def store(path, copy_patient):
        pipe = config.with_defaults({"name": "fp", "patches": {"size": 8}, "store": {"codec": "zstd", "chunk": 4}})
        st = PatchStore.create(path, 8, pipe["store"], {"extraction_hash": config.extraction_hash(pipe), "pipeline": pipe})
        slides = [(f"S{i:02d}", f"P{i:02d}", i % 2, f"{1000 + i}:{i:032x}") for i in range(16)]
        slides.append(("S01copy", copy_patient, 1, slides[1][3]))  # the same file as S01
        for sid, pid, label, fp in slides:
            st.append(sid, np.zeros((2, 8, 8, 3), np.uint8), {"slide_id": sid, "patient_id": pid, "label": label,
                                                              "age": 50.0},
                      {"status": "done", "patient_source": "table", "fingerprint": fp})
        return st

    with pytest.raises(ConfigError, match=r"1 slide file is copied under another patient .*S01 \(patient P01\) = "
                                          r"S01copy \(patient P03\)"):
        splits.split_store(store(tmp_path / "a", "P03"), (6, 1, 1), seed=0)
    summary = splits.split_store(store(tmp_path / "b", "P01"), (6, 1, 1), seed=0)
    assert sum(v["patients"] for v in summary.values()) == 16
