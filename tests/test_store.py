"""The patch store: atomic commits, padding hidden, codecs, columns, the writer lock, atomic creation."""
import json
import os
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
import zarr

from slidestream.engine import store as store_mod
from slidestream.engine.errors import StoreError
from slidestream.engine.store import COLUMNS, PatchStore, beside
from zarr.codecs import ZstdCodec


def _zarr_patch_kwargs(size, cfg):
    """What the store's patch array is, in zarr's own terms: ``zarr.create_array`` arguments."""
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    name, level, chunk = cfg.get("codec", "zstd"), int(cfg.get("level", 1)), int(cfg.get("chunk", 32))
    comps = {"zstd": [ZstdCodec(level=max(level, 1))], "none": [],
             "blosc-lz4": [BloscCodec(cname="lz4", clevel=level, shuffle="noshuffle", typesize=1)],
             "blosc-zstd": [BloscCodec(cname="zstd", clevel=level, shuffle="noshuffle", typesize=1)]}[name]
    return dict(dtype="uint8", fill_value=0, chunks=(chunk, size, size, 3), shards=(chunk * 8, size, size, 3),
                compressors=comps + ([Crc32cCodec()] if cfg.get("checksum", True) else []),
                dimension_names=("patch", "py", "px", "channel"))


def _consolidate(path):
    with warnings.catch_warnings():  # zarr notes that consolidated metadata is not in the v3 spec yet
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _new(tmp_path, codec="zstd", chunk=8, size=16):
    return PatchStore.create(tmp_path / "s", size, {"codec": codec, "level": 1, "chunk": chunk}, {"extraction_hash": "h"})


@pytest.mark.parametrize("codec", ["zstd", "blosc-lz4", "blosc-zstd", "none"])
def test_appends_round_trip_with_every_codec(tmp_path, codec):
    st = _new(tmp_path, codec)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (13, 16, 16, 3), dtype=np.uint8)  # not a multiple of the chunk: partial chunks
    b = rng.integers(0, 255, (81, 16, 16, 3), dtype=np.uint8)  # more than one shard (8 chunks of 8)
    assert st.append("s1", a, {"slide_id": "s1", "label": 1, "x": np.arange(13)}, {"status": "done"}) == (0, 13)
    w = st.begin("s2", len(b))
    for i, j in ((0, 5), (5, 70), (70, 81)):  # uneven batches, streamed
        w.write(i, b[i:j])
    assert w.commit({"slide_id": "s2", "label": 0, "age": 61.5}, {"status": "done"}) == (13, 94)
    ro = PatchStore.open(tmp_path / "s")
    assert np.array_equal(ro.patches[:], np.concatenate([a, b])) and ro.patches.shape == (94, 16, 16, 3)
    assert np.array_equal(ro.patches[[2, 13, 90]], np.concatenate([a, b])[[2, 13, 90]])
    assert np.array_equal(np.concatenate([ro.read(*blk) for blk in ro.blocks()]), ro.patches[:])
    assert all(b1 - b0 <= 8 for b0, b1 in ro.blocks())
    t = ro.table()
    assert set(t) == set(COLUMNS) and len(ro) == 94
    assert list(t["slide_id"][[0, 13]]) == ["s1", "s2"] and list(t["label"][[0, 93]]) == [1, 0]
    assert np.isnan(t["age"][0]) and t["age"][20] == pytest.approx(61.5) and t["x"][12] == 12 and t["x"][13] == -1
    assert ro.records()["s2"]["rows"] == [13, 94] and ro.records()["s2"]["region"] == [64, 81]
    g = zarr.open_group(str(tmp_path / "s"), mode="r")  # plain zarr: each commit starts a shard, padding after
    assert g["patches"].shape[0] == 64 + 128 and np.array_equal(g["patches"][64:64 + 81], b)
    assert (g["slide_id"][13:64] == "").all() and (g["patches"][13:64] == 0).all()
    assert len(os.listdir(tmp_path / "s" / "patches" / "c")) == 3  # one file per shard: 1 + 2


def test_uncommitted_rows_are_invisible_and_cut(tmp_path):
    st = _new(tmp_path)
    x = np.full((10, 16, 16, 3), 7, np.uint8)
    st.append("s1", x, {"slide_id": "s1"}, {})
    stage = st.begin("s2", 30)
    stage.write(0, np.full((30, 16, 16, 3), 9, np.uint8))
    stage.close()
    real = PatchStore._commit_point
    PatchStore._commit_point = lambda self: (_ for _ in ()).throw(KeyboardInterrupt())  # killed before the commit point
    try:
        with pytest.raises(KeyboardInterrupt):
            st.commit_staged("s2", stage.stage, 30, {"slide_id": "s2"}, {})
    finally:
        PatchStore._commit_point = real
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = zarr.open_group(str(tmp_path / "s"), mode="r")
        assert g["patches"].shape[0] == 64 and g["records"].shape == (1,)  # a plain reader sees s1 only
    assert zarr.open_array(str(tmp_path / "s" / "patches"), mode="r").shape[0] == 128  # written, uncommitted
    st2 = PatchStore.open(tmp_path / "s", mode="r+")
    assert len(st2) == 10 and not st2.done("s2")
    assert zarr.open_array(str(tmp_path / "s" / "patches"), mode="r").shape[0] == 64  # cut on reopen
    st2.append("s2", np.full((3, 16, 16, 3), 5, np.uint8), {"slide_id": "s2"}, {})
    assert (st2.patches[10:13] == 5).all() and st2.patches.shape[0] == 13 and list(st2.column("slide_id")[9:]) == ["s1"] + ["s2"] * 3


def test_refusals(tmp_path):
    st = _new(tmp_path)
    st.append("s1", np.zeros((2, 16, 16, 3), np.uint8), {}, {})
    with pytest.raises(StoreError, match="already"):
        st.append("s1", np.zeros((2, 16, 16, 3), np.uint8), {}, {})
    with pytest.raises(StoreError, match="read-only"):
        PatchStore.open(tmp_path / "s").append("s9", np.zeros((1, 16, 16, 3), np.uint8), {}, {})
    with pytest.raises(StoreError, match="not a slidestream patch store"):
        PatchStore.open(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        PatchStore.create(tmp_path / "file", 16, {}, {"extraction_hash": "h"})
    with pytest.raises(StoreError, match="different extraction pipeline"):
        PatchStore.create(tmp_path / "s", 16, {}, {"extraction_hash": "other"})
    with pytest.raises(StoreError, match="needs 2 values"):
        st.set_column("split", np.array(["train"]))
    st.set_column("split", np.array(["train", "test"]))
    st.manifest["split"] = {"seed": 3}
    st.save_manifest()
    ro = PatchStore.open(tmp_path / "s")
    assert list(ro.column("split")) == ["train", "test"] and ro.manifest["split"] == {"seed": 3}
    old = tmp_path / "old"  # the format-1 layout: manifest.json beside meta/ and patches/
    (old / "meta").mkdir(parents=True)
    (old / "manifest.json").write_text("{}")
    (old / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    with pytest.raises(StoreError, match="older slidestream.*re-extract"):
        PatchStore.open(old)


def test_one_writer_per_store(tmp_path):
    st = _new(tmp_path)
    lock = beside(tmp_path / "s", "lock")
    assert json.loads(lock.read_text()) == {"host": socket.gethostname(), "pid": os.getpid()}
    code = ("import sys; from slidestream.engine.store import PatchStore\n"
            "from slidestream.engine.errors import StoreError\n"
            "try: PatchStore.open(sys.argv[1], mode='r+')\n"
            "except StoreError as e: print(e); sys.exit(2)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True)
    assert r.returncode == 2 and f"pid {os.getpid()}" in r.stdout and socket.gethostname() in r.stdout
    PatchStore.open(tmp_path / "s")  # readers need no lock
    st.close()
    assert not lock.exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))  # a writer that died
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True)
    assert r.returncode == 0 and "stale lock" in r.stderr and f"pid {dead.pid}" in r.stderr


def test_creation_is_atomic(tmp_path, monkeypatch):
    calls = []

    def crash(path):  # killed in the middle of creating the store
        calls.append(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(store_mod.zarr3, "group_doc", lambda *a: crash(a))  # the arrays' files are written
    with pytest.raises(KeyboardInterrupt):
        _new(tmp_path)
    assert calls and not (tmp_path / "s").exists()  # nothing at the store's path
    store_mod._release_all()
    monkeypatch.undo()
    st = _new(tmp_path)  # the rerun starts over
    st.append("s1", np.ones((3, 16, 16, 3), np.uint8), {}, {})
    assert len(PatchStore.open(tmp_path / "s")) == 3 and not any(beside(tmp_path / "s", "partial").iterdir())


@pytest.mark.parametrize("codec", ["zstd", "none", "blosc-lz4", "blosc-zstd"])
@pytest.mark.parametrize("n", [5, 32, 144, 300, 513])
def test_row_writer_writes_the_bytes_zarr_writes(tmp_path, codec, n):
    """RowWriter compresses chunks and assembles shard files itself: every file equals zarr's own write of
    the same rows (same codec, chunks, shards), whatever the row count and write sizes."""
    rng = np.random.default_rng(n)
    cfg = {"codec": codec, "level": 3, "chunk": 4}
    pix = rng.integers(0, 40, (n, 8, 8, 3), dtype=np.uint8)  # compressible, not trivial
    w = store_mod.RowWriter(tmp_path / "mine", n, 8, cfg)
    i = 0
    for step in [7, 1, 13, 4] * n:  # uneven writes across chunk and shard boundaries
        if i >= n:
            break
        w.write(i, pix[i:i + step])
        i += step
    w.close()
    ref = zarr.create_array(str(tmp_path / "zarr"), shape=pix.shape, **_zarr_patch_kwargs(8, cfg),
                            config={"write_empty_chunks": True})
    ref[:] = pix
    mine = {p.relative_to(tmp_path / "mine"): p.read_bytes() for p in (tmp_path / "mine").rglob("*") if p.is_file()}
    theirs = {p.relative_to(tmp_path / "zarr"): p.read_bytes() for p in (tmp_path / "zarr").rglob("*") if p.is_file()}
    assert mine.keys() == theirs.keys()
    assert all(mine[k] == theirs[k] for k in mine), [str(k) for k in mine if mine[k] != theirs[k]]
    assert np.array_equal(zarr.open_array(str(tmp_path / "mine"), mode="r")[:], pix)


def test_commit_point_equals_zarr_consolidation(tmp_path):
    """A commit writes the root zarr.json from the arrays' metadata in memory: the same document
    zarr.consolidate_metadata makes by reading the store back."""
    st = _new(tmp_path)
    st.append("s1", np.ones((40, 16, 16, 3), np.uint8), {"x": np.arange(40), "slide_id": "s1"}, {"status": "done"})
    st.commit_record("bad", {"status": "error"}, "errors")
    st.append("s2", np.ones((3, 16, 16, 3), np.uint8), {"age": 7.5}, {"status": "done"})
    mine = json.loads((tmp_path / "s" / "zarr.json").read_text())
    _consolidate(tmp_path / "s")
    assert mine == json.loads((tmp_path / "s" / "zarr.json").read_text())
    assert mine["consolidated_metadata"]["metadata"]["patches"]["shape"][0] == 2 * st.shard
    assert len(PatchStore.open(tmp_path / "s")) == 43


class _ZarrStore:
    """The reference: the same store built through zarr's API, operation by operation, as the store did
    before it wrote its files itself (zarr's create_array/resize/setitem/consolidate_metadata)."""

    def __init__(self, path, attrs, size, cfg):
        self.path = path
        g = zarr.open_group(str(path), mode="w")
        g.attrs.update(attrs)
        g.create_array("patches", shape=(0, size, size, 3), **_zarr_patch_kwargs(size, cfg))
        for name, (dtype, fill) in COLUMNS.items():
            g.create_array(name, shape=(0,), chunks=(4096,), dtype=dtype, fill_value=fill, dimension_names=("patch",),
                           compressors=ZstdCodec(level=0, checksum=True))
        g.create_array("records", shape=(0,), chunks=(16,), dtype=str, fill_value="", dimension_names=("record",),
                       compressors=ZstdCodec(level=0, checksum=True))
        _consolidate(path)
        self.rows, self.n_records, self.shard = 0, 0, int(cfg["chunk"]) * 8

    def arrays(self):
        g = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)
        return {name: g[name] for name in store_mod.ARRAYS}

    def grow(self, rows, n_records):
        for name, a in self.arrays().items():
            a.resize((n_records if name == "records" else rows, *a.shape[1:]))

    def commit(self, key, pix, meta, record, section="slides", point=True):
        n, p0, i = len(pix), self.rows, self.n_records
        p1 = p0 + -(-n // self.shard) * self.shard
        self.grow(p1, i + 1)
        a = self.arrays()
        if n:
            a["patches"][p0:p0 + n] = pix
            for name, (dtype, fill) in COLUMNS.items():
                vals = np.full(p1 - p0, fill, dtype=object if dtype is str else dtype)
                v = meta.get(name, fill)
                vals[:n] = np.asarray(v) if np.ndim(v) else v
                a[name][p0:p1] = vals.astype(str) if dtype is str else vals
        rec = {**record, "section": section, "key": key, "region": [p0, n] if n else None}
        if n:  # the size and CRC32 of each shard file and of its rows of the FIXED columns, as PatchStore records them
            rec["shards"] = {f"patches/c/{j}/0/0/0": store_mod._file_sum(self.path / f"patches/c/{j}/0/0/0")
                             for j in range(p0 // self.shard, p1 // self.shard)}
            rec["columns"] = {name: store_mod._values_crc(a[name][p0:p0 + n]) for name in store_mod.FIXED}
        a["records"][i:i + 1] = np.array([json.dumps(rec)])
        if point:
            _consolidate(self.path)
            self.rows, self.n_records = p1, i + 1


def test_store_files_are_the_bytes_zarr_writes(tmp_path, monkeypatch):
    """The store writes its zarr.json files and column chunks itself (no zarr on the write path): every file of
    a store after create, commits, an error record, an interrupted commit cut on reopening, a label update, a
    split column and a manifest save equals, byte for byte, the same operations done through zarr; and plain
    zarr reads it back."""
    cfg = {"codec": "zstd", "level": 1, "chunk": 8}
    rng = np.random.default_rng(3)
    pix = [rng.integers(1, 60, (n, 16, 16, 3), dtype=np.uint8) for n in (13, 81, 30, 3)]
    st = PatchStore.create(tmp_path / "mine", 16, cfg, {"extraction_hash": "h"})
    ref = _ZarrStore(tmp_path / "zarr", {"slidestream": st.manifest}, 16, cfg)
    assert _files(tmp_path / "mine") == _files(tmp_path / "zarr")  # creation
    m1 = {"slide_id": "s1", "label": 1, "x": np.arange(13), "tissue": np.linspace(0, 1, 13, dtype=np.float32)}
    st.append("s1", pix[0], m1, {"status": "done"})
    ref.commit("s1", pix[0], m1, {"status": "done"})
    st.commit_record("bad", {"status": "error"}, "errors")
    ref.commit("bad", pix[0][:0], {}, {"status": "error"}, "errors")
    m2 = {"slide_id": "s2", "patient_id": "p2", "label": 0, "age": 61.5, "y": np.arange(81) * 7}
    st.append("s2", pix[1], m2, {"status": "done"})
    ref.commit("s2", pix[1], m2, {"status": "done"})
    assert _files(tmp_path / "mine") == _files(tmp_path / "zarr")
    w = st.begin("s3", 30)  # killed before its commit point, then cut when a writer opens the store
    w.write(0, pix[2])
    w.close()
    monkeypatch.setattr(PatchStore, "_commit_point", lambda self: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        st.commit_staged("s3", w.stage, 30, {"slide_id": "s3"}, {"status": "done"})
    monkeypatch.undo()
    ref.commit("s3", pix[2], {"slide_id": "s3"}, {"status": "done"}, point=False)
    store_mod._release_all()
    st = PatchStore.open(tmp_path / "mine", mode="r+")
    ref.grow(ref.rows, ref.n_records)
    assert _files(tmp_path / "mine") == _files(tmp_path / "zarr")
    st.append("s4", pix[3], {"slide_id": "s4", "synthetic": True}, {"status": "done"})
    ref.commit("s4", pix[3], {"slide_id": "s4", "synthetic": True}, {"status": "done"})
    st.update_rows("s1", {"label": 0, "age": 50.0}, {"label": 0})  # a cohort change on a rerun
    a = ref.arrays()
    a["label"][0:13], a["age"][0:13] = np.zeros(13, np.int8), np.full(13, 50.0, np.float32)
    a["records"].resize((ref.n_records + 1,))
    rec = {"status": "done", "region": [0, 13], "shards": {"patches/c/0/0/0/0": store_mod._file_sum(ref.path / "patches/c/0/0/0/0")},
           "columns": st.records()["s1"]["columns"], "label": 0, "section": "slides", "key": "s1"}
    a["records"][ref.n_records:] = np.array([json.dumps(rec)])
    _consolidate(ref.path)
    split = np.array(["train", "val", "test"] * 32 + ["train"])[:len(st)]
    st.set_column("split", split)
    st.manifest["split"] = {"seed": 3}
    st.save_manifest()
    full = np.full(ref.rows, "", object)
    full[st._phys] = split
    ref.arrays()["split"][:] = full.astype(str)
    g = zarr.open_group(str(ref.path), mode="r+", use_consolidated=False)
    g.attrs["slidestream"] = {**g.attrs["slidestream"], "split": {"seed": 3}}
    _consolidate(ref.path)
    mine, theirs = _files(tmp_path / "mine"), _files(tmp_path / "zarr")
    assert mine.keys() == theirs.keys()
    assert [k for k in mine if mine[k] != theirs[k]] == []
    g = zarr.open_group(str(tmp_path / "mine"), mode="r")  # plain zarr reads it
    want = np.concatenate([pix[0], pix[1], pix[3]])
    ro = PatchStore.open(tmp_path / "mine")
    assert np.array_equal(ro.patches[:], want) and list(ro.column("split")) == list(split)
    assert np.array_equal(g["patches"][192:195], pix[3]) and list(g["slide_id"][190:193]) == ["", "", "s4"]
    assert list(g["label"][:13]) == [0] * 13 and g["synthetic"][192] and not g["synthetic"][191]


@pytest.mark.parametrize("codec", ["zstd", "none", "blosc-lz4"])
def test_any_flipped_byte_in_a_chunk_is_an_error_never_other_data(tmp_path, codec):
    """Each patch chunk carries a CRC32C and each column chunk zstd's content checksum: flipping any one byte
    of a shard or column chunk file is a StoreError on reading, never other pixels or values. (Before: with
    codec none every flip inside a chunk read as other pixels; with zstd some flips decoded silently.)"""
    st = PatchStore.create(tmp_path / "s", 8, {"codec": codec, "level": 1, "chunk": 4}, {"extraction_hash": "h"})
    rng = np.random.default_rng(1)
    pix = rng.integers(0, 30, (6, 8, 8, 3), dtype=np.uint8)
    st.append("S0", pix, {"x": np.arange(6), "label": 1, "slide_id": "S0"}, {"status": "done"})
    st.close()
    shard = next(p for p in (st.path / "patches" / "c").rglob("*") if p.is_file())
    column = next(p for p in (st.path / "x" / "c").rglob("*") if p.is_file())
    for f, read in ((shard, lambda s: s.read(0, 6)), (column, lambda s: s.column("x"))):
        good = f.read_bytes()
        wrong = []
        for i in range(len(good)):
            bad = bytearray(good)
            bad[i] ^= 0x10
            f.write_bytes(bytes(bad))
            try:
                got = read(PatchStore.open(st.path))
            except StoreError:
                continue
            if not np.array_equal(got, pix if f == shard else np.arange(6)):
                wrong.append(i)
        f.write_bytes(good)
        assert not wrong, f"{f.name}: {len(wrong)} of {len(good)} flipped bytes read as other data"
    assert np.array_equal(PatchStore.open(st.path).read(0, 6), pix)


def test_a_store_made_without_chunk_checksums_resumes_as_it_was(tmp_path):
    """Stores made before the CRC32C keep their codecs: a resumed slide is staged without one, and reads."""
    st = PatchStore.create(tmp_path / "s", 8, {"codec": "zstd", "level": 1, "chunk": 4, "checksum": False},
                           {"extraction_hash": "h"})
    st.append("S0", np.ones((5, 8, 8, 3), np.uint8), {}, {"status": "done"})
    st.close()
    st = PatchStore.create(tmp_path / "s", 8, {"codec": "zstd", "level": 1, "chunk": 4}, {"extraction_hash": "h"})
    assert st.store_cfg()["checksum"] is False
    st.append("S1", np.full((3, 8, 8, 3), 2, np.uint8), {}, {"status": "done"})
    st.close()
    codecs = json.loads((tmp_path / "s" / "patches" / "zarr.json").read_text())["codecs"][0]["configuration"]["codecs"]
    assert [c["name"] for c in codecs] == ["bytes", "zstd"]
    assert PatchStore.open(tmp_path / "s").read(5, 8).min() == 2
