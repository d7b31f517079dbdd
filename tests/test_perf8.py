"""Issue 11, round 8: a serial cohort run keeps both cores busy (slides planned two ahead, in two threads)."""
import os
import threading
import time

import numpy as np
import pytest

from slidestream.engine import config, runner
from slidestream.engine.cohort import SlideRow, identical_copies, read_cohort, same_bytes
from slidestream.engine.synthetic import make_slide


def _cohort(tmp_path, n):
    for i in range(n):
        make_slide(tmp_path / "slides" / f"s{i}.svs", size=(1024, 768), label=i % 2, seed=i)
    return read_cohort(str(tmp_path / "slides"))


def _watched(monkeypatch):
    """Record which slides' real ``prepare_slide`` started and finished (the real function still runs)."""
    started, finished, real = [], [], runner.prepare_slide

    def watched(pipeline, row, *a, **k):
        started.append(row.slide_id)
        try:
            return real(pipeline, row, *a, **k)
        finally:
            finished.append(row.slide_id)

    monkeypatch.setattr(runner, "prepare_slide", watched)
    return started, finished


def _wait(cond, seconds=10.0):
    t = time.monotonic() + seconds
    while not cond() and time.monotonic() < t:
        time.sleep(0.005)
    return cond()


def test_first_two_slides_plan_at_once(tmp_path, monkeypatch):
    """One planner thread planned slide 1 only after slide 0: at the start of a run one core idled."""
    todo = _cohort(tmp_path, 3)
    pipeline = config.load(str(config.example("liu2020")))
    both = threading.Barrier(2, timeout=10)  # slide 0's planning waits for slide 1's to start: needs two threads
    real = runner.prepare_slide

    def together(pipeline, row, *a, **k):
        if row.slide_id in ("s0", "s1"):
            both.wait()
        return real(pipeline, row, *a, **k)

    monkeypatch.setattr(runner, "prepare_slide", together)
    gen = runner.planned_ahead(pipeline, todo)
    row, prepared = next(gen)
    slide, (thumb, *_), _ = prepared()  # a BrokenBarrierError here: slides 0 and 1 were not planned at the same time
    slide.close()
    assert row.slide_id == "s0" and thumb.size > 0
    for _, prepared in gen:
        prepared()[0].close()


def test_slide_k_plus_2_plans_while_slide_k_runs(tmp_path, monkeypatch):
    """Planning one slide ahead left the planner idle through slide k's last compression and commit: now slide
    k+2 is planned while the caller still holds slide k, and each slide is planned once, in cohort order."""
    todo = _cohort(tmp_path, 4)
    pipeline = config.load(str(config.example("liu2020")))
    started, finished = _watched(monkeypatch)
    seen = []
    for row, prepared in runner.planned_ahead(pipeline, todo):
        slide, _, _ = prepared()
        if row.slide_id == "s0":
            assert _wait(lambda: "s2" in finished), f"slide s2 not planned while s0 runs (planned: {finished})"
        slide.close()
        seen.append(row.slide_id)
    assert seen == ["s0", "s1", "s2", "s3"] and sorted(started) == seen and sorted(finished) == seen


def _io() -> dict[str, int]:
    """Bytes read (``rchar``) and read calls (``syscr``) of this process so far (Linux /proc/self/io)."""
    with open("/proc/self/io") as fh:
        return {k: int(v) for k, v in (line.split(":") for line in fh)}


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs /proc/self/io (Linux)")
def test_identical_copies_reads_links_not_at_all_and_copies_in_big_blocks(tmp_path):
    """The extract CLI's check for byte-identical copies (filecmp) read two names of one file whole, in 8 KiB
    reads: 0.26 s CPU of a cohort of 8 links to the 98 MB bench slide (0.31 s for 8 copies). Now a link is the
    same file unread, and copies are compared 1 MiB at a time."""
    data = np.random.default_rng(0).integers(0, 256, 4 << 20, dtype=np.uint8).tobytes()
    (tmp_path / "a.svs").write_bytes(data)
    os.link(tmp_path / "a.svs", tmp_path / "b.svs")
    (tmp_path / "c.svs").symlink_to(tmp_path / "a.svs")
    rows = [SlideRow(str(tmp_path / n), n, n) for n in ("a.svs", "b.svs", "c.svs")]
    before = _io()
    pairs = identical_copies(rows)
    assert [(a.slide_id, b.slide_id) for a, b in pairs] == [("a.svs", "b.svs"), ("a.svs", "c.svs")]
    assert _io()["rchar"] - before["rchar"] < 1 << 20  # the fingerprints only (64 KiB head + tail per file)
    (tmp_path / "d.svs").write_bytes(data)  # a real copy
    before = _io()
    assert [(a.slide_id, b.slide_id) for a, b in identical_copies(rows[:1] + [SlideRow(str(tmp_path / "d.svs"), "d", "d")])] == [("a.svs", "d")]
    assert _io()["syscr"] - before["syscr"] < 64  # 2 x 4 MiB in 1 MiB blocks (8 KiB reads: > 1,000 calls)


def test_same_bytes_finds_one_changed_byte_anywhere(tmp_path):
    data = bytearray(np.random.default_rng(1).integers(0, 256, (2 << 20) + 5, dtype=np.uint8).tobytes())
    (tmp_path / "a").write_bytes(data)
    (tmp_path / "same").write_bytes(data)
    assert same_bytes(str(tmp_path / "a"), str(tmp_path / "same"))
    for i in (0, (1 << 20) - 1, 1 << 20, 2 << 20, len(data) - 1):  # block edges and the short last block
        changed = bytearray(data)
        changed[i] ^= 1
        (tmp_path / "b").write_bytes(changed)
        assert not same_bytes(str(tmp_path / "a"), str(tmp_path / "b")), i
    (tmp_path / "short").write_bytes(data[:-1])
    assert not same_bytes(str(tmp_path / "a"), str(tmp_path / "short"))
