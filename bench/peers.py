#!/usr/bin/env python3
"""slidestream against TIAToolbox and LazySlide on the same slides, in one run (issue 11, done-when #1).

    python bench/peers.py SLIDE [--cohort 8] [--processes N] [--rounds 3] [--work /tmp/peers/run] [--cache DIR]
    python bench/peers.py --setup-only          # create the peers' virtual environments and stop
    python bench/peers.py --summarize run.jsonl # the summary and table of a saved run

Each tool does its equivalent of "find tissue, tile 1024² at 10x, keep the tiles with >= 50 % tissue, read the
kept tiles' pixels" on ``--cohort`` copies of SLIDE:

- slidestream: ``slidestream extract schemas/examples/liu2020.json --no-qa`` (DPW filters on the 1/32 thumbnail,
  1024² tiles at 10x, >= 50 % tissue, top 50, and it also cuts 8 random 256² patches per tile, compresses them
  (zstd-1) and stores them in a zarr patch store: more work than the peers do);
- TIAToolbox 2.1.3: ``WSIReader.open`` (OpenSlide), ``tissue_mask(method="otsu", resolution=1.25, units="power")``,
  ``SlidingWindowPatchExtractor`` 1024² at ``resolution=10, units="power"``, ``min_mask_ratio=0.5``, every
  patch read;
- LazySlide 0.13.0: ``open_wsi(reader="openslide", store=None)``, ``pp.find_tissues`` (Otsu),
  ``pp.tile_tissues(1024, mpp=1.0, background_fraction=0.5)``, every tile read through ``iter.tile_images``.

Each peer runs in its own virtual environment under ``--cache``/<tool> (default ~/.cache/slidestream-peers),
created on first use by pip from the configured indexes; torch is not installed there (PyPI's Linux torch is a
CUDA build of several GB): a .pth links the torch family of this interpreter's environment (``--torch-from``).
Every tool is timed two ways in each round (the order of tools rotates per round): one process over the whole
cohort (wall incl. start-up / cohort; the peers' jobs also report their wall and CPU time per slide after
imports) and one process per slide (as a workflow manager runs jobs), on the first ``--processes`` copies.
One warm-up process per tool (page cache, .pyc files) is not counted. Wall and CPU seconds (user + system of
the child) are recorded. Prints one JSON line per measurement, then the medians and ratios as one JSON line
and a table.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "schemas" / "examples" / "liu2020.json"

# tool -> (pinned package, pip install steps). Torch is not installed into the peers' venvs: PyPI's Linux torch
# is a CUDA build of several GB, so each venv gets a .pth to a folder of links to the torch family (torch,
# torchvision, triton, nvidia-*, cuda-*) of this interpreter's environment (--torch-from), which pip then sees
# as installed. TIAToolbox 2.1.3 declares torch<2.13 and torchvision<0.28; its tissue-mask/tiling/reading job
# does not use torch (it only imports torchvision), so it is installed without dependencies and its other
# declared requirements are installed as declared.
PEERS = {
    "tiatoolbox": ("tiatoolbox==2.1.3", [["--no-deps", "tiatoolbox==2.1.3"], ["-r", "{requirements}"]]),
    "lazyslide": ("lazyslide==0.13.0", [["lazyslide==0.13.0"]]),
}
TORCH_FAMILY = ("torch", "functorch", "torchgen", "torchvision", "triton", "nvidia", "cuda")

TIA_JOB = r'''
import json, sys, time
t0 = time.perf_counter()
from tiatoolbox.tools.patchextraction import SlidingWindowPatchExtractor
from tiatoolbox.wsicore.wsireader import WSIReader
t_import = time.perf_counter() - t0
for path in sys.argv[1:]:
    t, c = time.perf_counter(), time.process_time()
    wsi = WSIReader.open(path)
    mask = wsi.tissue_mask(method="otsu", resolution=1.25, units="power")
    tiles = SlidingWindowPatchExtractor(wsi, patch_size=(1024, 1024), input_mask=mask, resolution=10,
                                        units="power", stride=(1024, 1024), min_mask_ratio=0.5, within_bound=True)
    n = checksum = 0
    for tile in tiles:
        assert tile.shape == (1024, 1024, 3), tile.shape
        n += 1
        checksum += int(tile[::64, ::64].sum())
    print(json.dumps({"slide": path, "tiles": n, "slide_s": time.perf_counter() - t,
                      "slide_cpu_s": time.process_time() - c, "import_s": t_import,
                      "checksum": checksum}), flush=True)
'''

LAZYSLIDE_JOB = r'''
import json, sys, time
t0 = time.perf_counter()
import lazyslide as zs
from wsidata import open_wsi
t_import = time.perf_counter() - t0
for path in sys.argv[1:]:
    t, c = time.perf_counter(), time.process_time()
    wsi = open_wsi(path, reader="openslide", store=None)
    zs.pp.find_tissues(wsi, method="otsu")
    zs.pp.tile_tissues(wsi, 1024, mpp=1.0, background_fraction=0.5)
    n = checksum = 0
    for tile in wsi.iter.tile_images("tiles"):
        img = tile.image
        assert img.shape == (1024, 1024, 3), img.shape
        n += 1
        checksum += int(img[::64, ::64].sum())
    print(json.dumps({"slide": path, "tiles": n, "slide_s": time.perf_counter() - t,
                      "slide_cpu_s": time.process_time() - c, "import_s": t_import,
                      "checksum": checksum}), flush=True)
'''

JOBS = {"tiatoolbox": TIA_JOB, "lazyslide": LAZYSLIDE_JOB}


def venv_python(cache: Path, tool: str) -> Path:
    return cache / tool / "bin" / "python"


def torch_links(cache: Path, site: Path) -> Path:
    """A folder of links to the torch family of site-packages ``site`` (packages and their .dist-info)."""
    links = cache / "_torch"
    links.mkdir(parents=True, exist_ok=True)
    for entry in site.iterdir():
        if entry.name.lower().startswith(TORCH_FAMILY) and not (links / entry.name).exists():
            (links / entry.name).symlink_to(entry)
    return links


def setup_peer(cache: Path, tool: str, torch_site: Path) -> Path:
    """The peer's virtual environment, created and installed unless a finished one is there."""
    spec, steps = PEERS[tool]
    env = cache / tool
    marker = env / "slidestream-peer.json"
    want = {"spec": spec, "torch_from": str(torch_site)}
    py = venv_python(cache, tool)
    if marker.exists() and json.loads(marker.read_text()) == want:
        return py
    print(f"[setup] {tool}: {env} (pip install {spec}; the first time takes minutes)", file=sys.stderr, flush=True)
    if not py.exists():
        env.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "slidestream_peer_torch.pth").write_text(f"{torch_links(cache, torch_site)}\n")
    for step in steps:
        if "{requirements}" in step:  # the declared requirements of the installed peer, without torch
            reqs = subprocess.run([str(py), "-c", REQUIREMENTS, spec.split("==")[0]], check=True,
                                  capture_output=True, text=True).stdout
            (env / "requirements.txt").write_text(reqs)
        args = [a.format(requirements=env / "requirements.txt") for a in step]
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", *args], check=True)
    marker.write_text(json.dumps(want))
    return py


REQUIREMENTS = r'''
import re, sys
from importlib.metadata import requires
for r in requires(sys.argv[1]) or []:  # unconditional ones (no extras, no markers), torch left out
    if ";" not in r and re.match(r"[A-Za-z0-9_.-]+", r).group().lower() not in ("torch", "torchvision"):
        print(r)
'''


VERSIONS = r'''
import json, sys
from importlib.metadata import version
print(json.dumps({p: version(p) for p in (sys.argv[1], "torch", "torchvision", "openslide-python", "openslide-bin")}))
'''


def slidestream_version() -> str:
    from importlib.metadata import version  # noqa: PLC0415
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return f"{version('slidestream')} ({rev.stdout.strip() or 'not a git checkout'})"


def slidestream_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("slidestream")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "slidestream.engine"]


def timed(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run a child; its wall seconds and CPU seconds (user + system, all its threads)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return p, wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def run_slidestream(slides: list[Path], out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    src = slides[0] if len(slides) == 1 else slides[0].parent
    p, wall, cpu = timed([*slidestream_cmd(), "extract", str(PIPELINE), "--slides", str(src), "--out", str(out),
                          "--unlabeled", "--no-qa", "--quiet", "--json"])
    if p.returncode != 0:
        raise RuntimeError(f"slidestream extract failed ({p.returncode}):\n{p.stderr[-3000:]}")
    summary = json.loads(p.stdout)
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": wall, "cpu_s": cpu, "summary": summary}


def run_peer(py: Path, job: Path, slides: list[Path]) -> dict:
    p, wall, cpu = timed([str(py), str(job), *map(str, slides)])
    if p.returncode != 0:
        raise RuntimeError(f"{job.name} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    per_slide = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    return {"wall_s": wall, "cpu_s": cpu, "per_slide": per_slide}


def slidestream_tiles(summary: dict) -> list[int]:
    """Kept tiles per slide from the extract --json summary; every slide must be done."""
    bad = [r for r in summary["slides"] if r["status"] != "done"]
    if bad:
        raise RuntimeError(f"slidestream extract: slides not done: {bad}")
    return [int(r["tiles"]) for r in summary["slides"]]


def measure(tool: str, py: Path | None, job: Path | None, slides: list[Path], work: Path, rnd: int,
            processes: int) -> list[dict]:
    """One round of one tool: the cohort in one process, then one process per slide for the first ``processes``."""
    recs = []
    if tool == "slidestream":
        r = run_slidestream(slides, work / "store")
        recs.append({"tool": tool, "round": rnd, "mode": "cohort", "slides": len(slides), "wall_s": r["wall_s"],
                     "per_slide_s": r["wall_s"] / len(slides), "cpu_per_slide_s": r["cpu_s"] / len(slides),
                     "inproc_slide_s": r["summary"]["seconds"] / len(slides),  # extract's own clock: after imports
                     "tiles": slidestream_tiles(r["summary"])})
        for s in slides[:processes]:
            r = run_slidestream([s], work / "store")
            recs.append({"tool": tool, "round": rnd, "mode": "process", "slide": s.name, "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                         "tiles": slidestream_tiles(r["summary"])})
    else:
        r = run_peer(py, job, slides)
        recs.append({"tool": tool, "round": rnd, "mode": "cohort", "slides": len(slides), "wall_s": r["wall_s"],
                     "per_slide_s": r["wall_s"] / len(slides), "cpu_per_slide_s": r["cpu_s"] / len(slides),
                     "import_s": r["per_slide"][0]["import_s"],
                     "inproc_slide_s": statistics.median(x["slide_s"] for x in r["per_slide"]),
                     "inproc_cpu_s": statistics.median(x["slide_cpu_s"] for x in r["per_slide"]),
                     "tiles": [x["tiles"] for x in r["per_slide"]]})
        for s in slides[:processes]:
            r = run_peer(py, job, [s])
            recs.append({"tool": tool, "round": rnd, "mode": "process", "slide": s.name, "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                         "tiles": [x["tiles"] for x in r["per_slide"]]})
    return recs


def summarize(recs: list[dict], tools: list[str]) -> dict:
    med = statistics.median
    out = {}
    for tool in tools:
        cohort = [r for r in recs if r["tool"] == tool and r["mode"] == "cohort"]
        procs = [r for r in recs if r["tool"] == tool and r["mode"] == "process"]
        out[tool] = {
            "cohort_per_slide_s": med(r["per_slide_s"] for r in cohort),
            "cohort_per_slide_rounds": [round(r["per_slide_s"], 3) for r in cohort],
            "process_per_slide_s": med(r["wall_s"] for r in procs),
            "cohort_cpu_per_slide_s": med(r["cpu_per_slide_s"] for r in cohort),
            "process_cpu_s": med(r["cpu_s"] for r in procs),
            "tiles_per_slide": med(t for r in cohort for t in r["tiles"]) if any(r["tiles"] for r in cohort) else None,
        }
        if all("inproc_slide_s" in r for r in cohort):  # slidestream: runs before 2026-12-06 lack it
            out[tool]["inproc_slide_s"] = med(r["inproc_slide_s"] for r in cohort)
        if tool != "slidestream":
            out[tool]["import_s"] = med(r["import_s"] for r in cohort)
            if all("inproc_cpu_s" in r for r in cohort):
                out[tool]["inproc_cpu_s"] = med(r["inproc_cpu_s"] for r in cohort)
    ss = out.get("slidestream")
    if ss:
        for tool in tools:
            if tool == "slidestream":
                continue
            p = out[tool]
            # speed-up of slidestream's cohort (start-up included, / slides) over each way the peer can run
            p["x_vs_peer_process"] = p["process_per_slide_s"] / ss["cohort_per_slide_s"]
            p["x_process_vs_process"] = p["process_per_slide_s"] / ss["process_per_slide_s"]  # both one per slide
            p["x_vs_peer_cohort"] = p["cohort_per_slide_s"] / ss["cohort_per_slide_s"]
            p["x_vs_peer_inproc"] = p["inproc_slide_s"] / ss["cohort_per_slide_s"]
            if "inproc_slide_s" in ss:  # both after their imports: the peer's per-slide loop vs extract's own clock
                p["x_inproc_vs_inproc"] = p["inproc_slide_s"] / ss["inproc_slide_s"]
            # the same on CPU seconds (user + system of the process), which load on a shared machine inflates less
            p["x_cpu_vs_peer_process"] = p["process_cpu_s"] / ss["cohort_cpu_per_slide_s"]
            p["x_cpu_vs_peer_cohort"] = p["cohort_cpu_per_slide_s"] / ss["cohort_cpu_per_slide_s"]
            if "inproc_cpu_s" in p:
                p["x_cpu_vs_peer_inproc"] = p["inproc_cpu_s"] / ss["cohort_cpu_per_slide_s"]
    return out


def table(summary: dict) -> str:
    lines = ["| tool | tiles/slide | cohort in one process: wall / slides, s (rounds) | CPU s / slide | "
             "in-process s/slide after imports (CPU) | one process per slide: wall s | CPU s | "
             "slidestream cohort faster by, wall (vs peer process / cohort / in-process) | CPU (process / cohort / in-process) | "
             "slidestream process per slide faster than the peer's, wall |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for tool, s in summary.items():
        peer = "x_vs_peer_process" in s
        lines.append(" | ".join([
            f"| {tool}", f"{s['tiles_per_slide']:g}",
            f"{s['cohort_per_slide_s']:.2f} ({', '.join(f'{x:.2f}' for x in s['cohort_per_slide_rounds'])})",
            f"{s['cohort_cpu_per_slide_s']:.2f}",
            (f"{s['inproc_slide_s']:.2f}" + (f" (CPU {s['inproc_cpu_s']:.2f})" if "inproc_cpu_s" in s else "")) if peer else "",
            f"{s['process_per_slide_s']:.2f}", f"{s['process_cpu_s']:.2f}",
            f"{s['x_vs_peer_process']:.1f}× / {s['x_vs_peer_cohort']:.1f}× / {s['x_vs_peer_inproc']:.1f}×" if peer else "",
            (f"{s['x_cpu_vs_peer_process']:.1f}× / {s['x_cpu_vs_peer_cohort']:.1f}×"
             + (f" / {s['x_cpu_vs_peer_inproc']:.1f}×" if "x_cpu_vs_peer_inproc" in s else "")) if peer else "",
            f"{s['x_process_vs_process']:.1f}× |" if peer else " |"]))
        if peer and "x_inproc_vs_inproc" in s:
            lines[-1] = lines[-1][:-2] + f" (after imports on both sides: {s['x_inproc_vs_inproc']:.1f}×) |"
        if not peer and "inproc_slide_s" in s:
            lines[-1] = lines[-1][:-2] + f" (after imports: {s['inproc_slide_s']:.3f} s/slide) |"
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slide", nargs="?", help="slide to copy --cohort times (e.g. bench40x.svs)")
    ap.add_argument("--cohort", type=int, default=8, help="copies of the slide (default 8)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds, after one warm-up process per tool (default 3)")
    ap.add_argument("--processes", type=int, default=None,
                    help="time one process per slide on this many of the copies (default: all)")
    ap.add_argument("--tools", default="slidestream,tiatoolbox,lazyslide", help="comma-separated subset")
    ap.add_argument("--work", type=Path, default=Path("/tmp/peers/run"), help="scratch folder (slide copies, jobs)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "slidestream-peers",
                    help="where the peers' virtual environments live")
    ap.add_argument("--torch-from", type=Path, default=None,
                    help="site-packages whose torch family the peers' venvs link to (default: this interpreter's torch)")
    ap.add_argument("--summarize", type=Path, help="print the summary and table of a saved run's JSON lines and exit")
    ap.add_argument("--setup-only", action="store_true", help="create the peers' venvs and exit")
    a = ap.parse_args()
    if a.summarize:
        lines = [json.loads(x) for x in a.summarize.read_text().splitlines() if x.startswith("{")]
        recs = [x for x in lines if "tool" in x]
        summary = summarize(recs, list(dict.fromkeys(x["tool"] for x in recs)))
        print(json.dumps({"summary": summary}))
        print(table(summary))
        return
    tools = a.tools.split(",")
    peers = [t for t in tools if t != "slidestream"]
    torch_site = a.torch_from
    if torch_site is None and peers:
        import torch  # noqa: PLC0415 - only to find where it is installed
        torch_site = Path(torch.__file__).resolve().parents[1]
    pys = {t: setup_peer(a.cache, t, torch_site) for t in peers}
    if a.setup_only:
        return
    if not a.slide:
        ap.error("give a SLIDE (or --setup-only)")
    src = Path(a.slide).resolve()
    cohort_dir = a.work / "cohort"
    shutil.rmtree(a.work, ignore_errors=True)
    cohort_dir.mkdir(parents=True)
    slides = []
    for i in range(a.cohort):  # real copies, not links: each slide its own file, as in a cohort
        dst = cohort_dir / f"{src.stem}_{i}{src.suffix}"
        shutil.copyfile(src, dst)
        slides.append(dst)
    jobs = {}
    for t in peers:
        jobs[t] = a.work / f"{t}_job.py"
        jobs[t].write_text(JOBS[t])
    versions = {t: json.loads(subprocess.run([str(pys[t]), "-c", VERSIONS, t], check=True, capture_output=True,
                                             text=True).stdout) for t in peers}
    print(json.dumps({"meta": {"slide": str(src), "cohort": a.cohort, "rounds": a.rounds, "tools": tools,
                               "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
                               "versions": versions, "slidestream": slidestream_version()}}), flush=True)
    for tool in tools:  # warm-up, not counted: page cache, .pyc files
        if tool == "slidestream":
            run_slidestream(slides[:1], a.work / "store")
        else:
            run_peer(pys[tool], jobs[tool], slides[:1])
    recs = []
    processes = a.cohort if a.processes is None else a.processes
    for rnd in range(1, a.rounds + 1):
        order = tools[rnd % len(tools):] + tools[:rnd % len(tools)]  # rotate who goes first
        for tool in order:
            for r in measure(tool, pys.get(tool), jobs.get(tool), slides, a.work, rnd, processes):
                print(json.dumps(r), flush=True)
                recs.append(r)
    summary = summarize(recs, tools)
    print(json.dumps({"summary": summary, "loadavg_end": os.getloadavg()}), flush=True)
    print(table(summary))
    shutil.rmtree(a.work, ignore_errors=True)


if __name__ == "__main__":
    main()
