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
