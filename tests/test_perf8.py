"""Issue 11, round 8: a serial cohort run keeps both cores busy (slides planned two ahead, in two threads)."""
import threading
import time


from slidestream.engine import config, runner
from slidestream.engine.cohort import read_cohort
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
