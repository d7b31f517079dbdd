"""Kill -9 the `extract` driver at random moments, rerun it, and check the store against an uninterrupted run.

    python bench/kill.py [--trials 20] [--slides 6] [--workers 1]

Each trial: a fresh store; `slidestream extract` killed (SIGKILL) at a uniform random moment between taking
the store's lock and the reference run's end (store creation included); rerun to the end; every slide's patches (bytes) and
columns compared with the reference store. Prints one line per trial and the figure ``identical x/N``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from slidestream.engine import config
from slidestream.engine.store import PatchStore, beside
from slidestream.engine.synthetic import make_cohort


def per_slide(path: Path) -> dict:
    st = PatchStore.open(path)
    t = st.table()
    out = {}
    for sid, rec in st.records().items():
        rows = slice(*rec.get("rows", (0, 0)))
        out[sid] = (st.patches[rows].tobytes(), {c: np.asarray(t[c][rows]).tobytes() for c in t}, rec["status"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--slides", type=int, default=6)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ss-kill-"))
    try:
        csv = make_cohort(tmp / "slides", n_patients=a.slides, size=(2048, 1536))
        doc = json.loads(Path(config.example("liu2020")).read_text())
        doc["tiling"]["params"].update(size=256, min_tissue=0.3, max_tiles=8)
        doc["patches"] = {"size": 64, "mode": "random", "per_tile": 16}
        doc["thumbnail"] = {"scale": 16}
        pipe = tmp / "pipe.json"
        pipe.write_text(json.dumps(doc))

        def cmd(out: Path) -> list[str]:
            return [sys.executable, "-m", "slidestream.engine", "extract", str(pipe), "--slides", str(csv), "--out",
                    str(out), "--quiet", "--workers", str(a.workers)]

        def started(proc, out: Path) -> float:
            """Seconds until the driver holds the store's lock (Python start-up and imports before it)."""
            t0 = time.perf_counter()
            while proc.poll() is None and not beside(out, "lock").exists():
                time.sleep(0.001)
            return time.perf_counter() - t0

        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd(tmp / "ref"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = started(proc, tmp / "ref")
        assert proc.wait() == 0
        full = time.perf_counter() - t0 - start  # the store's life: creation to the end
        ref = per_slide(tmp / "ref")
        rng = np.random.default_rng(a.seed)
        ok = 0
        for trial in range(a.trials):
            out = tmp / f"t{trial}"
            at = float(rng.uniform(0, full))
            proc = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            started(proc, out)
            time.sleep(at)
            killed = proc.poll() is None
            if killed:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            try:
                committed = len(PatchStore.open(out).records()) if (out / "zarr.json").exists() else "no store"
            except Exception as e:  # a broken store is a failed trial
                committed = f"unreadable ({e})"
            r = subprocess.run(cmd(out), capture_output=True, text=True)
            try:
                same = r.returncode == 0 and per_slide(out) == ref
            except Exception:
                same = False
            ok += same
            print(f"trial {trial + 1}: kill {at:.2f} s after the lock (run: {full:.2f} s) ({'killed' if killed else 'had finished'}, "
                  f"committed slides then: {committed}), rerun exit {r.returncode}: {'identical' if same else 'DIFFERENT'}",
                  flush=True)
            if r.returncode and r.stderr:
                print(r.stderr.strip().splitlines()[-1])
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(out.with_name(out.name + ".qa"), ignore_errors=True)
        print(f"identical {ok}/{a.trials}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
