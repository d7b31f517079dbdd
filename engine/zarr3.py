"""The zarr v3 files of the patch store, written (and its 1-D arrays read) without importing zarr.

``extract`` writes a store's ``zarr.json`` documents and its metadata columns' chunks itself, as zarr 3 writes
them: importing zarr (its config, asyncio machinery, fsspec and codec registry) cost ~0.2 s of CPU per
one-slide ``extract`` process, more than the store's own work (bench/README.md). Only what the store uses is
here: regular chunk grids, the default chunk key encoding, ``bytes``/``vlen-utf8`` serializers with at most one
``zstd``/``blosc`` compressor (numcodecs, the library zarr encodes them with), and the ``sharding_indexed``
layout of the patch array (assembled by ``store.RowWriter``). tests/test_store.py compares every file with
zarr's own for the same operations and reads the result back with zarr; reading patches is left to zarr.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

# the store's metadata columns: zarr 3's default compressor (zstd level 0) with zstd's content checksum on, so a
# damaged column chunk (a flipped label byte) is an error on reading, not another value
COLUMN_COMPRESSOR = {"name": "zstd", "configuration": {"level": 0, "checksum": True}}
SHARD_INDEX_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]


def array_meta(shape, data_type: str, chunks, fill_value, codecs: list, dims) -> dict[str, Any]:
    """An array's ``zarr.json`` document, keys in zarr's order."""
    return {"shape": list(shape), "data_type": data_type,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": fill_value, "codecs": codecs, "attributes": {}, "dimension_names": list(dims),
            "zarr_format": 3, "node_type": "array", "storage_transformers": []}


def column_meta(dtype, fill, chunk: int, dim: str) -> dict[str, Any]:
    """A 1-D array as ``zarr.create_array(shape=(0,), chunks=(chunk,), dtype=dtype, fill_value=fill,
    compressors=ZstdCodec(level=0, checksum=True))`` makes it: ``str`` -> zarr's variable-length ``string``;
    numbers and bools little-endian bytes; zstd with its checksum (``COLUMN_COMPRESSOR``)."""
    if dtype is str:
        return array_meta([0], "string", [chunk], str(fill), [{"name": "vlen-utf8", "configuration": {}},
                                                              COLUMN_COMPRESSOR], [dim])
    dt = np.dtype(dtype)
    serializer = {"name": "bytes"} if dt.itemsize == 1 else {"name": "bytes", "configuration": {"endian": "little"}}
    return array_meta([0], dt.name, [chunk], _fill_json(dt, fill), [serializer, COLUMN_COMPRESSOR], [dim])


def _fill_json(dt: np.dtype, fill):
    if dt.kind == "b":
        return bool(fill)
    if dt.kind == "f":
        f = float(fill)
        return "NaN" if math.isnan(f) else "Infinity" if f == math.inf else "-Infinity" if f == -math.inf else f
    return int(fill)


def group_doc(attributes: dict[str, Any], arrays: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The root ``zarr.json`` with the arrays' metadata consolidated in it, as ``zarr.consolidate_metadata``
    writes it (arrays sorted by name)."""
    return {"attributes": attributes, "zarr_format": 3,
            "consolidated_metadata": {"kind": "inline", "must_understand": False,
                                      "metadata": {k: arrays[k] for k in sorted(arrays, key=str.casefold)}},
            "node_type": "group"}


def dumps(doc: dict[str, Any]) -> bytes:
    """A ``zarr.json`` document's bytes (zarr's ``json_indent`` 2, NaN allowed)."""
    return json.dumps(doc, indent=2, allow_nan=True).encode()


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_bytes())


def put(path: Path, data, durable: bool = False) -> None:
    """Replace the file at ``path`` with ``data`` atomically (a temporary file renamed over it), as zarr's local
    store does: a reader, or a rerun after a kill, sees the old file or the new one. ``durable``: fsync before
    the rename. The one atomic write of the project (``store.atomic_write_bytes`` adds the full-disk error)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def chunk_key(meta: dict[str, Any], coords) -> str:
    """The store key of a chunk (a shard for a sharded array): ``c/0/0`` (default encoding) or ``0.0`` (v2)."""
    enc = meta["chunk_key_encoding"]
    sep = enc.get("configuration", {}).get("separator", "/" if enc["name"] == "default" else ".")
    key = sep.join(str(c) for c in coords)
    return ("c" + sep + key if key else "c") if enc["name"] == "default" else key or "0"


def resize(root: Path, meta: dict[str, Any], rows: int) -> None:
    """Set the rows of the array at ``root`` (its first dimension): chunks wholly past them are deleted when it
    shrinks, as zarr's ``resize`` does; then its ``zarr.json`` is rewritten. ``meta`` is updated in place."""
    c = meta["chunk_grid"]["configuration"]["chunk_shape"]
    if any(math.ceil(s / k) != 1 for s, k in zip(meta["shape"][1:], c[1:])):
        raise ValueError(f"{root}: only arrays with one chunk across dimensions 2.. are resized here")
    old = meta["shape"][0]
    for k in range(math.ceil(rows / c[0]), math.ceil(old / c[0])):
        (root / chunk_key(meta, (k, *[0] * (len(c) - 1)))).unlink(missing_ok=True)
    meta["shape"] = [rows, *meta["shape"][1:]]
    put(root / "zarr.json", dumps(meta))


def compressor(codec: dict[str, Any]):
    """The numcodecs compressor zarr encodes a ``zstd`` or ``blosc`` codec (its JSON) with."""
    import numcodecs

    cfg = codec.get("configuration", {})
    if codec["name"] == "zstd":
        return numcodecs.Zstd(level=cfg["level"], checksum=cfg.get("checksum", False))
    if codec["name"] == "blosc":
        B = numcodecs.Blosc
        return B(cname=cfg["cname"], clevel=cfg["clevel"], blocksize=cfg.get("blocksize", 0), typesize=cfg.get("typesize", 1),
                 shuffle={"noshuffle": B.NOSHUFFLE, "shuffle": B.SHUFFLE, "bitshuffle": B.BITSHUFFLE}[cfg["shuffle"]])
    raise ValueError(f"compressor {codec}")


class Column:
    """Chunk codec of a 1-D array the store writes (a metadata column or ``records``): reads and writes row
    ranges as zarr does (a chunk partly written is read, merged and replaced; a chunk left all fill value is
    deleted; a complete chunk is not read first). Raises ValueError for codecs it does not know."""

    def __init__(self, meta: dict[str, Any]):
        codecs = meta["codecs"]
        if len(meta["shape"]) != 1 or not codecs or len(codecs) > 2 or meta["chunk_grid"]["name"] != "regular":
            raise ValueError(f"not a 1-D array with one serializer and at most one compressor: {codecs}")
        ser, comp = codecs[0], codecs[1] if len(codecs) == 2 else None
        self.string = meta["data_type"] == "string"
        if self.string and ser["name"] == "vlen-utf8":
            self.dtype, self.fill = np.dtype(object), meta["fill_value"]
        elif (not self.string and ser["name"] == "bytes"
              and ser.get("configuration", {}).get("endian", "little") == "little"):
            self.dtype = np.dtype(meta["data_type"])
            self.fill = self.dtype.type(np.nan if meta["fill_value"] == "NaN" else meta["fill_value"])
        else:
            raise ValueError(f"data type {meta['data_type']} with serializer {ser}")
        self.compressor = compressor(comp) if comp else None
        self.meta, self.chunk = meta, int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        self.nan_fill = self.dtype.kind == "f" and bool(np.isnan(self.fill))

    def _blank(self) -> np.ndarray:
        return np.full(self.chunk, self.fill, self.dtype)

    def encode(self, chunk: np.ndarray) -> bytes:
        if self.string:
            from numcodecs.vlen import VLenUTF8

            raw = VLenUTF8().encode(chunk)
        else:
            raw = np.ascontiguousarray(chunk, self.dtype.newbyteorder("<")).tobytes()
        return bytes(self.compressor.encode(raw)) if self.compressor else raw

    def decode(self, data: bytes) -> np.ndarray:
        raw = self.compressor.decode(data) if self.compressor else data
        if self.string:
            from numcodecs.vlen import VLenUTF8

            return VLenUTF8().decode(raw)
        return np.frombuffer(raw, self.dtype.newbyteorder("<")).astype(self.dtype)

    def _read_chunk(self, root: Path, k: int) -> np.ndarray:
        try:
            return self.decode((root / chunk_key(self.meta, (k,))).read_bytes())
        except FileNotFoundError:
            return self._blank()

    def read(self, root: Path, start: int, stop: int) -> np.ndarray:
        """Rows ``start .. stop`` (strings as numpy's variable-width ``StringDType``, as zarr returns them)."""
        c = self.chunk
        parts = [self._read_chunk(root, k)[max(start - k * c, 0): stop - k * c]
                 for k in range(start // c, math.ceil(stop / c))]
        out = np.concatenate(parts) if parts else np.zeros(0, self.dtype)
        return out.astype(np.dtypes.StringDType()) if self.string else out

    def write(self, root: Path, start: int, values: np.ndarray) -> None:
        """Set rows ``start .. start + len(values)`` (within the array's shape in ``meta``); a string column takes
        any values and stores them as ``str``."""
        if self.string:
            values = np.asarray(values).astype(str).astype(object)
        c, rows, stop = self.chunk, int(self.meta["shape"][0]), start + len(values)
        for k in range(start // c, math.ceil(stop / c)):
            lo = k * c
            whole = start <= lo and stop >= min(lo + c, rows)  # zarr then starts from the fill value, unread
            chunk = self._blank() if whole else self._read_chunk(root, k).copy()
            a, b = max(start, lo), min(stop, lo + c)
            chunk[a - lo:b - lo] = values[a - start:b - start]
            path = root / chunk_key(self.meta, (k,))
            if np.isnan(chunk).all() if self.nan_fill else (chunk == self.fill).all():
                path.unlink(missing_ok=True)  # zarr keeps no chunk of fill values
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                put(path, self.encode(chunk))
