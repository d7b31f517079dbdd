"""Issue 11, round 6: the resume check (``PatchStore.changed_shards``) reads a few bytes per shard file."""
import zlib

import numpy as np
import pytest

from slidestream.engine import store as store_mod
from slidestream.engine.store import PatchStore


def _rchar() -> int:
    """Bytes this process has read through read()/pread() so far (Linux)."""
    with open("/proc/self/io") as fh:
        return int(next(line for line in fh if line.startswith("rchar")).split()[1])


def _made(path, slides=3):
    """A store of ``slides`` slides, one full shard each (8 chunks of 8 random 32 px patches: ~25 KB a chunk)."""
    st = PatchStore.create(path, 32, {"codec": "zstd", "level": 1, "chunk": 8}, {"extraction_hash": "t"})
    rng = np.random.default_rng(0)
    for i in range(slides):
        st.append(f"S{i}", rng.integers(0, 255, (64, 32, 32, 3), dtype=np.uint8), {"slide_id": f"S{i}"},
                  {"status": "done"})
    st.close()
    return PatchStore.open(path)


def _whole_file_sum(data: bytes, n_chunks: int = 8) -> list[int]:
    """The shard fingerprint worked out from the whole file: CRC32 of the index and each chunk's CRC32C trailer."""
    tail = data[-(n_chunks * 16 + 4):]
    ends = [off + nb for off, nb in np.frombuffer(tail, "<u8", count=2 * n_chunks).reshape(-1, 2).tolist()]
    return [len(data), zlib.crc32(tail + b"".join(data[e - 4:e] for e in ends))]


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/io"), reason="needs /proc/self/io (Linux)")
def test_resume_check_reads_a_few_bytes_per_shard(tmp_path):
    """changed_shards read each shard's index and chunk trailers through a buffered file: 8 KB per 4-byte read,
    ~64 KB per shard file (~22 MB for 500 slides); now ~170 bytes per shard, and the same fingerprints."""
    st = _made(tmp_path / "st")
    files = sorted(f for f in (tmp_path / "st" / "patches" / "c").rglob("*") if f.is_file())
    assert len(files) == 3 and all(f.stat().st_size > 8 * 20000 for f in files)
    r0 = _rchar()
    assert st.changed_shards() == {}
    assert (_rchar() - r0) / len(files) < 512
    want = {k: v for r in st.records().values() for k, v in r["shards"].items()}
    assert {f.relative_to(st.path).as_posix(): _whole_file_sum(f.read_bytes()) for f in files} == want
    assert {f.as_posix(): store_mod._file_sum(f) for f in files} == {f.as_posix(): _whole_file_sum(f.read_bytes()) for f in files}


def _counting(monkeypatch, name):
    """Count the calls of PatchStore.<name> (the real method still runs)."""
    calls = []
    real = getattr(PatchStore, name)

    def counted(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(PatchStore, name, counted)
    return calls


def test_updating_a_slide_does_not_reindex_the_store(tmp_path, monkeypatch):
    """update_rows (a resume whose cohort changed labels, ages or patient ids) re-read the whole record log of the
    store for each slide: ~1.5 ms more per update at 500 slides, growing with the store. The in-place update must
    leave the same index as opening the store afresh; a re-extracted slide (new region) still re-indexes."""
    st = _made(tmp_path / "st", slides=4)
    w = PatchStore.open(st.path, "r+")
    calls = _counting(monkeypatch, "_index")
    for i in range(4):
        w.update_rows(f"S{i}", {"label": 1, "age": 60.0 + i}, {"label": 1, "age": 60.0 + i})
    w.commit_record("S9", {"status": "error", "reason": "a"}, "errors")
    w.commit_record("S9", {"status": "error", "reason": "b"}, "errors")
    assert calls == []
    rng = np.random.default_rng(1)
    w.append("S4", rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), {"slide_id": "S4"}, {"status": "done"})
    assert calls == []
    wr = store_mod.RowWriter(w.stage_dir() / store_mod.stage_name("slides", "S1"), 8, 32, w.store_cfg())
    wr.write(0, rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8))
    w.commit_staged("S1", wr.close(), 8, {"slide_id": "S1"}, {"status": "done"}, replace=True)  # a new region
    assert len(calls) == 1
    monkeypatch.undo()
    fresh = PatchStore.open(st.path)
    for section in ("slides", "errors"):
        assert w.records(section) == fresh.records(section)
    assert len(w) == len(fresh) and w._runs == fresh._runs and w._logical == fresh._logical and w._seq == fresh._seq
    t, f = w.table(), fresh.table()
    assert all(np.array_equal(t[k], f[k], equal_nan=t[k].dtype.kind == "f") for k in t)
    assert np.array_equal(w.read(0, len(w)), fresh.read(0, len(fresh)))
    w.close()


def test_resume_with_changed_labels_reads_the_records_once(tmp_path, monkeypatch):
    """extract rebuilt every record of the store (store.records()) for each slide whose label changed: O(slides^2)
    on a resume after a cohort table fix. The number of records() calls must not grow with the updated slides."""
    import csv

    from slidestream.engine import config
    from slidestream.engine.runner import extract, read_cohort
    from slidestream.engine.synthetic import make_slide
    from conftest import EXAMPLE

    doc = __import__("json").loads(EXAMPLE.read_text())
    doc["tiling"]["params"].update(size=256, min_tissue=0.3, max_tiles=2)
    doc["patches"] = {"size": 64, "mode": "random", "per_tile": 2}
    doc["thumbnail"] = {"scale": 16}
    p = config.parse(doc)
    slide = make_slide(tmp_path / "s0.svs", size=(1024, 768), label=0, seed=0)
    for i in range(1, 4):
        __import__("os").link(slide, tmp_path / f"s{i}.svs")

    def cohort(labels):
        f = tmp_path / "c.csv"
        with open(f, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["slide_path", "patient_id", "label", "age", "mpp"])
            w.writerows([[tmp_path / f"s{i}.svs", f"P{i}", lab, 50, ""] for i, lab in enumerate(labels)])
        return read_cohort(f)

    extract(p, cohort([0, 0, 0, 0]), tmp_path / "st", progress=False, qa=False)
    counts = []
    for labels in ([1, 0, 0, 0], [0, 1, 1, 1]):
        calls = _counting(monkeypatch, "records")
        s = extract(p, cohort(labels), tmp_path / "st", progress=False, qa=False)
        monkeypatch.undo()
        counts.append(len(calls))
        by = {x["slide_id"]: x for x in s["slides"]}
        changed = [f"s{i}" for i in range(4) if labels[i] != ([0] * 4 if len(counts) == 1 else [1, 0, 0, 0])[i]]
        assert sorted(k for k, v in by.items() if v["status"] == "updated") == changed
    assert counts[0] == counts[1]
    r = PatchStore.open(tmp_path / "st").records()
    assert [r[f"s{i}"]["label"] for i in range(4)] == [0, 1, 1, 1]
