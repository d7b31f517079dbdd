"""Parallel extraction (--workers) with bad input: never hangs, never loses the other slides' work."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WSI = ROOT / "tests" / "data" / "wsi"
PIPELINE = ROOT / "schemas" / "examples" / "liu2020.json"

KILLER = textwrap.dedent("""
    import os, sys
    from slidestream.engine import runner
    orig = runner.process_slide
    def process_slide(pipeline, row, *a, **k):
        if row.slide_id == os.environ.get("KILL_SLIDE"):
            os._exit(9)  # the worker dies hard, as on SIGKILL, the OOM killer or a segfault in a reader
        return orig(pipeline, row, *a, **k)
    runner.process_slide = process_slide
    from slidestream.engine.cli import main
    sys.argv = ["slidestream"] + sys.argv[1:]
    main()
""")


def _run(tmp_path, kill):
    env = dict(os.environ, KILL_SLIDE=kill)
    p = subprocess.run([sys.executable, "-c", KILLER, "extract", str(PIPELINE), "--slides", str(tmp_path / "c.csv"),
                        "--out", str(tmp_path / "s.zarr"), "--workers", "2", "--json", "--no-qa"],
                       capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert p.stdout.strip(), p.stderr
    return p.returncode, json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


def test_worker_dying_hard_fails_only_its_slide_and_rerun_resumes(tmp_path):
    for name, src in (("a", "CMU-1-Small-Region.svs"), ("b", "tcga-cr-7395-01a-01-ts1.svs"),
                      ("c", "OS-1-detail.ome.tif")):
        (tmp_path / f"{name}{Path(src).suffix if name != 'c' else '.ome.tif'}").symlink_to(WSI / src)
    (tmp_path / "c.csv").write_text("slide_path,patient_id,label,age,mpp\na.svs,p1,1,40,0.5\n"
                                    "b.svs,p2,0,50,0.5\nc.ome.tif,p3,0,60,0.5\n")
    rc, out, err = _run(tmp_path, "b")
    status = {s["slide_id"]: s for s in out["slides"]}
    assert rc == 1, err
    assert "worker process died" in status["b"]["reason"], status["b"]
    others = {k: v["status"] for k, v in status.items() if k != "b"}
    assert "error" not in others.values(), status  # one broken pool used to fail every slide in flight
    rc, out, err = _run(tmp_path, "")
    assert rc == 0, err
    assert out["skipped"] == 2 and [s["status"] for s in out["slides"] if s["slide_id"] == "b"] != ["error"], out


def test_sigterm_during_parallel_run_with_a_hanging_slide_exits_and_rerun_resumes(tmp_path):
    import signal
    import time
    (tmp_path / "a.svs").symlink_to(WSI / "CMU-1-Small-Region.svs")
    (tmp_path / "b.svs").symlink_to(WSI / "tcga-cr-7395-01a-01-ts1.svs")
    (tmp_path / "c.csv").write_text("slide_path,patient_id,label,age,mpp\na.svs,p1,1,40,0.5\nb.svs,p2,0,50,0.5\n")
    hang = KILLER.replace("os._exit(9)", "import time; time.sleep(1000)")
    log = tmp_path / "log"
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "-c", hang, "extract", str(PIPELINE), "--slides", str(tmp_path / "c.csv"),
                              "--out", str(tmp_path / "s.zarr"), "--workers", "2", "--json", "--no-qa"],
                             stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path, env=dict(os.environ, KILL_SLIDE="b"))
    try:
        t = time.monotonic()
        while " a: " not in log.read_text() and time.monotonic() - t < 30:
            time.sleep(0.1)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=15) != 0
    finally:
        p.kill()
    rc, out, err = _run(tmp_path, "")
    assert rc == 0 and out["skipped"] == 1, (err, out)  # slide a, committed before the signal, is kept
