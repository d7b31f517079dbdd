"""End-to-end extraction on real and synthetic slides: store contents, resume, errors, kill safety."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from conftest import EXAMPLE, WSI
from slidestream.engine import config
from slidestream.engine.runner import extract, read_cohort
from slidestream.engine.store import PatchStore
from slidestream.engine.synthetic import make_slide


def _cohort(tmp_path, rows):
    f = tmp_path / "cohort.csv"
    with open(f, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_path", "patient_id", "label", "age", "mpp"])
        w.writerows(rows)
    return f


def _small_pipeline(tmp_path, **patches):
    doc = json.loads(EXAMPLE.read_text())
    doc["tiling"]["params"].update(size=256, min_tissue=0.3, max_tiles=6)
    doc["patches"] = {"size": 64, "mode": "random", "per_tile": 4, **patches}
    doc["thumbnail"] = {"scale": 16}
    f = tmp_path / "small.json"
    f.write_text(json.dumps(doc))
    return f


def test_liu2020_on_real_slides(cli, tmp_path):
    csvf = _cohort(tmp_path, [
        [WSI / "CMU-1-Small-Region.svs", "P1", "mutant", 44, ""],
        [WSI / "tcga-cr-7395-01a-01-ts1.svs", "P2", "wildtype", 61, 0.5],  # JPEG 2000 SVS without mpp
        [WSI / "OS-1-detail.ome.tif", "P3", 1, 38, ""],
        [WSI / "dicom-cmu-1-small-region", "P4", 0, 70, ""],
    ])
    out = tmp_path / "store"
    code, stdout, err = cli("extract", EXAMPLE, "--slides", csvf, "--out", out, "--json")
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    by = {s["slide_id"]: s for s in summary["slides"]}
    assert by["tcga-cr-7395-01a-01-ts1"]["status"] == "done" and by["tcga-cr-7395-01a-01-ts1"]["patches"] > 0
    assert by["OS-1-detail"]["status"] in ("done", "empty")  # 1101 px at 0.227 µm/px < one 10x tile: recorded
    assert by["OS-1-detail"]["status"] == "empty" and "tile" in by["OS-1-detail"]["reason"]

    st = PatchStore.open(out)
    n = summary["rows"]
    assert len(st) == n and st.patches.shape == (n, 256, 256, 3) and st.patches.dtype == np.uint8
    assert set(st.column("slide_id")) <= set(by)
    recs = st.records()
    assert st.manifest["pipeline"]["name"] == "liu2020" and len(st.manifest["pipeline_hash"]) == 64
    assert recs["OS-1-detail"]["reason"]
    tc = recs["tcga-cr-7395-01a-01-ts1"]
    assert tc["mpp_source"] == "cohort" and tc["n_tiles"] <= 50 and tc["patient_source"] == "table"
    assert all(t["tissue"] >= 0.5 for t in tc["tiles"])
    tissues = [t["tissue"] for t in tc["tiles"]]
    assert tissues == sorted(tissues, reverse=True)
    rows = slice(*tc["rows"])
    t = st.table()
    assert (t["patient_id"][rows] == "P2").all() and (t["label"][rows] == 0).all()
    assert np.allclose(t["age"][rows], 61)
    assert (t["size0"][rows] == 512).all()  # 256 px at 10x from a 0.5 µm/px slide
    patches = st.patches[rows]
    assert patches.std() > 10  # real pixels, not blanks
    assert (tmp_path / "store.qa" / "tcga-cr-7395-01a-01-ts1.png").exists()
    g = zarr.open_group(str(out), mode="r")  # plain zarr: the slide's region, padding after it
    p0, k = tc["region"]
    assert np.array_equal(g["patches"][p0:p0 + k], patches) and (g["slide_id"][p0:p0 + k] == "tcga-cr-7395-01a-01-ts1").all()
    assert not (tmp_path / "store.lock").exists() and not (tmp_path / "store.partial").exists()

    # a rerun skips everything and leaves the store as it was
    before = g["patches"][:]
    code, stdout, _ = cli("extract", EXAMPLE, "--slides", csvf, "--out", out, "--json")
    summary2 = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and summary2["rows"] == n and summary2["skipped"] == 4
    assert np.array_equal(zarr.open_group(str(out), mode="r")["patches"][:], before)
    # plain zarr and xarray read it without a warning
    probe = ("import zarr, xarray; g = zarr.open_group(%r, mode='r'); list(g.members(max_depth=None)); "
             "ds = xarray.open_zarr(%r); assert ds.patches.dims == ('patch', 'py', 'px', 'channel')" % (str(out), str(out)))
    r = subprocess.run([sys.executable, "-W", "error", "-c", probe], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_bad_slides_are_reported_and_retried(cli, tmp_path):
    broken = tmp_path / "broken.svs"
    broken.write_bytes((WSI / "CMU-1-Small-Region.svs").read_bytes()[:900_000])
    csvf = _cohort(tmp_path, [
        [WSI / "tcga-cr-7395-01a-01-ts1.svs", "P1", 1, 50, ""],  # no resolution
        [broken, "P2", 0, 50, ""],
        [tmp_path / "missing.svs", "P3", 0, 50, ""],
        [WSI / "CMU-1-Small-Region.svs", "P4", 0, 50, ""],
    ])
    out = tmp_path / "store"
    code, stdout, err = cli("extract", EXAMPLE, "--slides", csvf, "--out", out, "--json")
    assert code == 1
    s = {x["slide_id"]: x for x in json.loads(stdout.strip().splitlines()[-1])["slides"]}
    assert "--mpp" in s["tcga-cr-7395-01a-01-ts1"]["reason"]
    assert "broken.svs" in s["broken"]["reason"] and "not found" in s["missing"]["reason"]
    assert s["CMU-1-Small-Region"]["status"] in ("done", "empty")
    assert set(PatchStore.open(out).records("errors")) == {"tcga-cr-7395-01a-01-ts1", "broken", "missing"}
    # fix one slide's resolution; the rerun retries the failed ones and keeps the finished one
    csvf = _cohort(tmp_path, [[WSI / "tcga-cr-7395-01a-01-ts1.svs", "P1", 1, 50, 0.25],
                              [WSI / "CMU-1-Small-Region.svs", "P4", 0, 50, ""]])
    code, stdout, _ = cli("extract", EXAMPLE, "--slides", csvf, "--out", out, "--json")
    assert code == 0
    st = PatchStore.open(out)
    assert "tcga-cr-7395-01a-01-ts1" in st.records() and "tcga-cr-7395-01a-01-ts1" not in st.records("errors")


def test_bad_invocations(cli, tmp_path):
    code, _, err = cli("extract", EXAMPLE, "--slides", tmp_path / "nope.csv", "--out", tmp_path / "s")
    assert code == 2 and "nope.csv" in err
    bad = tmp_path / "c.csv"
    bad.write_text("path,label\nx.svs,1\n")
    code, _, err = cli("extract", EXAMPLE, "--slides", bad, "--out", tmp_path / "s")
    assert code == 2 and "slide_path" in err
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() != 0:  # root can write anywhere
        code, _, err = cli("extract", EXAMPLE, "--slides", WSI / "CMU-1-Small-Region.svs", "--out", ro / "s")
        assert code == 2 and "writable" in err
    other = tmp_path / "notastore"
    other.mkdir()
    (other / "file.txt").write_text("mine")
    code, _, err = cli("extract", EXAMPLE, "--slides", WSI / "CMU-1-Small-Region.svs", "--out", other)
    assert code == 2 and "not a slidestream store" in err and (other / "file.txt").read_text() == "mine"


def test_store_refuses_other_pipeline(tmp_path):
    slide = make_slide(tmp_path / "a.svs", size=(1024, 768), label=1, seed=1)
    p1 = config.load(_small_pipeline(tmp_path))
    extract(p1, read_cohort(slide), tmp_path / "st", progress=False)
    p2 = dict(p1, patches={**p1["patches"], "size": 32})
    from slidestream.engine.errors import StoreError

    with pytest.raises(StoreError, match="different extraction pipeline"):
        extract(p2, read_cohort(slide), tmp_path / "st", progress=False)


def _synthetic_cohort(tmp_path, n=6):
    rows = []
    for i in range(n):
        p = make_slide(tmp_path / f"s{i}.svs", size=(1536, 1024), label=i % 2, seed=i)
        rows.append([p, f"P{i // 2}", (i // 2) % 2, 40 + i // 2, ""])  # two slides per patient, one label/age
    return _cohort(tmp_path, rows)


def test_parallel_matches_sequential(tmp_path):
    csvf = _synthetic_cohort(tmp_path, 4)
    p = config.load(_small_pipeline(tmp_path))
    a = extract(p, read_cohort(csvf), tmp_path / "seq", progress=False)
    b = extract(p, read_cohort(csvf), tmp_path / "par", workers=2, progress=False)
    assert a["rows"] == b["rows"] > 0
    sa, sb = PatchStore.open(tmp_path / "seq"), PatchStore.open(tmp_path / "par")
    assert np.array_equal(sa.patches[:], sb.patches[:])
    for c in ("slide_id", "x", "y", "tile_id", "tissue"):
        assert np.array_equal(sa.column(c), sb.column(c))


def per_slide(path):
    """Each slide's patches and columns, independent of where in the store it landed."""
    st = PatchStore.open(path)
    t = st.table()
    out = {}
    for sid, rec in st.records().items():
        rows = slice(*rec.get("rows", (0, 0)))
        out[sid] = (st.patches[rows].tobytes(), {c: t[c][rows].tolist() for c in t}, rec["status"])
    return out


def assert_same_slides(a, b):
    pa, pb = per_slide(a), per_slide(b)
    assert sorted(pa) == sorted(pb) and any(v[0] for v in pa.values())
    for sid in pa:
        assert pa[sid][0] == pb[sid][0], sid
        assert pa[sid][1] == pb[sid][1] or all(np.array_equal(np.asarray(pa[sid][1][c]), np.asarray(pb[sid][1][c]), equal_nan=True)
                                               for c in pa[sid][1]), sid
        assert pa[sid][2] == pb[sid][2]


def test_worker_killed_mid_slide_gives_the_same_store(tmp_path):
    """2 worker processes write slides in parallel; one is killed -9 while it writes a slide; dask runs
    that slide again on a worker and the store ends identical, per slide, to a single-process run."""
    import threading

    from distributed import LocalCluster

    csvf = _synthetic_cohort(tmp_path, 5)
    p = config.load(_small_pipeline(tmp_path, per_tile=16))
    extract(p, read_cohort(csvf), tmp_path / "ref", progress=False)
    out = tmp_path / "par"
    partial = tmp_path / "par.partial"
    killed = []

    def killer():
        while not killed and not stop.is_set():
            for d in partial.glob("slides-*") if partial.exists() else ():
                pid = int(d.name.split(".")[-2])
                if pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    killed.append((d.name, pid))
                    return
            time.sleep(0.005)

    stop = threading.Event()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50) as cluster:
        t = threading.Thread(target=killer)
        t.start()
        try:
            s = extract(p, read_cohort(csvf), out, scheduler=cluster.scheduler_address, progress=False)
        finally:
            stop.set()
            t.join()
    assert killed, "no worker was caught writing a slide"
    assert s["failed"] == 0, s
    assert_same_slides(tmp_path / "ref", out)
    assert not partial.exists()


def test_rerun_updates_changed_cohort_values(tmp_path):
    slides = [make_slide(tmp_path / f"s{i}.svs", size=(1536, 1024), label=i, seed=i) for i in range(2)]
    csvf = _cohort(tmp_path, [[slides[0], "P0", 0, 40, ""], [slides[1], "P1", 1, 50, ""]])
    p = config.load(_small_pipeline(tmp_path))
    out = tmp_path / "st"
    extract(p, read_cohort(csvf), out, progress=False)
    before = PatchStore.open(out)
    size0_before = before.column("size0")  # read now: the re-extraction below blanks these rows
    pix, rec0 = before.patches[:], before.records()
    csvf = _cohort(tmp_path, [[slides[0], "P0", 1, 40, ""], [slides[1], "P9", 1, 55, ""]])
    s = extract(p, read_cohort(csvf), out, progress=False)
    by = {x["slide_id"]: x for x in s["slides"]}
    assert by["s0"]["status"] == "updated" and "label 0 -> 1" in by["s0"]["reason"]
    assert by["s1"]["status"] == "updated" and "patient_id P1 -> P9" in by["s1"]["reason"] and "age 50" in by["s1"]["reason"]
    st = PatchStore.open(out)
    t, r = st.table(), st.records()
    assert np.array_equal(st.patches[:], pix) and r["s0"]["region"] == rec0["s0"]["region"]  # no re-extraction
    assert (t["label"][slice(*r["s0"]["rows"])] == 1).all() and (t["patient_id"][slice(*r["s1"]["rows"])] == "P9").all()
    assert np.allclose(t["age"][slice(*r["s1"]["rows"])], 55) and r["s0"]["label"] == 1 and r["s1"]["age"] == 55
    # a changed resolution re-extracts the slide; its old rows turn into padding
    csvf = _cohort(tmp_path, [[slides[0], "P0", 1, 40, 0.5], [slides[1], "P9", 1, 55, ""]])
    s = extract(p, read_cohort(csvf), out, progress=False)
    by = {x["slide_id"]: x for x in s["slides"]}
    assert by["s0"]["status"] == "done" and "mpp" in by["s0"]["reason"] and by["s1"]["status"] == "skipped"
    st = PatchStore.open(out)
    r = st.records()
    assert r["s0"]["region"][0] > rec0["s1"]["region"][0] and r["s0"]["cohort_mpp"] == 0.5
    g = zarr.open_group(str(out), mode="r")
    assert (g["slide_id"][:] == "s0").sum() == r["s0"]["region"][1] == len(st) - r["s1"]["region"][1]
    assert (st.column("size0")[slice(*r["s0"]["rows"])] != size0_before[slice(*rec0["s0"]["rows"])][0]).all()


@pytest.mark.slow
def test_sigkill_and_resume_gives_the_same_store(tmp_path):
    csvf = _synthetic_cohort(tmp_path, 8)
    pipe = _small_pipeline(tmp_path, per_tile=16)
    ref = tmp_path / "ref"
    extract(config.load(pipe), read_cohort(csvf), ref, progress=False)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "slidestream.engine", "extract", str(pipe), "--slides", str(csvf), "--out", str(out), "--quiet"]
    rng = np.random.default_rng(0)

    def committed() -> int:
        try:
            return zarr.open_group(str(out), mode="r")["records"].shape[0]
        except Exception:
            return -1

    kills = 0
    for attempt in range(8):  # kill right after a new slide lands (plus a random few ms: mid-write)
        before = committed()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and committed() <= before:
            time.sleep(0.002)
        time.sleep(float(rng.uniform(0, 0.05)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if proc.returncode == 0:
            break
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert kills >= 2
    assert_same_slides(ref, out)
    a, b = PatchStore.open(ref), PatchStore.open(out)
    assert len(a) == len(b) > 0 and np.array_equal(a.patches[:], b.patches[:])
    assert not (tmp_path / "killed.partial").exists()


def test_tissue_command(cli, tmp_path):
    code, out, err = cli("tissue", WSI / "CMU-1-Small-Region.svs", "--out", tmp_path / "cmu")
    assert code == 0, err
    from PIL import Image

    m = np.asarray(Image.open(tmp_path / "cmu_mask.png"))
    assert m.shape == (2967 // 32, 2220 // 32) and set(np.unique(m)) <= {0, 255}
    assert 0.1 < (m == 255).mean() < 0.7
    assert (tmp_path / "cmu_overlay.png").exists()
    code, out, err = cli("tissue", WSI / "CMU-1-Small-Region.svs", "--out", tmp_path / "t", "--thumbnail")
    assert code == 2 or code == 0  # an SVS is a TIFF Pillow may or may not open as a picture


def test_existing_dask_cluster(tmp_path):
    from distributed import LocalCluster

    csvf = _synthetic_cohort(tmp_path, 2)
    p = config.load(_small_pipeline(tmp_path))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        s = extract(p, read_cohort(csvf), tmp_path / "st", scheduler=cluster.scheduler_address, progress=False)
    assert s["failed"] == 0 and s["rows"] > 0
    extract(p, read_cohort(csvf), tmp_path / "ref", progress=False)
    assert np.array_equal(PatchStore.open(tmp_path / "st").patches[:], PatchStore.open(tmp_path / "ref").patches[:])


def test_folder_cohort_finds_each_slide_once():
    rows = read_cohort(WSI)
    ids = sorted(r.slide_id for r in rows)
    assert ids == sorted(["CMU-1-Small-Region", "OS-1-detail", "dicom-cmu-1-small-region",
                          "pathml_small_dicom_TCGA-XK-AAJU_pen", "tcga-cr-7395-01a-01-ts1"])
    by = {r.slide_id: r for r in rows}
    assert by["dicom-cmu-1-small-region"].slide_path.endswith("dicom-cmu-1-small-region")  # 12 level files, one slide
    assert by["pathml_small_dicom_TCGA-XK-AAJU_pen"].slide_path.endswith(".dcm")


def test_second_writer_exits_2_naming_the_first(tmp_path):
    slide = make_slide(tmp_path / "a.svs", size=(1024, 768), label=1, seed=1)
    pipe = _small_pipeline(tmp_path)
    first = PatchStore.create(tmp_path / "st", 64, {"chunk": 32}, {"extraction_hash": "x"})  # this process writes it
    r = subprocess.run([sys.executable, "-m", "slidestream.engine", "extract", str(pipe), "--slides", str(slide),
                        "--out", str(tmp_path / "st"), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 2 and f"pid {os.getpid()}" in r.stderr and "being written" in r.stderr
    assert first.append("s", np.zeros((2, 64, 64, 3), np.uint8), {}, {}) == (0, 2)  # the first goes on
