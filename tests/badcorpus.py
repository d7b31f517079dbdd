"""Red team round 10: a corpus of bad inputs swept through the CLI in subprocesses.

``python tests/badcorpus.py [DIR] [slides|cohort|pipeline|all]`` builds the corpus under DIR (default a new
/tmp folder), runs each case through ``slidestream extract`` (cohort CSV = one good slide + the bad one)
under ``timeout 120`` and prints one row per case: exit code, wall time, traceback or not, whether the bad slide
has rows, whether the good slide's rows were kept, whether a rerun resumes, and stderr's last line.
The functions that build cases are also used by tests/test_redteam_corpus10.py.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
WSI = HERE / "data" / "wsi"
EXAMPLE = HERE.parent / "schemas" / "examples" / "liu2020.json"
REAL = [WSI / "CMU-1-Small-Region.svs", WSI / "OS-1-detail.ome.tif", WSI / "pathml_small_dicom_TCGA-XK-AAJU_pen.dcm",
        WSI / "tcga-cr-7395-01a-01-ts1.svs"]


def cmd(*args: str) -> list[str]:
    return ["timeout", "120", sys.executable, "-m", "slidestream.engine", *map(str, args)]


def run(args: list[str], cwd: Path | None = None) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True, cwd=cwd, errors="replace")
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    summary = None
    if r.stdout.strip():
        try:
            summary = json.loads(r.stdout.strip().splitlines()[-1])
        except ValueError:
            pass
    return {"rc": r.returncode, "wall": time.perf_counter() - t0, "last": lines[-1] if lines else "",
            "nlines": len(lines), "traceback": "Traceback" in r.stderr or "Traceback" in r.stdout,
            "stderr": r.stderr, "summary": summary}


def small_pipeline(d: Path) -> Path:
    doc = json.loads(EXAMPLE.read_text())
    doc["tiling"]["params"].update(size=256, min_tissue=0.3, max_tiles=6)
    doc["patches"] = {"size": 64, "mode": "random", "per_tile": 4}
    doc["thumbnail"] = {"scale": 16}
    f = d / "small.json"
    f.write_text(json.dumps(doc, indent=1))
    return f


def good_slide(path: Path, seed: int = 1) -> Path:
    from slidestream.engine.synthetic import make_slide

    return make_slide(path, size=(2048, 1536), label=1, seed=seed, mpp=0.5)


def _photo(rng=None):
    from slidestream.engine.synthetic import make_slide  # noqa: F401
    rng = np.random.default_rng(0)
    return rng.integers(120, 230, (600, 800, 3)).astype(np.uint8)


def ifd_past_eof(src: Path, dst: Path) -> Path:
    data = bytearray(src.read_bytes())
    assert data[:4] == b"II*\0"
    data[4:8] = struct.pack("<I", len(data) + 4096)
    dst.write_bytes(bytes(data))
    return dst


def _ifd_next_pointer(data: bytes, ifd: int) -> int:
    n = struct.unpack_from("<H", data, ifd)[0]
    return ifd + 2 + 12 * n


def ifd_self_loop(src: Path, dst: Path, which: int = 0) -> Path:
    """The ``which``-th IFD's next pointer points to itself."""
    data = bytearray(src.read_bytes())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for _ in range(which):
        ifd = struct.unpack_from("<I", data, _ifd_next_pointer(data, ifd))[0]
    struct.pack_into("<I", data, _ifd_next_pointer(data, ifd), ifd)
    dst.write_bytes(bytes(data))
    return dst


def ifd_next_past_eof(src: Path, dst: Path) -> Path:
    data = bytearray(src.read_bytes())
    ifd = struct.unpack_from("<I", data, 4)[0]
    struct.pack_into("<I", data, _ifd_next_pointer(data, ifd), len(data) + 10_000)
    dst.write_bytes(bytes(data))
    return dst


def truncate(src: Path, dst: Path, frac: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[:max(1, int(len(data) * frac))])
    return dst


def zero_middle(src: Path, dst: Path, frac: float = 0.1) -> Path:
    data = bytearray(src.read_bytes())
    n = int(len(data) * frac)
    a = len(data) // 2 - n // 2
    data[a:a + n] = bytes(n)
    dst.write_bytes(bytes(data))
    return dst


def slide_cases(d: Path, good: Path) -> dict[str, Path]:
    """{case name: path of the bad slide}, each in its own folder under ``d`` (a DICOM reader looks at its
    neighbours)."""
    from PIL import Image

    out: dict[str, Path] = {}

    def at(name: str) -> Path:
        f = d / str(len(out))
        f.mkdir(parents=True, exist_ok=True)
        return f / name

    p = at("empty.svs")
    p.write_bytes(b"")
    out["0-byte .svs"] = p
    texts = {"text": b"hello, this is not a slide\n", "html": b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",
             "json": b'{"error": "not found", "code": 404}\n'}
    for kind, body in texts.items():
        for ext in (".svs", ".tif", ".ndpi", ".mrxs", ".dcm"):
            p = at(f"{kind}{ext}")
            p.write_bytes(body)
            out[f"{kind} as {ext}"] = p
    img = Image.fromarray(_photo())
    for fmt, ext in (("PNG", ".png"), ("JPEG", ".jpg"), ("BMP", ".bmp")):
        p = at(f"photo_{fmt.lower()}.svs")
        img.save(p, format=fmt)
        out[f"{fmt} renamed .svs"] = p
        q = at(f"photo{ext}")
        img.save(q, format=fmt)
        out[f"{fmt} as {ext}"] = q
    gz = gzip.compress(good.read_bytes())
    p = at("gz.svs")
    p.write_bytes(gz)
    out["gzip renamed .svs"] = p
    p = at("slide.svs.gz")
    p.write_bytes(gz)
    out["gzip .svs.gz"] = p
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.write(good, "good.svs")
    for name in ("zip.svs", "slide.zip"):
        p = at(name)
        p.write_bytes(buf.getvalue())
        out[f"zip {name}"] = p
    for src in REAL:
        stem = src.name.split(".")[0][:12]
        for f in (0.01, 0.1, 0.5, 0.9, 0.99):
            out[f"{stem} cut {int(f * 100)}%"] = truncate(src, at(f"t{int(f * 100)}_{src.name}"), f)
        out[f"{stem} zeroed middle"] = zero_middle(src, at(f"z_{src.name}"))
    for name, fn in (("IFD0 past EOF", ifd_past_eof), ("IFD0 loops to itself", ifd_self_loop),
                     ("IFD1 loops to itself", lambda s, t: ifd_self_loop(s, t, 1)),
                     ("IFD0 next past EOF", ifd_next_past_eof)):
        out[name] = fn(good, at(f"{name.replace(' ', '_')}.svs"))
    p = at("x.svs")
    p.mkdir(exist_ok=True)
    out["folder x.svs"] = p
    p = at("fifo.svs")
    if not p.exists():
        os.mkfifo(p)
    out["FIFO .svs"] = p
    p = at("loop.svs")
    if not p.is_symlink():
        os.symlink("loop.svs", p)
    out["symlink loop"] = p
    for label, name in (("space name", "my slide 1.svs"), ("unicode name", "pătient_é_日本.svs"),
                        ("newline name", "new\nline.svs")):
        p = at(name)
        good_slide(p.with_name("tmp.svs"), seed=3).rename(p)  # not a copy of good.svs (no duplicate warning)
        out[label] = p
    p = at("x[/bold].svs")  # rich markup in a path (a folder named 'x['), cut short
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(good.read_bytes()[:1000])
    out["markup name, cut"] = p
    p = at("cut\nname.svs")
    p.write_bytes(good.read_bytes()[:1000])
    out["newline name, cut"] = p
    return out


def cohort_csv(path: Path, rows: list[tuple], header=("slide_path", "patient_id", "label", "age")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def slide_bad(summary: dict | None, sid: str) -> str:
    if not summary:
        return "-"
    st = {s["slide_id"]: s for s in summary.get("slides", [])}
    return st[sid]["status"] if sid in st else "absent"


def store_rows(store: Path) -> dict[str, int]:
    from slidestream.engine.store import PatchStore

    if not (store / "zarr.json").exists():
        return {}
    tab = PatchStore.open(store).table(["slide_id"])
    ids, n = np.unique(tab["slide_id"], return_counts=True)
    return {str(i): int(c) for i, c in zip(ids, n)}


def sweep_slides(d: Path, pipe: Path, good: Path) -> list[dict]:
    from slidestream.engine.cohort import slide_id

    rows = []
    cases = slide_cases(d / "bad", good)
    ref = None
    real = tuple(s.name.split(".")[0][:12] for s in REAL)
    for name, path in cases.items():
        case = d / "runs" / f"c{len(rows)}"
        case.mkdir(parents=True)
        mpp = 0.5 if name.startswith(real) else ""
        csvp = cohort_csv(case / "cohort.csv", [(str(good), "pg", 1, 50, ""), (str(path), "pb", 0, 40, mpp)],
                          header=("slide_path", "patient_id", "label", "age", "mpp"))
        store = case / "s.zarr"
        r1 = run(cmd("extract", pipe, "--slides", csvp, "--out", store, "--json"))
        sid = slide_id(Path(path))
        try:
            have = store_rows(store)
        except Exception as e:  # noqa: BLE001
            have = {"?": repr(e)}
        r2 = run(cmd("extract", pipe, "--slides", csvp, "--out", store, "--json"))
        if ref is None:
            ref = have.get("good")
        status = slide_bad(r1["summary"], sid)
        resumed = bool(r2["summary"] and slide_bad(r2["summary"], "good") == "skipped") if r1["rc"] in (0, 1) else None
        # and the bad slide alone, as --slides PATH
        r3 = run(cmd("extract", pipe, "--slides", path, "--out", case / "one.zarr", "--json",
                     *(["--mpp", "0.5"] if mpp else [])))
        bad_rows = have.get(sid, 0) if status != "done" else 0
        ok = (r1["rc"] == 1 and status in ("error", "empty") and not r1["traceback"] and not r2["traceback"]
              and not r3["traceback"] and r1["wall"] < 60 and bad_rows == 0 and have.get("good") == ref
              and resumed and r3["rc"] in (1, 2)) or (status == "done" and r1["rc"] == 0) or (
              "\n" in str(path) and r1["rc"] == 2 and r1["nlines"] == 1 and not (store / "zarr.json").exists()
              and not r3["traceback"] and r3["rc"] in (0, 1) and "\n" not in r3["last"])
        rows.append({"case": name, "rc": r1["rc"], "status": status, "wall": r1["wall"], "tb": r1["traceback"] or
                     r2["traceback"] or r3["traceback"], "bad_rows": bad_rows, "good_rows": have.get("good"),
                     "resumed": resumed, "rc_alone": r3["rc"], "last": r1["last"], "last_alone": r3["last"],
                     "ok": ok})
    return rows


def cohort_cases(d: Path, good: Path, good2: Path) -> dict[str, tuple[Path, int]]:
    """{case: (cohort CSV, the exit status it must get)}: 2 = refused before any work, 0 = fine."""
    d.mkdir(parents=True, exist_ok=True)
    H = "slide_path,patient_id,label,age\n"
    g, g2 = str(good), str(good2)
    ok_rows = f"{g},p1,1,50\n{g2},p2,0,60\n"
    texts: dict[str, tuple[bytes, int]] = {
        "empty file": (b"", 2),
        "header only": (H.encode(), 2),
        "BOM": (("\ufeff" + H + ok_rows).encode(), 0),
        "CRLF": ((H + ok_rows).replace("\n", "\r\n").encode(), 0),
        "no label column": (f"slide_path,patient_id,age\n{g},p1,50\n".encode(), 2),
        "no age column": (f"slide_path,patient_id,label\n{g},p1,1\n".encode(), 2),
        "no patient_id column": (f"slide_path,label,age\n{g},1,50\n".encode(), 2),
        "no slide_path column": (f"path,patient_id,label,age\n{g},p1,1,50\n".encode(), 2),
        "patient with two labels": ((H + f"{g},p1,1,50\n{g2},p1,0,50\n").encode(), 2),
        "slide listed twice": ((H + f"{g},p1,1,50\n{g},p2,0,60\n").encode(), 2),
        "unclosed quote (closed later)": ((H + f'"{g},p1,1,50\n{g2}",p2,0,60\n').encode(), 2),
        "unclosed quote (never closed)": ((H + f'"{g},p1,1,50\n{g2},p2,0,60\n').encode(), 2),
        "header only, no newline": (H.strip().encode(), 2),
        "binary garbage": (bytes(range(256)) * 4, 2),
        "tab delimited": (ok_rows.replace(",", "\t").join(["slide_path\tpatient_id\tlabel\tage\n", ""]).encode(), 0),
    }
    for v, code in (("yes", 2), ("no", 2), ("2", 2), ("-1", 0), ("", 0), ("0.5", 2), ("1.0", 2), ("true", 2)):
        texts[f"label {v!r}"] = ((H + f"{g},p1,{v},50\n{g2},p2,0,60\n").encode(), code)
    for v, code in (("", 0), ("-5", 2), ("200", 2), ("45y", 2), ("NaN", 0), ("inf", 2), ("1e400", 2)):
        texts[f"age {v!r}"] = ((H + f"{g},p1,1,{v}\n{g2},p2,0,60\n").encode(), code)
    out = {}
    for i, (name, (body, code)) in enumerate(texts.items()):
        p = d / f"c{i}.csv"
        p.write_bytes(body)
        out[name] = (p, code)
    # relative paths: relative to the CSV's folder (fine) vs to the cwd (not found)
    sub = d / "sub"
    sub.mkdir(exist_ok=True)
    shutil.copy(good, sub / "rel.svs")
    (sub / "rel_csv.csv").write_text(H + "rel.svs,p1,1,50\n")
    out["path relative to the CSV"] = (sub / "rel_csv.csv", 0)
    (sub / "rel_cwd.csv").write_text(H + "cohorts/sub/rel.svs,p1,1,50\n")  # run from d: relative to the cwd
    out["path relative to the cwd"] = (sub / "rel_cwd.csv", 2)
    return out


def sweep_cohorts(d: Path, pipe: Path, good: Path) -> list[dict]:
    good2 = d / "good2.svs"
    if not good2.exists():
        good_slide(good2, seed=2)
    rows = []
    for name, (csvp, want) in cohort_cases(d / "cohorts", good, good2).items():
        store = d / "runs_c" / f"c{len(rows)}.zarr"
        store.parent.mkdir(exist_ok=True)
        r = run(cmd("extract", pipe, "--slides", csvp, "--out", store, "--json"), cwd=d)
        made = (store / "zarr.json").exists()
        ok = r["rc"] == want and not r["traceback"] and (want != 2 or (r["nlines"] == 1 and not made))
        rows.append({"case": name, "rc": r["rc"], "want": want, "wall": r["wall"], "tb": r["traceback"],
                     "store_made": made, "nlines": r["nlines"], "last": r["last"], "ok": ok})
    return rows


def pipeline_cases(d: Path, pipe: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    base = json.loads(pipe.read_text())
    texts: dict[str, str] = {"empty file": "", "invalid JSON": '{"name": "x",', "not an object": "[1, 2]",
                             "just a string": '"liu2020"', "binary": "\x00\x01\x02"}

    def variant(fn):
        doc = json.loads(json.dumps(base))
        fn(doc)
        return json.dumps(doc)

    edits = {
        "unknown top key": lambda x: x.update(magnificaton=10),
        "unknown tiling param": lambda x: x["tiling"]["params"].update(sise=256),
        "filter param typo": lambda x: x["filters"][-1].update(params={"min_sise": 500}),
        "unknown plugin": lambda x: x["filters"].append({"name": "dpw.red_pens"}),
        "unknown classifier": lambda x: x.update(classifier={"name": "resnet51"}),
        "magnification string": lambda x: x.update(magnification="10x"),
        "magnification 0": lambda x: x.update(magnification=0),
        "magnification -10": lambda x: x.update(magnification=-10),
        "magnification 1e9": lambda x: x.update(magnification=1e9),
        "magnification null": lambda x: x.update(magnification=None),
        "magnification true": lambda x: x.update(magnification=True),
        "tile size 0": lambda x: x["tiling"]["params"].update(size=0),
        "tile size -256": lambda x: x["tiling"]["params"].update(size=-256),
        "tile size '1024'": lambda x: x["tiling"]["params"].update(size="1024"),
        "min_tissue 1.5": lambda x: x["tiling"]["params"].update(min_tissue=1.5),
        "min_tissue -0.1": lambda x: x["tiling"]["params"].update(min_tissue=-0.1),
        "max_tiles 0": lambda x: x["tiling"]["params"].update(max_tiles=0),
        "max_tiles 1e12": lambda x: x["tiling"]["params"].update(max_tiles=10 ** 12),
        "patch size 0": lambda x: x["patches"].update(size=0),
        "patch size 3": lambda x: x["patches"].update(size=3),
        "per_tile 0": lambda x: x["patches"].update(per_tile=0),
        "per_tile -1": lambda x: x["patches"].update(per_tile=-1),
        "patches mode typo": lambda x: x["patches"].update(mode="randon"),
        "thumbnail scale 0": lambda x: x.update(thumbnail={"scale": 0}),
        "thumbnail scale 1": lambda x: x.update(thumbnail={"scale": 1}),
        "thumbnail decode typo": lambda x: x.update(thumbnail={"scale": 32, "decode": "dtc"}),
        "store chunk 0": lambda x: x["store"].update(chunk=0),
        "store codec typo": lambda x: x["store"].update(codec="zsdt"),
        "store level -1": lambda x: x["store"].update(level=-100),
        "filters not a list": lambda x: x.update(filters={"name": "dpw.grays"}),
        "filters empty": lambda x: x.update(filters=[]),
        "seed -1": lambda x: x.update(seed=-1),
        "seed 2**70": lambda x: x.update(seed=2 ** 70),
        "seed float": lambda x: x.update(seed=1.5),
        "device typo": lambda x: x.update(device="gpu"),
        "reader order typo": lambda x: x.update(reader={"order": ["cucum"]}),
        "reader order empty": lambda x: x.update(reader={"order": []}),
        "epochs 0": lambda x: x["training"].update(epochs=0),
        "batch_size 0": lambda x: x["training"].update(batch_size=0),
        "lr negative": lambda x: x["training"].update(lr=-1),
        "tiling null": lambda x: x.update(tiling=None),
        "name a number": lambda x: x.update(name=5),
        "slide_timeout_s negative": lambda x: x.update(extract={"slide_timeout_s": -1}),
    }
    for k, fn in edits.items():
        texts[k] = variant(fn)
    out = {}
    for i, (name, text) in enumerate(texts.items()):
        p = d / f"p{i}.json"
        p.write_text(text)
        out[name] = p
    return out


VALID_PIPELINES = ("max_tiles 1e12", "filters empty", "reader order empty")


def sweep_pipelines(d: Path, pipe: Path, good: Path) -> list[dict]:
    rows = []
    csvp = cohort_csv(d / "pipe_cohort.csv", [(str(good), "p1", 1, 50)])
    for name, pj in pipeline_cases(d / "pipes", pipe).items():
        store = d / "runs_p" / f"p{len(rows)}.zarr"
        store.parent.mkdir(exist_ok=True)
        r = run(cmd("extract", pj, "--slides", csvp, "--out", store, "--json"))
        v = run(cmd("validate", pj))
        made = (store / "zarr.json").exists()
        valid = name in VALID_PIPELINES  # odd but meaningful: no cap, no filters, the default reader order
        ok = (r["rc"] == 2 and r["nlines"] == 1 and not r["traceback"] and not made and v["rc"] == 2
              and not v["traceback"]) or (valid and r["rc"] == 0 and v["rc"] == 0)
        rows.append({"case": name, "rc": r["rc"], "validate_rc": v["rc"], "wall": r["wall"], "tb": r["traceback"]
                     or v["traceback"], "store_made": made, "nlines": r["nlines"], "last": r["last"], "ok": ok})
    return rows


def predictions_cases(d: Path, good_csv: Path) -> dict[str, Path]:
    """Bad predictions CSVs for ``evaluate``, made from a good one."""
    d.mkdir(parents=True, exist_ok=True)
    text = good_csv.read_text()
    head, *rows = text.splitlines()
    cols = head.split(",")

    def cell(col: str, value: str, row: int = 0) -> str:
        r = [x.split(",") for x in rows]
        r[row][cols.index(col)] = value
        return "\n".join([head, *(",".join(x) for x in r)]) + "\n"

    def drop(col: str) -> str:
        i = cols.index(col)
        return "\n".join(",".join(c for j, c in enumerate(x.split(",")) if j != i) for x in [head, *rows]) + "\n"

    cases = {"empty": "", "header only": head + "\n", "BOM": "\ufeff" + text, "CRLF": text.replace("\n", "\r\n"),
             "garbage": "\x00\x01binary\xff", "duplicate patient, other label":
             text + rows[0].replace(",0,", ",1,").replace(",1,", ",0,", 1) + "\n",
             "multi-line quoted id": cell("patient_id", '"P\n000"')}
    for c in cols:
        cases[f"no {c} column"] = drop(c)
    for v in ("yes", "2", "-1", "", "0.5", "true"):
        cases[f"label {v!r}"] = cell("label", v)
    for v in ("", "-1", "200", "45y", "NaN", "inf"):
        cases[f"age {v!r}"] = cell("age", v)
    for v in ("NaN", "1.5", "-0.1", "", "50%"):
        cases[f"image_prob {v!r}"] = cell("image_prob", v)
    for v in ("Test", "validation", "", "TRAIN "):
        cases[f"split {v!r}"] = cell("split", v)
    out = {}
    for i, (name, body) in enumerate(cases.items()):
        f = d / f"pred{i}.csv"
        f.write_bytes(body.encode("utf-8", "surrogateescape") if name != "garbage" else b"\x00\x01binary\xff")
        out[name] = f
    (d / "dir.csv").mkdir(exist_ok=True)
    out["a folder"] = d / "dir.csv"
    if not (d / "fifo.csv").exists():
        os.mkfifo(d / "fifo.csv")
    out["a FIFO"] = d / "fifo.csv"
    return out


def sweep_evaluate(d: Path, good_csv: Path) -> list[dict]:
    rows = []
    for name, f in predictions_cases(d / "preds", good_csv).items():
        r = run(cmd("evaluate", f, "--out", d / "ev" / str(len(rows)), "--bootstrap", "10"))
        ok = not r["traceback"] and r["wall"] < 60 and (r["rc"] == 0 or (r["rc"] == 2 and r["nlines"] == 1))
        rows.append({"case": name, "rc": r["rc"], "wall": r["wall"], "tb": r["traceback"], "nlines": r["nlines"],
                     "last": r["last"], "ok": ok})
    return rows


def sweep_predict(d: Path, bundle: Path, good: Path) -> list[dict]:
    """The slide corpus through ``predict BUNDLE SLIDE`` (the per-slide path: no store)."""
    rows = []
    for name, path in slide_cases(d / "bad_p", good).items():
        r = run(cmd("predict", bundle, path, "--out", d / "pred_out" / str(len(rows))))
        ok = not r["traceback"] and r["wall"] < 60 and r["rc"] in (1, 2) and r["last"].startswith("error")
        rows.append({"case": name, "rc": r["rc"], "wall": r["wall"], "tb": r["traceback"], "nlines": r["nlines"],
                     "last": r["last"], "ok": ok or name.endswith("name")})
    return rows


def print_table(rows: list[dict]) -> None:
    keys = [k for k in rows[0] if k not in ("ok",)]
    print("| ok | " + " | ".join(keys) + " |")
    print("|" + "---|" * (len(keys) + 1))
    for r in rows:
        cells = [f"{v:.1f}" if isinstance(v, float) else str(v).replace("\n", "\\n").replace("|", "/")[:160]
                 for k, v in r.items() if k != "ok"]
        print(f"| {'ok' if r['ok'] else 'BAD'} | " + " | ".join(cells) + " |")


def main() -> None:
    d = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="badcorpus"))
    what = sys.argv[2] if len(sys.argv) > 2 else "all"
    d.mkdir(parents=True, exist_ok=True)
    pipe = small_pipeline(d)
    good = d / "good.svs"
    if not good.exists():
        good_slide(good)
    if what in ("slides", "all"):
        print_table(sweep_slides(d, pipe, good))
    if what in ("cohort", "all"):
        print_table(sweep_cohorts(d, pipe, good))
    if what == "evaluate":  # needs a predictions CSV: python tests/badcorpus.py DIR evaluate PREDICTIONS.csv
        print_table(sweep_evaluate(d, Path(sys.argv[3])))
    if what == "predict":  # needs a bundle: python tests/badcorpus.py DIR predict BUNDLE
        print_table(sweep_predict(d, Path(sys.argv[3]), good))
    if what in ("pipeline", "all"):
        print_table(sweep_pipelines(d, pipe, good))


if __name__ == "__main__":
    main()
