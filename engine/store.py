"""The patch store: one zarr v3 group per run, plus a JSON manifest beside the arrays.

Layout (``STORE/``)::

    zarr.json                 group; attrs["slidestream"] = {format, extraction_hash, label_names}
    patches/                  (N, S, S, 3) uint8, chunked along N, compressed (pipeline ``store``)
    meta/<column>/            one 1-D array per column, N rows (see COLUMNS)
    manifest.json             pipeline + hash, versions, seed, committed rows, per-slide records
    qa/<slide_id>.png         thumbnail with tissue mask and kept tiles (extraction QA)

Atomicity: rows are written first, then ``manifest.json`` is replaced atomically with the new row
count and the slide's record. Rows past the manifest's count are junk from an interrupted commit and
are cut off when the store is opened again, so a slide is in the store completely or not at all.
Only one process (the driver) writes a store; workers hand over patches through ``staging/``.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import zarr

from .errors import StoreError

FORMAT = 1
LABEL_NAMES = {-1: "unknown", 0: "wildtype", 1: "mutant"}

# column -> (dtype, fill for rows without a value)
COLUMNS: dict[str, tuple[Any, Any]] = {
    "slide_id": (str, ""),
    "patient_id": (str, ""),
    "label": ("int8", -1),  # 1 = IDH-mutant, 0 = IDH-wildtype, -1 = unknown
    "age": ("float32", np.nan),
    "x": ("int64", -1),  # level-0 top-left of the patch
    "y": ("int64", -1),
    "size0": ("int32", 0),  # level-0 extent of the patch (side)
    "tile_id": ("int32", -1),  # index of the tile within its slide (rank order)
    "tile_tissue": ("float32", np.nan),  # tissue fraction of the tile, 0..1
    "tissue": ("float32", np.nan),  # tissue fraction of the patch itself, 0..1
    "synthetic": ("bool", False),
    "generator": (str, ""),  # id of the generator that made a synthetic patch
    "split": (str, ""),  # train / val / test, set by `slidestream train` or `split`
}


def codec(cfg: Mapping[str, Any]) -> list:
    """zarr v3 compressors for the pipeline's ``store`` section."""
    from zarr.codecs import BloscCodec, ZstdCodec

    name, level = cfg.get("codec", "zstd"), int(cfg.get("level", 1))
    if name == "zstd":
        return [ZstdCodec(level=max(level, 1))]
    if name in ("blosc-zstd", "blosc-lz4", "lz4"):
        cname = "zstd" if name == "blosc-zstd" else "lz4"
        return [BloscCodec(cname=cname, clevel=min(max(level, 1), 9), shuffle="noshuffle", typesize=1)]
    if name == "none":
        return []
    raise StoreError(f"unknown store codec {name!r}; use zstd, lz4, blosc-zstd, blosc-lz4 or none")


def _gather(coros) -> list:
    """Run zarr coroutines concurrently on zarr's event loop."""
    import asyncio

    from zarr.core.sync import sync

    async def run():
        return await asyncio.gather(*coros)

    return sync(run())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers (and a rerun after a kill) see the old or the new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class PatchStore:
    """A patch store on disk. Open with :meth:`create` (new or resumable) or :meth:`open` (existing)."""

    def __init__(self, path: Path, group: zarr.Group, manifest: dict[str, Any], mode: str):
        self.path = path
        self.group = group
        self.manifest = manifest
        self.mode = mode

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path: str | Path, patch_size: int, store_cfg: Mapping[str, Any], manifest: dict[str, Any]) -> "PatchStore":
        """Open ``path`` for writing: create it, or resume it when its extraction hash matches."""
        path = Path(path)
        if (path / "manifest.json").exists():
            st = cls.open(path, mode="r+")
            old, new = st.manifest.get("extraction_hash"), manifest.get("extraction_hash")
            if old != new:
                raise StoreError(f"store {path} was made by a different extraction pipeline (hash {old[:12]} vs "
                                 f"{new[:12]}); use a new --out, or delete the store to start over")
            return st
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} is a file, not a store directory; choose a new --out directory")
        if path.exists() and any(p for p in path.iterdir() if p.name != "qa"):
            raise StoreError(f"{path} exists and is not a slidestream store; choose an empty or new --out directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise StoreError(f"cannot write the store at {path}: {e.strerror}; choose a writable --out") from None
        g = zarr.open_group(str(path), mode="w")
        g.attrs["slidestream"] = {"format": FORMAT, "label_names": {str(k): v for k, v in LABEL_NAMES.items()},
                                  "extraction_hash": manifest.get("extraction_hash")}
        chunk = int(store_cfg.get("chunk", 32))
        ag = g._async_group
        _gather([ag.create_array("patches", shape=(0, patch_size, patch_size, 3), dtype="uint8", fill_value=0,
                                 chunks=(chunk, patch_size, patch_size, 3), compressors=codec(store_cfg))]
                + [ag.create_array(f"meta/{name}", shape=(0,), chunks=(65536,), dtype=dtype,
                                   fill_value=fill if dtype is not str else "") for name, (dtype, fill) in COLUMNS.items()])
        manifest = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": 0,
                    "slides": {}, "synthetic": {}, **manifest}
        atomic_write_text(path / "manifest.json", json.dumps(manifest, indent=1))
        return cls(path, g, manifest, "r+")

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "PatchStore":
        """Open an existing store (``r`` read-only, ``r+`` to append or set columns)."""
        path = Path(path)
        mf = path / "manifest.json"
        if not mf.is_file():
            raise StoreError(f"{path} is not a slidestream patch store (no manifest.json); run `slidestream extract` first")
        try:
            manifest = json.loads(mf.read_text())
            group = zarr.open_group(str(path), mode="r+" if mode != "r" else "r")
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot open the store {path}: {e}") from None
        st = cls(path, group, manifest, mode)
        if mode != "r":
            st._truncate_to_manifest()
        return st

    def _truncate_to_manifest(self) -> None:
        """Cut rows an interrupted commit wrote beyond the manifest's count."""
        n = int(self.manifest["rows"])
        for arr in self._arrays():
            if arr.shape[0] != n:
                arr.resize((n, *arr.shape[1:]))

    def _arrays(self) -> Iterable[zarr.Array]:
        yield self.group["patches"]
        for name in COLUMNS:
            yield self.group[f"meta/{name}"]

    # ------------------------------------------------------------------ reading
    @property
    def patches(self) -> zarr.Array:
        return self.group["patches"]

    def __len__(self) -> int:
        return int(self.manifest["rows"])

    def column(self, name: str) -> np.ndarray:
        return np.asarray(self.group[f"meta/{name}"][: len(self)])

    def table(self, columns: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Metadata as a dict of equal-length numpy columns."""
        return {c: self.column(c) for c in (columns or COLUMNS)}

    def blocks(self) -> np.ndarray:
        """Committed rows as ``(k, 2)`` ``[row0, row1)`` ranges, each one storage chunk: reading one block
        costs one decompression. Loaders shuffle and read by block; they never assume a chunk grid."""
        n, c = len(self), int(self.patches.chunks[0])
        starts = np.arange(0, n, c, dtype=np.int64)
        return np.stack([starts, np.minimum(starts + c, n)], axis=1) if n else np.zeros((0, 2), np.int64)

    def read(self, row0: int, row1: int) -> np.ndarray:
        """Patches of the committed rows ``row0 .. row1`` (uint8, (n, S, S, 3))."""
        if not 0 <= row0 <= row1 <= len(self):
            raise StoreError(f"rows {row0}..{row1} are outside the store's {len(self)} committed rows")
        return np.asarray(self.patches[row0:row1])

    def records(self, section: str = "slides") -> dict[str, dict[str, Any]]:
        """Committed records of ``section`` (``slides`` or ``synthetic``) by key: what a slide's or a
        generator batch's commit said about it (reader, tiles, rows, patient_source, ...)."""
        return dict(self.manifest.get(section, {}))

    def done(self, key: str, section: str = "slides") -> bool:
        return key in self.manifest.get(section, {})

    # ------------------------------------------------------------------ writing (driver only)
    def append(self, key: str, patches: np.ndarray, meta: Mapping[str, Any], record: dict[str, Any],
               section: str = "slides") -> tuple[int, int]:
        """Append ``patches`` (n, S, S, 3) with their metadata and commit ``record`` under ``section/key``.

        ``meta`` maps column names to length-n arrays or scalars; missing columns get their fill.
        Returns the committed row range. Safe against a kill at any moment (see module docs).
        """
        writer = self.begin(key, int(patches.shape[0]), section)
        step = self.patches.chunks[0] * 8
        for i in range(0, len(patches), step):  # bounded memory; a memmap streams from disk
            writer.write(i, np.asarray(patches[i: i + step]))
        return writer.commit(meta, record)

    def begin(self, key: str, n: int, section: str = "slides") -> "RowWriter":
        """Reserve ``n`` rows after the committed ones for ``key``; fill them with ``RowWriter.write``."""
        if self.mode == "r":
            raise StoreError(f"store {self.path} is open read-only")
        if self.done(key, section):
            raise StoreError(f"{section} {key!r} is already in store {self.path}")
        return RowWriter(self, key, n, section)

    def _commit(self, key: str, n0: int, n: int, meta: Mapping[str, Any], record: dict[str, Any], section: str):
        n1 = n0 + n
        if n:
            columns = []
            for name, (dtype, fill) in COLUMNS.items():
                v = meta.get(name, fill)
                values = np.asarray(v) if np.ndim(v) else np.full(n, v, dtype=object if dtype is str else dtype)
                columns.append((self.group[f"meta/{name}"], values.astype(str) if dtype is str else values))

            async def write(col, values):  # all columns at once: one round of zarr I/O, not fourteen
                await col._async_array.resize((n1,))
                await col._async_array.setitem(slice(n0, n1), values)

            _gather(write(c, v) for c, v in columns)
        record = {**record, "rows": [n0, n1]}
        self.manifest.setdefault(section, {})[key] = record
        self.manifest["rows"] = n1
        self.save_manifest()
        return n0, n1

    def set_column(self, name: str, values: np.ndarray) -> None:
        """Overwrite a whole metadata column (e.g. ``split``)."""
        if name not in COLUMNS:
            raise StoreError(f"unknown column {name!r}; columns: {', '.join(COLUMNS)}")
        values = np.asarray(values)
        if values.shape != (len(self),):
            raise StoreError(f"column {name!r} needs {len(self)} values, got {values.shape}")
        self.group[f"meta/{name}"][:] = values.astype(str) if COLUMNS[name][0] is str else values

    def save_manifest(self) -> None:
        atomic_write_text(self.path / "manifest.json", json.dumps(self.manifest, indent=1, default=str))


class RowWriter:
    """Writes one slide's (or batch's) patches into reserved rows, chunk-aligned, compressing in a
    background thread so decoding and compression overlap. Nothing is visible until ``commit``."""

    def __init__(self, store: PatchStore, key: str, n: int, section: str):
        from concurrent.futures import ThreadPoolExecutor

        self.store, self.key, self.n, self.section = store, key, n, section
        self.n0 = len(store)
        arr = store.patches
        arr.resize((self.n0 + n, *arr.shape[1:]))
        self.chunk = arr.chunks[0]
        self._buf: list[np.ndarray] = []
        self._buf_start = 0  # offset (within this writer) of the first buffered row
        self._buffered = 0
        self._pool = ThreadPoolExecutor(1)
        self._pending = []

    def write(self, offset: int, patches: np.ndarray) -> None:
        """Write rows ``offset .. offset+len(patches)`` (offsets must arrive in increasing order)."""
        if offset != self._buf_start + self._buffered:
            self._flush(final=True)
            self._buf_start = offset
        self._buf.append(np.asarray(patches))
        self._buffered += len(patches)
        self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._buffered:
            return
        start = self.n0 + self._buf_start
        end = start + self._buffered
        if not final:  # write only whole chunks, so no chunk is compressed twice
            end = (end // self.chunk) * self.chunk
            if end <= start:
                return
        block = np.concatenate(self._buf) if len(self._buf) > 1 else self._buf[0]
        k = end - start
        self._pending.append(self._pool.submit(_write_block, self.store.patches, start, block[:k]))
        rest = block[k:]
        self._buf = [rest] if len(rest) else []
        self._buf_start += k
        self._buffered = len(rest)
        while len(self._pending) > 2:  # bound memory: at most a few blocks in flight
            self._pending.pop(0).result()

    def commit(self, meta: Mapping[str, Any], record: dict[str, Any]) -> tuple[int, int]:
        self._flush(final=True)
        for f in self._pending:
            f.result()
        self._pool.shutdown()
        return self.store._commit(self.key, self.n0, self.n, meta, record, self.section)


def _write_block(arr: zarr.Array, start: int, block: np.ndarray) -> None:
    with zarr.config.set({"array.write_empty_chunks": True}):
        arr[start:start + len(block)] = block
