"""A batch never stalls on one bad slide (per-slide time limit), interruption is clean, --workers is bounded.

Every CLI run here is a subprocess under a timeout, so a hang fails the test instead of stalling the suite."""
import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WSI = ROOT / "tests" / "data" / "wsi"
PIPELINE = ROOT / "schemas" / "examples" / "liu2020.json"

# A reader blocked on a stalled file system (NFS, FUSE): opening the slide named in HANG_SLIDE never returns.
HANG = textwrap.dedent("""
    import os, signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal (a shell's background job ignores it)
    from slidestream.engine import runner
    orig = runner.open_slide
    def open_slide(path, *a, **k):
        if os.path.basename(str(path)).split(".")[0] == os.environ.get("HANG_SLIDE"):
            if os.environ.get("HANG_PIDS"):  # where the hanging process is (driver or worker)
                open(os.path.join(os.environ["HANG_PIDS"], str(os.getpid())), "w").close()
            time.sleep(1000)
        return orig(path, *a, **k)
    runner.open_slide = open_slide
    from slidestream.engine.cli import main
    sys.argv = ["slidestream"] + sys.argv[1:]
    main()
""")


def _cohort(d: Path) -> Path:
    doc = json.loads(PIPELINE.read_text())  # small tiles: each slide takes well under a second
    doc["tiling"]["params"].update(size=256, min_tissue=0.3, max_tiles=2)
    doc["patches"] = {"size": 64, "mode": "random", "per_tile": 2}
    doc["thumbnail"] = {"scale": 16}
    (d / "small.json").write_text(json.dumps(doc))
    (d / "h.svs").symlink_to(WSI / "CMU-1-Small-Region.svs")  # first: a serial run must go on after it
    (d / "a.ome.tif").symlink_to(WSI / "OS-1-detail.ome.tif")
    (d / "c.csv").write_text("slide_path,patient_id,label,age,mpp\nh.svs,p1,1,40,0.5\na.ome.tif,p2,0,50,0.5\n")
    return d / "small.json"


def _args(d: Path, *extra) -> list[str]:
    return [sys.executable, "-c", HANG, "extract", str(d / "small.json"), "--slides", str(d / "c.csv"),
            "--out", str(d / "s.zarr"), "--json", "--no-qa", *map(str, extra)]


def _start(d: Path, *extra, hang: str = "", **env) -> subprocess.Popen:
    return subprocess.Popen(_args(d, *extra), cwd=d, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, HANG_SLIDE=hang, **env))


def _result(p: subprocess.Popen):
    """(exit code, summary lines by slide, summary, stderr) of a run started by ``_start``; a hang fails."""
    try:
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert out.strip(), err
    summary = json.loads(out.strip().splitlines()[-1])
    return p.returncode, {s["slide_id"]: s for s in summary["slides"]}, summary, err


def test_a_hanging_slide_is_stopped_at_the_limit_and_the_others_finish(tmp_path):
    """Serial and 2 workers, side by side: the hanging slide (first in the cohort) is failed at the limit."""
    dirs = {w: tmp_path / f"w{w}" for w in (1, 2)}
    runs = {}
    for w, d in dirs.items():
        d.mkdir()
        _cohort(d)
        runs[w] = _start(d, "--workers", w, "--slide-timeout", 4, hang="h")  # the good slide takes < 1 s
    for w, d in dirs.items():
        rc, by, _, err = _result(runs[w])
        assert rc == 1, err  # README: 1 = some slides failed
        assert by["a"]["status"] == "done", by
        reason = by["h"]["reason"]
        assert by["h"]["status"] == "error" and reason.startswith(f"{d / 'h.svs'}: not finished after 4 s") and \
            "extract.slide_timeout_s" in reason and "\n" not in reason, reason
        assert f"error {reason}" in err.splitlines(), err
    runs = {w: _start(d, "--workers", w) for w, d in dirs.items()}  # the rerun retries it, skips the other
    for w in dirs:
        rc, by, out, err = _result(runs[w])
        assert rc == 0 and by["h"]["status"] == "done" and out["skipped"] == 1, (err, out)


def _committed(store: Path) -> set:
    from slidestream.engine.store import PatchStore

    try:
        return set(PatchStore.open(store).records("slides"))
    except Exception:  # not created yet, or being written
        return set()


def _gone(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()  # a zombie is dead
    except OSError:
        return True


def test_sigint_and_sigterm_stop_serial_and_parallel_runs_cleanly(tmp_path):
    """A slide hangs; the run is interrupted after the first slide's commit: one line, exit 128 + signal, no
    worker left behind, the committed slide kept; the rerun extracts only the other one. The runs (SIGINT,
    SIGTERM x serial, 2 workers, and serial without a time limit) go side by side."""
    import signal
    import time

    runs = {}
    for sig, extra in ((signal.SIGINT, ("--workers", 1)), (signal.SIGTERM, ("--workers", 1)),
                       (signal.SIGINT, ("--workers", 2)), (signal.SIGTERM, ("--workers", 2)),
                       (signal.SIGTERM, ("--slide-timeout", 0))):  # no limit: the slides run in the driver
        d = tmp_path / f"{sig.name}{''.join(map(str, extra))}"
        d.mkdir()
        (d / "pids").mkdir()
        _cohort(d)
        (d / "c.csv").write_text("slide_path,patient_id,label,age,mpp\na.ome.tif,p1,0,50,0.5\nh.svs,p2,1,40,0.5\n")
        runs[d] = (sig, _start(d, *extra, hang="h", HANG_PIDS=str(d / "pids")))
    try:
        t = time.monotonic()
        for d, (sig, p) in runs.items():
            while "a" not in _committed(d / "s.zarr") or not any((d / "pids").iterdir()):
                assert time.monotonic() - t < 40 and p.poll() is None, (d, p.poll())
                time.sleep(0.1)
            p.send_signal(sig)
        for d, (sig, p) in runs.items():
            _, err = p.communicate(timeout=15)
            assert p.returncode == 128 + sig, (d.name, p.returncode, err)
            assert err.splitlines()[-1] == "error: interrupted; run the same command again to resume", (d.name, err)
            assert "Traceback" not in err, err
            assert all(_gone(int(f.name)) for f in (d / "pids").iterdir()), (d.name, "a worker was left running")
    finally:
        for d, (_, p) in runs.items():
            p.kill()
            for f in (d / "pids").iterdir():  # a worker left hanging by a failed run
                with contextlib.suppress(OSError):
                    os.kill(int(f.name), signal.SIGKILL)
    reruns = {d: _start(d) for d in runs}
    for d, p in reruns.items():
        rc, by, out, err = _result(p)
        assert rc == 0 and out["skipped"] == 1 and by["h"]["status"] == "done", (d.name, err, out)


def test_absurd_worker_counts_are_refused_before_work(cli, tmp_path):
    _cohort(tmp_path)
    most = 4 * (os.cpu_count() or 1)
    for n in (10000, most + 1):
        code, _, err = cli("extract", tmp_path / "small.json", "--slides", tmp_path / "c.csv", "--out",
                           tmp_path / "s.zarr", "--workers", n, "--quiet")
        assert code == 2 and err.startswith(f"--workers {n}: give 1 to {most} (4 per CPU core here"), (n, err)
        assert not (tmp_path / "s.zarr").exists(), n
    for n in (0, -1):  # the option's own bound, one line from the console script
        p = subprocess.run([sys.executable, "-m", "slidestream.engine", "extract", str(tmp_path / "small.json"),
                            "--slides", str(tmp_path / "c.csv"), "--out", str(tmp_path / "s.zarr"), "--workers", str(n)],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1 and "--workers" in p.stderr, (n, p.stderr)
        assert not (tmp_path / "s.zarr").exists(), n


def test_a_dask_worker_dying_hard_fails_only_its_slide_in_our_words(tmp_path):
    """`--scheduler`: every dask worker that runs slide h dies (os._exit, as on SIGKILL or a segfault); dask gives up
    after 4 tries. The slide's reason is the local one, and dask's own warnings stay off the terminal."""
    from distributed import LocalCluster

    _cohort(tmp_path)
    (tmp_path / "die.py").write_text(textwrap.dedent("""
        import os
        from slidestream.engine import runner
        if not hasattr(runner, "_real_process_slide"):  # dask may run a preload twice
            runner._real_process_slide = runner.process_slide
            def process_slide(pipeline, row, *a, **k):
                if row.slide_id == "h":
                    os._exit(9)
                return runner._real_process_slide(pipeline, row, *a, **k)
            runner.process_slide = process_slide
    """))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50,
                      preload=[str(tmp_path / "die.py")]) as cluster:
        rc, by, _, err = _result(_start(tmp_path, "--scheduler", cluster.scheduler_address))
    assert rc == 1 and by["a"]["status"] == "done", (err, by)
    assert by["h"]["reason"] == (f"{tmp_path / 'h.svs'}: its worker process died (killed, out of memory or a crash in "
                                 "a reader); the other slides went on; rerun to retry it"), by["h"]
    assert all(line.startswith("error ") for line in err.splitlines()), err
