"""Issue 11, round 12: a serial cohort commits slide k in a background thread while slide k+1 decodes
(``runner.InOrder``), in cohort order; a commit that fails stops the run (a rerun resumes), and Ctrl-C waits
for the commit under way instead of closing the store under it."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from slidestream.engine import config, runner
from slidestream.engine.cohort import read_cohort
from slidestream.engine.store import PatchStore, WriteError
from slidestream.engine.synthetic import make_slide

SLOW = 0.4  # s each commit takes here: far longer than a tiny slide's decode, so an overlap cannot be chance


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("c12")
    rows = ["slide_path,patient_id,label,age"]
    for i in range(3):
        p = make_slide(d / f"s{i}.svs", size=(1536, 1024), label=i % 2, seed=i)
        rows.append(f"{p},p{i},{i % 2},{50 + i}")
    (d / "cohort.csv").write_text("\n".join(rows) + "\n")
    return d / "cohort.csv"


def _pipeline():
    p = config.load(config.example("liu2020"))  # small tiles and patches: tiny slides with several tiles each
    p["tiling"]["params"].update(size=256, min_tissue=0.3, max_tiles=6)
    p["patches"] = {**p["patches"], "size": 64, "mode": "random", "per_tile": 4}
    p["thumbnail"]["scale"] = 16
    return p


def _run(cohort, out):
    return runner.extract(_pipeline(), read_cohort(str(cohort)), out, threads=2, qa=False, progress=False)


def _patches(out):
    st = PatchStore.open(out)
    return {k: v["n_patches"] for k, v in st.records().items()}, np.asarray(st.patches[:])


def test_a_slides_commit_overlaps_the_next_slides_decode(cohort, tmp_path, monkeypatch):
    events, real_commit, real_process = [], runner.commit, runner.process_slide

    def commit(store, row, rec):
        t = time.perf_counter()
        time.sleep(SLOW)
        real_commit(store, row, rec)
        events.append(("commit", row.slide_id, t, time.perf_counter(), threading.current_thread().name))

    def process(pipeline, row, *a, **k):
        t = time.perf_counter()
        rec = real_process(pipeline, row, *a, **k)
        events.append(("process", row.slide_id, t, time.perf_counter(), threading.current_thread().name))
        return rec

    monkeypatch.setattr(runner, "commit", commit)
    monkeypatch.setattr(runner, "process_slide", process)
    summary = _run(cohort, tmp_path / "s")
    assert summary["rows"] > 0
    commits = [e for e in events if e[0] == "commit"]
    processes = [e for e in events if e[0] == "process"]
    ids = [r.slide_id for r in read_cohort(str(cohort))]
    assert [e[1] for e in commits] == ids  # in cohort order
    assert all(e[4] != "MainThread" for e in commits)
    for k in range(1, len(ids)):  # slide k started before slide k-1's commit ended
        assert processes[k][2] < commits[k - 1][3], (k, events)
    # the same store as without the overlap
    monkeypatch.setattr(runner, "commit", real_commit)
    monkeypatch.setattr(runner, "process_slide", real_process)
    _run(cohort, tmp_path / "ref")
    got, ref = _patches(tmp_path / "s"), _patches(tmp_path / "ref")
    assert got[0] == ref[0] and np.array_equal(got[1], ref[1])


def test_a_failing_commit_stops_the_run_and_a_rerun_resumes(cohort, tmp_path, monkeypatch):
    real = PatchStore.commit_staged
    ids = [r.slide_id for r in read_cohort(str(cohort))]

    def failing(self, key, *a, **k):
        if key == ids[1]:
            raise WriteError(f"{self.path}: No space left on device; free space and run the same command again")
        return real(self, key, *a, **k)

    monkeypatch.setattr(PatchStore, "commit_staged", failing)
    with pytest.raises(WriteError, match="No space left"):
        _run(cohort, tmp_path / "s")
    assert set(PatchStore.open(tmp_path / "s").records()) == {ids[0]}  # slide 0 kept, slide 2 never committed
    monkeypatch.setattr(PatchStore, "commit_staged", real)
    summary = _run(cohort, tmp_path / "s")
    assert summary["skipped"] == 1  # slide 0 resumed, not extracted again
    _run(cohort, tmp_path / "ref")
    got, ref = _patches(tmp_path / "s"), _patches(tmp_path / "ref")
    assert got[0] == ref[0]
    assert sorted(map(tuple, got[1].reshape(len(got[1]), -1)[:, :64])) == sorted(map(tuple, ref[1].reshape(len(ref[1]), -1)[:, :64]))


def test_ctrl_c_waits_for_the_commit_under_way(cohort, tmp_path, monkeypatch):
    """Ctrl-C while slide 1 decodes: slide 0's commit, still under way in its thread, finishes before the store
    is closed (without the wait the store was closed under it and slide 0 was lost)."""
    real_commit, real_process = runner.commit, runner.process_slide
    ids = [r.slide_id for r in read_cohort(str(cohort))]

    def commit(store, row, rec):
        time.sleep(SLOW)
        real_commit(store, row, rec)

    def process(pipeline, row, *a, **k):
        if row.slide_id == ids[1]:
            raise KeyboardInterrupt
        return real_process(pipeline, row, *a, **k)

    monkeypatch.setattr(runner, "commit", commit)
    monkeypatch.setattr(runner, "process_slide", process)
    with pytest.raises(KeyboardInterrupt):
        _run(cohort, tmp_path / "s")
    assert list(PatchStore.open(tmp_path / "s").records()) == [ids[0]]
