"""A batch never stalls on one bad slide (per-slide time limit).

Every CLI run here is a subprocess under a timeout, so a hang fails the test instead of stalling the suite."""
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
    import os, sys, time
    from slidestream.engine import runner
    orig = runner.open_slide
    def open_slide(path, *a, **k):
        if os.path.basename(str(path)).split(".")[0] == os.environ.get("HANG_SLIDE"):
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
