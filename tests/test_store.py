"""The patch store: atomic appends, truncation of uncommitted rows, codecs, columns."""
import json

import numpy as np
import pytest
import zarr

from slidestream.engine.errors import StoreError
from slidestream.engine.store import COLUMNS, PatchStore


def _new(tmp_path, codec="zstd", chunk=8, size=16):
    return PatchStore.create(tmp_path / "s", size, {"codec": codec, "level": 1, "chunk": chunk}, {"extraction_hash": "h"})


@pytest.mark.parametrize("codec", ["zstd", "blosc-lz4", "blosc-zstd", "none"])
def test_appends_round_trip_with_every_codec(tmp_path, codec):
    st = _new(tmp_path, codec)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (13, 16, 16, 3), dtype=np.uint8)  # not a multiple of the chunk: partial chunks
    b = rng.integers(0, 255, (21, 16, 16, 3), dtype=np.uint8)
    assert st.append("s1", a, {"slide_id": "s1", "label": 1, "x": np.arange(13)}, {"status": "done"}) == (0, 13)
    w = st.begin("s2", len(b))
    for i in (0, 5, 12):  # uneven batches, streamed
        w.write(i, b[i: {0: 5, 5: 12, 12: 21}[i]])
    assert w.commit({"slide_id": "s2", "label": 0, "age": 61.5}, {"status": "done"}) == (13, 34)
    g = zarr.open_group(str(tmp_path / "s"), mode="r")
    assert np.array_equal(g["patches"][:], np.concatenate([a, b]))
    ro = PatchStore.open(tmp_path / "s")
    t = ro.table()
    assert set(t) == set(COLUMNS) and len(ro) == 34
    assert list(t["slide_id"][[0, 13]]) == ["s1", "s2"] and list(t["label"][[0, 33]]) == [1, 0]
    assert np.isnan(t["age"][0]) and t["age"][20] == pytest.approx(61.5) and t["x"][12] == 12 and t["x"][13] == -1
    assert ro.manifest["slides"]["s2"]["rows"] == [13, 34]


def test_uncommitted_rows_vanish_on_reopen(tmp_path):
    st = _new(tmp_path)
    x = np.full((10, 16, 16, 3), 7, np.uint8)
    st.append("s1", x, {"slide_id": "s1"}, {})
    w = st.begin("s2", 30)  # a run killed here: rows written, manifest not updated
    w.write(0, np.full((30, 16, 16, 3), 9, np.uint8))
    w._flush(final=True)
    [f.result() for f in w._pending]
    assert zarr.open_group(str(tmp_path / "s"), mode="r")["patches"].shape[0] == 40
    st2 = PatchStore.open(tmp_path / "s", mode="r+")
    assert len(st2) == 10 and st2.patches.shape[0] == 10 and not st2.done("s2")
    st2.append("s2", np.full((3, 16, 16, 3), 5, np.uint8), {"slide_id": "s2"}, {})
    assert (st2.patches[10:13] == 5).all() and st2.patches.shape[0] == 13


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
    assert list(PatchStore.open(tmp_path / "s").column("split")) == ["train", "test"]
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["rows"] == 2
