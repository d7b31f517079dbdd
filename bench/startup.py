#!/usr/bin/env python3
"""Wall time of a one-slide ``slidestream extract`` process (issue 11), this tree against a baseline, in one run.

    python bench/startup.py SLIDE [--repeat 3] [--ab REV] [--pipeline schemas/examples/liu2020.json] [--importtime]
    python bench/startup.py SLIDE --cohort 8 [--repeat 3] [--ab REV]   # one process over 8 copies: wall / 8

Each round runs, for every version (this tree, and with ``--ab REV`` the git revision REV, interleaved):

- ``plain``: the ``slidestream extract PIPELINE --slides DIR --out STORE --no-qa --quiet`` process as a workflow
  manager runs it (one slide per job, fresh store), wall clock from spawn to exit and the child's CPU time
  (user + system, all threads: the steadier measure on a loaded machine);
- ``phased``: the same command through a small driver that clocks the phases of the process: ``interpreter``
  (spawn to the first line of Python), ``import_cli``, ``import_runner``, ``config_cohort`` (command line
  parsing, pipeline loading and validation, plugin loading, cohort), ``store_create``, ``slide`` (open,
  thumbnail, filters, plan, decode, compress), ``commit``, ``finish`` (summary, store close, output, joining
  threads) and ``exit`` (atexit handlers, interpreter teardown), in wall and CPU milliseconds.

One untimed warm-up run per version first, with bytecode writing on (even where ``PYTHONDONTWRITEBYTECODE``
is set, as on the dev machine): every version then starts from ``.pyc`` files, as an installed wheel does
(compiling the sources instead costs ~0.17 s CPU per process here). Prints one JSON line per version: medians
and the single runs. This tree (uncommitted changes included) and REV, checked out with ``git archive`` into a
temporary folder, are each put first on ``PYTHONPATH`` (as ``slidestream.engine``/``plugins``/``schemas``),
with the same installed dependencies and the installed ``slidestream`` console script. ``--importtime`` adds, per version, ``python -X importtime`` of one plain run
summed by top-level package (self times, ms): who the start-up time goes to. ``--cohort N``: the folder holds N
links to SLIDE and one plain process extracts them all; the line adds wall and CPU per slide (start-up
included), and there are no phased runs.
This script imports nothing heavy itself; slidestream is imported only in the child processes.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The phased child: clocks around the runner's steps, then the console script's main().
CHILD = r"""
import json, os, sys, time
def now():
    return (time.time(), time.process_time())
T = {"start": now()}
import slidestream.engine.cli as cli
T["import_cli"] = now()
from slidestream.engine import runner
T["import_runner"] = now()

def clock(obj, name, key):
    f = getattr(obj, name)
    def wrapped(*a, **k):
        T.setdefault(key + "_start", now())
        try:
            return f(*a, **k)
        finally:
            T[key + "_end"] = now()
    setattr(obj, name, wrapped)

clock(runner.PatchStore, "create", "store_create")
clock(runner, "process_slide", "slide")
clock(runner, "_run_dask", "slide")  # a slide run in a worker process (the default, with a time limit): its commit inside
clock(runner, "commit", "commit")

import atexit

@atexit.register  # registered last, runs first: after the command and the join of its threads, at any exit
def done():
    T["main_end"] = now()
    with open(os.environ["STARTUP_TIMES"], "w") as fh:
        json.dump(T, fh)

cli.main()
"""

PHASES = ["interpreter", "import_cli", "import_runner", "config_cohort", "store_create", "slide", "commit",
          "finish", "exit"]


def phases(t: dict, spawn: float, end: float, cpu: float, i: int) -> dict[str, float]:
    """Phase durations from the child's marks: wall clock (``i=0``; spawn and end seen by this process) or
    CPU time of the child, all threads (``i=1``; from 0 at spawn to ``cpu``, its total from ``getrusage``)."""
    marks = [spawn if i == 0 else 0.0] + [t[k][i] for k in (
        "start", "import_cli", "import_runner", "store_create_start", "store_create_end", "slide_start", "slide_end",
        "commit_end", "main_end")] + [end if i == 0 else cpu]
    d = dict(zip(["interpreter", "import_cli", "import_runner", "config_cohort", "store_create", "before_slide",
                  "slide", "commit_wait", "finish", "exit"], (b - a for a, b in zip(marks, marks[1:]))))
    d["commit"] = t["commit_end"][i] - t["commit_start"][i]
    d["slide"] += d.pop("commit_wait") - d["commit"]  # the slide ends where its commit starts
    d["config_cohort"] += d.pop("before_slide")  # store records, progress bar, planner thread
    return {k: d[k] for k in PHASES}


def shim(src: Path, tmp: Path) -> Path:
    """A folder that, first on ``PYTHONPATH``, makes ``src``'s engine/, plugins/ and schemas/ the imported
    ``slidestream.engine``/``plugins``/``schemas`` (the installed distribution still gives the entry points)."""
    pkg = tmp / "path" / "slidestream"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for name in ("engine", "plugins", "schemas"):
        (pkg / name).symlink_to(src / name)
    return tmp / "path"


def checkout(rev: str, tmp: Path) -> Path:
    """engine/, plugins/ and schemas/ of git revision ``rev``, extracted under ``tmp``."""
    src = tmp / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "engine", "plugins", "schemas"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    return src


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slide")
    ap.add_argument("--pipeline", default=str(ROOT / "schemas" / "examples" / "liu2020.json"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ab", metavar="REV", help="also time git revision REV (interleaved, same run)")
    ap.add_argument("--importtime", action="store_true", help="also sum -X importtime by top-level package")
    ap.add_argument("--cohort", type=int, default=1, help="one process over N links to SLIDE (wall / N; no phases)")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="startup-"))
    try:
        slides = tmp / "slides"
        slides.mkdir()
        for k in range(a.cohort):
            name = Path(a.slide).name if a.cohort == 1 else f"{Path(a.slide).stem}_{k}{Path(a.slide).suffix}"
            (slides / name).symlink_to(Path(a.slide).resolve())
        exe = shutil.which("slidestream") or sys.exit("the `slidestream` console script is not on PATH")
        versions = {"this": str(shim(ROOT, tmp / "this"))}  # this working tree, whatever is installed
        if a.ab:
            versions[a.ab] = str(shim(checkout(a.ab, tmp / "ab"), tmp / "ab"))

        def env(path, **extra):
            e = {**os.environ, **extra}
            if path:
                e["PYTHONPATH"] = os.pathsep.join([path] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
            return e

        def args(out):
            return ["extract", a.pipeline, "--slides", str(slides), "--out", str(out), "--no-qa", "--quiet"]

        def run(cmd, e):
            """Wall seconds, child CPU seconds (user + system, all threads) and the finished process."""
            out = tmp / "store"
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(tmp / "store.partial", ignore_errors=True)
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.time()
            p = subprocess.run(cmd + args(out), env=e, capture_output=True, text=True)
            t1 = time.time()
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if p.returncode:
                sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
            return t0, t1, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, p

        for v, path in versions.items():  # warm-up, writing bytecode: every version starts from .pyc files
            run([exe], {k: x for k, x in env(path).items() if k != "PYTHONDONTWRITEBYTECODE"})
        res = {v: {"wall": [], "cpu": [], "phased": [], "phased_cpu": []} for v in versions}
        for _ in range(a.repeat):
            for v, path in versions.items():
                t0, t1, cpu, _p = run([exe], env(path))
                res[v]["wall"].append(t1 - t0)
                res[v]["cpu"].append(cpu)
                if a.cohort > 1:
                    continue
                tf = tmp / "times.json"
                t0, t1, cpu, _p = run([sys.executable, "-c", CHILD], env(path, STARTUP_TIMES=str(tf)))
                t = json.loads(tf.read_text())
                res[v]["phased"].append(phases(t, t0, t1, cpu, 0))
                res[v]["phased_cpu"].append(phases(t, t0, t1, cpu, 1))

        imports = {}
        if a.importtime:
            for v, path in versions.items():
                *_, p = run([sys.executable, "-X", "importtime", exe], env(path))
                imports[v] = importtime_by_package(p.stderr)

        load = os.getloadavg()
        for v in versions:
            r = res[v]
            line = {"version": v, "repeat": a.repeat,
                    "wall_s_median": round(statistics.median(r["wall"]), 3),
                    "wall_s_runs": [round(x, 3) for x in r["wall"]],
                    "cpu_s_median": round(statistics.median(r["cpu"]), 3),
                    "cpu_s_runs": [round(x, 3) for x in r["cpu"]],
                    "loadavg_end": [round(x, 2) for x in load]}
            if a.cohort > 1:
                line.update(cohort=a.cohort, wall_s_per_slide_median=round(statistics.median(r["wall"]) / a.cohort, 3),
                            cpu_s_per_slide_median=round(statistics.median(r["cpu"]) / a.cohort, 3))
            else:
                line.update(
                    phases_wall_ms_median={k: round(1000 * statistics.median(x[k] for x in r["phased"]), 1)
                                           for k in PHASES},
                    phases_cpu_ms_median={k: round(1000 * statistics.median(x[k] for x in r["phased_cpu"]), 1)
                                          for k in PHASES},
                    phased_wall_s_runs=[round(sum(x.values()), 3) for x in r["phased"]])
            if v in imports:
                line["importtime_ms_by_package"] = imports[v]
            print(json.dumps(line), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def importtime_by_package(stderr: str, top: int = 15) -> dict[str, float]:
    """Self times of ``-X importtime`` summed by top-level package, the ``top`` largest (ms)."""
    by: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = (s.strip() for s in line[len("import time:"):].split("|"))
        root = name.split(".")[0]
        by[root] = by.get(root, 0.0) + int(self_us) / 1000
    return {k: round(v, 1) for k, v in sorted(by.items(), key=lambda kv: -kv[1])[:top]}


if __name__ == "__main__":
    main()
