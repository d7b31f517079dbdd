"""The patch store: one zarr v3 hierarchy per run, committed slide by slide in constant time.

Layout (``STORE`` is the ``--out`` folder; it is a plain zarr v3 group, nothing else lives in it)::

    STORE/zarr.json        root group: attrs["slidestream"] = the manifest (pipeline, hashes, versions, seed,
                           split; small, fixed size) and consolidated metadata of the arrays below
    STORE/patches/         (rows, S, S, 3) uint8, dims (patch, py, px, channel); chunks of ``store.chunk``
                           rows, sharded by 8 chunks: one file per shard
    STORE/<column>/        one 1-D array per column (see COLUMNS), dims (patch,), chunks of 4,096 rows
    STORE/records/         1-D strings, dims (record,): one JSON record per commit (a slide, a synthetic
                           batch, an error), written once
    STORE.lock             beside it: host and pid of the one process writing the store
    STORE.partial/         beside it: slides being written (never read); emptied when a writer opens
    STORE.qa/              beside it: QA pictures of `extract`

Regions: a commit owns whole shards, so a slide's rows start at a shard boundary and the rows up to the
next boundary are padding (``slide_id`` "", pixels 0, no file on disk). Its record says where:
``region = [first row, patches]``. :class:`PatchStore` hides padding: its rows (``len``, ``table``,
``read``, ``blocks``, ``patches``) are the committed patches only, in commit order.

Writing: a slide's patches go into a staging array in ``STORE.partial/`` with the store's chunks, shards
and codec (any process may do this: dask workers on a shared filesystem do). The commit (one process, the
lock holder) renames the staging shards into place after the last region, writes the region's column
rows and its record (each touches only its own chunks), grows the arrays and rewrites the root
``zarr.json`` -- the commit point. A reader opening the group sees the consolidated shapes: a slide is in
completely or not at all; rows past them are cut off when a writer opens the store again.

Files: the writer writes every file itself (``engine/zarr3.py``: the bytes zarr 3 writes for the same
operations, tests/test_store.py compares them), so creating, resuming and committing import no zarr; reading
patches opens the patch array with zarr.
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import json
import math
import os
import shutil
import socket
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import quote

import numpy as np

from . import zarr3
from .errors import StoreError

FORMAT = 2
LABEL_NAMES = {-1: "unknown", 0: "wildtype", 1: "mutant"}
SHARD_CHUNKS = 8  # chunks per shard file along rows: a commit owns whole shards
META_CHUNK = 4096  # rows per chunk of a metadata column
RECORD_CHUNK = 16  # records per chunk
PATCH_DIMS = ("patch", "py", "px", "channel")

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
ARRAYS = ("patches", *COLUMNS, "records")
# columns nothing rewrites after a commit: each commit records the CRC32 of its rows of them ("columns")
FIXED = ("slide_id", "x", "y", "size0", "tile_id", "tile_tissue", "tissue")


def codec(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """zarr v3 compressors (their JSON, as zarr writes it) for the pipeline's ``store`` section."""
    name, level = cfg.get("codec", "zstd"), int(cfg.get("level", 1))
    if name == "zstd":
        return [{"name": "zstd", "configuration": {"level": max(level, 1), "checksum": False}}]
    if name in ("blosc-zstd", "blosc-lz4", "lz4"):
        cname = "zstd" if name == "blosc-zstd" else "lz4"
        return [{"name": "blosc", "configuration": {"typesize": 1, "cname": cname, "clevel": min(max(level, 1), 9),
                                                    "shuffle": "noshuffle", "blocksize": 0}}]
    if name == "none":
        return []
    raise StoreError(f"unknown store codec {name!r}; use zstd, lz4, blosc-zstd, blosc-lz4 or none")


def _zarr():
    """zarr, imported when a store's patches are first read (writing a store does not need it)."""
    from .device import without_cupy

    with without_cupy():
        import zarr
    return zarr


def atomic_write_text(path: str | Path, text: str, durable: bool = True) -> None:
    """Replace ``path`` with ``text`` so readers (and a rerun after a kill) see the old or the new file."""
    atomic_write_bytes(path, text.encode(), durable)


def atomic_write_bytes(path: str | Path, data, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (bytes-like) so readers (and a rerun after a kill) see the old or the new
    file; a full or read-only disk leaves the old file, no temporary one, and raises :class:`WriteError`.
    ``durable``: fsync before the rename (off for files nothing resumes from, written often: progress)."""
    with writing(path):
        zarr3.put(Path(path), data, durable)


class WriteError(StoreError):
    """A write failed because the disk is full or read-only, or the output is not writable: it stops the run (it
    is no slide's fault), and a rerun after fixing it resumes from the last commit."""


_FIX = {errno.ENOSPC: "free space", errno.EDQUOT: "free space (disk quota exceeded)", errno.EFBIG: "free space (file size limit)",
        errno.EROFS: "make it writable", errno.EACCES: "make it writable", errno.EPERM: "make it writable"}


def write_error(e: OSError, path: str | Path | None) -> WriteError | None:
    """The one-line error for ``e`` raised while writing ``path`` (a file or the store), or None when ``e`` is
    not a full, read-only or unwritable output."""
    if e.errno not in _FIX:
        return None
    where = e.filename or path
    return WriteError(f"{f'{where}: ' if where else ''}{e.strerror or os.strerror(e.errno)}; {_FIX[e.errno]} and run "
                      "the same command again to resume")


@contextlib.contextmanager
def writing(path: str | Path):
    """Turn a full disk, read-only or unwritable output while writing ``path`` into :class:`WriteError`."""
    try:
        yield
    except OSError as e:
        err = write_error(e, path)
        if err is None:
            raise
        raise err from None


def years(age: np.ndarray) -> np.ndarray:
    """Ages as read from a store: float64 rounded to 1/1000 year, not float32 images (62.3, not 62.29999923706055),
    so train, predict, fusion and evaluate (which reads the CSV) all see the same value."""
    return np.round(np.asarray(age, np.float64), 3)


def beside(path: str | Path, what: str) -> Path:
    """``STORE.lock``, ``STORE.partial``, ``STORE.qa``: files a store keeps next to its zarr hierarchy."""
    path = Path(path)
    return path.with_name(f"{path.name}.{what}")


# Every patch chunk ends with its CRC32C (zarr's ``crc32c`` codec after the compressor): a flipped or cut byte
# in a chunk is an error on reading, never other pixels (zstd alone decodes some damage silently; blosc and
# ``none`` check nothing). Stores made before it have none: ``_codec_cfg`` keeps them as they are.
CRC32C = {"name": "crc32c"}


def patch_meta(rows: int, size: int, store_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``zarr.json`` of a patch array: (rows, size, size, 3) uint8, fill 0, chunks of ``store.chunk`` rows in
    shards of ``SHARD_CHUNKS`` chunks, the store's codec inside the shards, then a CRC32C per chunk unless
    ``checksum`` is false (zarr's ``create_array(..., chunks=, shards=, compressors=[codec, Crc32cCodec()])``)."""
    chunk = int(store_cfg.get("chunk", 32))
    inner = [{"name": "bytes"}, *codec(store_cfg), *([CRC32C] if store_cfg.get("checksum", True) else [])]
    sharding = {"name": "sharding_indexed", "configuration": {"chunk_shape": [chunk, size, size, 3], "codecs": inner,
                "index_codecs": zarr3.SHARD_INDEX_CODECS, "index_location": "end"}}
    return zarr3.array_meta([rows, size, size, 3], "uint8", [chunk * SHARD_CHUNKS, size, size, 3], 0, [sharding], PATCH_DIMS)


def _inner_codecs(meta: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """A patch array's compressors inside its shards (zero or one) and whether each chunk ends with a CRC32C."""
    comps = meta["codecs"][0]["configuration"]["codecs"][1:]  # after the "bytes" serializer
    checksum = bool(comps) and comps[-1] == CRC32C
    return (comps[:-1] if checksum else comps), checksum


def _crc32c(data) -> bytes:
    """The CRC32C of ``data``, little-endian, as zarr's ``crc32c`` codec and the shard index append it."""
    import google_crc32c

    if isinstance(data, bytes):
        crc = google_crc32c.value(data)
    else:  # a buffer (google_crc32c takes bytes only): in 64 KiB copies, small enough to reuse the same memory
        crc, view = 0, memoryview(data).cast("B")
        for i in range(0, len(view), 65536):
            crc = google_crc32c.extend(crc, bytes(view[i:i + 65536]))
    return np.uint32(crc).astype("<u4").tobytes()


def _new_arrays(patch_size: int, store_cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``zarr.json`` of each array of a new store (no rows yet)."""
    out = {"patches": patch_meta(0, patch_size, store_cfg)}
    out.update({name: zarr3.column_meta(dtype, fill, META_CHUNK, "patch") for name, (dtype, fill) in COLUMNS.items()})
    out["records"] = zarr3.column_meta(str, "", RECORD_CHUNK, "record")
    return out


# ---------------------------------------------------------------------------------------------- the lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_HELD: set[Path] = set()


def acquire_lock(path: Path, what: str = "store") -> None:
    """Make this process the one writer of the store (or output folder: ``what``) at ``path`` (``PATH.lock``: host and pid).

    A live holder is refused with its name; a dead one on this host is taken over, with a message."""
    lock = beside(path, "lock")
    if lock in _HELD:
        return
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
                host, pid = str(holder["host"]), int(holder["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                host, pid = "?", -1
            if host == me["host"] and pid == me["pid"]:
                _HELD.add(lock)
                return
            if host == me["host"] and not _pid_alive(pid) or pid == -1 and time.time() - _mtime(lock) > 60:
                print(f"slidestream: taking over the stale lock {lock} of pid {pid} on {host} (no longer running)",
                      file=sys.stderr)
                lock.unlink(missing_ok=True)
                continue
            raise StoreError(f"{what} {path} is being written by pid {pid} on host {host} (lock {lock}); wait for "
                             "it to finish, or delete the lock if that process is gone")
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        _HELD.add(lock)
        return
    raise StoreError(f"cannot take the lock {lock}; delete it if no slidestream process writes {path}")


@contextlib.contextmanager
def lock_output(out: str | Path):
    """One writer per output folder (``train``, ``mil train``, ``gan train``): ``OUT.lock`` as a store's, released
    when the block ends (or the process exits); a lock of a dead process on this host is taken over."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    acquire_lock(out, "output folder")
    try:
        yield
    finally:
        release_lock(out)


def live_writer(path: str | Path) -> str | None:
    """``"pid N on host H"`` when another live process holds the lock of the store at ``path`` (an ``extract``
    still running: its slides are not all in), else None (no lock, this process's, or a dead holder's here)."""
    lock = beside(path, "lock")
    try:
        holder = json.loads(lock.read_text())
        host, pid = str(holder["host"]), int(holder["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if lock in _HELD or host == socket.gethostname() and (pid == os.getpid() or not _pid_alive(pid)):
        return None
    return f"pid {pid} on host {host}"


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def release_lock(path: Path) -> None:
    lock = beside(path, "lock")
    if lock in _HELD:
        _HELD.discard(lock)
        lock.unlink(missing_ok=True)


def _release_all() -> None:
    for lock in list(_HELD):
        lock.unlink(missing_ok=True)
    _HELD.clear()


atexit.register(_release_all)


# ---------------------------------------------------------------------------------------------- staging
class _BufferPool:
    """Chunk arrays handed back after compression and reused by the next chunk of any writer in the process:
    a fresh 6 MiB array costs ~1,500 page faults (``np.zeros``), ~20-50 ms of system time per slide
    (bench/README.md, round 11). At most ``keep`` arrays are kept."""

    def __init__(self, keep: int = 16):
        self.keep, self._free, self._lock = keep, [], threading.Lock()

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        with self._lock:
            for i, a in enumerate(self._free):
                if a.shape == shape:
                    return self._free.pop(i)
        return np.empty(shape, np.uint8)

    def give(self, a: np.ndarray) -> None:
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(a)


_BUFFERS = _BufferPool()


class RowWriter:
    """Writes one slide's (or batch's) ``n`` patches into a staging array (``STORE.partial/<name>``),
    compressing chunk by chunk in background threads as rows arrive, so decoding and compression overlap.

    Any process may write one (dask workers do); only the store's writer commits it. Nothing is
    visible in the store before the commit. Each chunk is compressed as soon as its rows are in
    (``chunk`` rows, not a whole shard), with the array's own codec, and each shard file is assembled
    as zarr's sharding codec writes it (chunks in order, then the index of (offset, length) pairs and its
    CRC32C): the same bytes as writing through zarr, with less overhead (a slide's 144-400 patches: ~20 % less
    wall time, 10-20 % less CPU, bench/README.md). The staging array's ``zarr.json`` is written directly too
    (``patch_meta``): writing imports no zarr."""

    def __init__(self, stage: str | Path, n: int, size: int, store_cfg: Mapping[str, Any], store: "PatchStore | None" = None,
                 key: str = "", section: str = "slides"):
        from concurrent.futures import ThreadPoolExecutor

        self.stage, self.n, self.store, self.key, self.section = Path(stage), n, store, key, section
        shutil.rmtree(self.stage, ignore_errors=True)
        self.meta = patch_meta(n, size, store_cfg)
        with writing(self.stage):
            self.stage.mkdir(parents=True)
            zarr3.put(self.stage / "zarr.json", zarr3.dumps(self.meta))
        self.chunk, self.row_shape = int(store_cfg.get("chunk", 32)), (size, size, 3)
        comps, self._crc = _inner_codecs(self.meta)
        self._encode = zarr3.compressor(comps[0]) if comps else None  # None: raw bytes
        # plain zstd (the default): imagecodecs' encoder into pooled output arrays (numcodecs' bytes, identical,
        # allocate ~3 MB of fresh pages per chunk); other codecs through numcodecs
        cfg = comps[0].get("configuration", {}) if comps else {}
        self._zstd = cfg["level"] if comps and comps[0]["name"] == "zstd" and not cfg.get("checksum") else None
        self._cur: np.ndarray | None = None  # rows of the chunk being filled
        self._cur_index = -1
        self._chunks: dict[int, Any] = {}  # chunk index -> future of its compressed bytes
        self._pool = ThreadPoolExecutor(max(1, min(2, os.cpu_count() or 1)), thread_name_prefix="compress")
        self._next = 0  # the next chunk to append to its shard file (_write_shards)
        self._last_started = 0  # one past the highest chunk index rows were written to
        self._fh = None  # the shard file being appended to
        self._pos = 0
        self._index = np.full((SHARD_CHUNKS, 2), 2 ** 64 - 1, "<u8")

    def write(self, offset: int, patches: np.ndarray) -> None:
        """Write rows ``offset .. offset+len(patches)`` (offsets must arrive in increasing order)."""
        patches = np.asarray(patches)
        c = self.chunk
        i = 0
        while i < len(patches):
            row = offset + i
            ci = row // c
            if ci != self._cur_index:
                self._finish_chunk()
                self._cur_index, self._cur = ci, _BUFFERS.take((c, *self.row_shape))
                self._last_started = max(self._last_started, ci + 1)
                self._written = np.zeros(c, bool)
            k = min(len(patches) - i, (ci + 1) * c - row)
            self._cur[row - ci * c: row - ci * c + k] = patches[i:i + k]
            self._written[row - ci * c: row - ci * c + k] = True
            i += k
            if row + k == min((ci + 1) * c, self.n):  # the chunk is complete
                self._finish_chunk()
        with writing(self.stage):
            self._write_shards(final=False)

    def _finish_chunk(self) -> None:
        if self._cur is not None:
            data, self._cur = self._cur, None
            data[~self._written] = 0  # rows never written (past the end, a dropped tile's) are zarr's fill value
            self._chunks[self._cur_index] = self._pool.submit(self._compress, data)
            self._cur_index = -1
            while sum(not f.done() for f in self._chunks.values()) > 4:  # bound memory: a few raw chunks queued
                next(f for f in self._chunks.values() if not f.done()).result()

    def _compress(self, data: np.ndarray) -> tuple[list, np.ndarray | None]:
        """The chunk's bytes as parts written one after the other (no concatenation copy), and the pooled
        array they lie in (handed back once the shard is written), if any."""
        out = None
        if self._encode is None:  # raw: the array's own bytes (not handed back)
            b = memoryview(data).cast("B").toreadonly()
        else:
            b = None
            if self._zstd is not None:
                import imagecodecs

                out = _BUFFERS.take((data.nbytes + (data.nbytes >> 7) + 65536,))
                try:
                    b = memoryview(imagecodecs.zstd_encode(data, level=self._zstd, out=out)).toreadonly()
                except Exception:  # noqa: BLE001 - numcodecs encodes it below, as before
                    _BUFFERS.give(out)
                    out = None
            if b is None:
                b = self._encode.encode(data)
            _BUFFERS.give(data)  # reused for a later chunk: no fresh pages to fault in and zero
        # zarr's crc32c codec: the CRC32C of the compressed bytes appended
        return ([b, _crc32c(b)] if self._crc else [b]), out

    def _write_shards(self, final: bool) -> None:
        """Append each chunk to its shard file as soon as it and every chunk before it are compressed (all of them
        when ``final``), so the file is written while later tiles decode, not all at the end (24 MB, ~25 ms, on
        the benchmark slide); a shard's index and its CRC32C close it. A chunk no row was written to is absent,
        as zarr leaves it; a shard with no chunk is no file."""
        try:
            self._append(final)
        finally:  # closed between calls (reopened to append): a writer left behind by a slide that failed holds no
            # file open; a failed write (disk full, ...) leaves the staging file incomplete, never committed
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def _append(self, final: bool) -> None:
        per = SHARD_CHUNKS
        n_chunks = -(-self.n // self.chunk)
        while self._next < n_chunks:
            i = self._next
            f = self._chunks.get(i)
            if f is None and not final and (i >= self._cur_index >= 0 or i >= self._last_started):
                return  # being filled, or not started yet
            if f is not None and not final and not f.done():
                return
            path = self.stage / zarr3.chunk_key(self.meta, (i // per, 0, 0, 0))
            if f is not None:
                b, out = self._chunks.pop(i).result()
                if self._fh is None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    self._fh = open(path, "ab" if self._pos else "wb")  # "ab": the shard begun in an earlier call
                self._fh.writelines(b)
                size = sum(len(x) for x in b)
                self._index[i % per] = (self._pos, size)
                self._pos += size
                if out is not None:  # the encoder's output array, back to the pool
                    _BUFFERS.give(out)
            self._next += 1
            if self._next % per == 0 or self._next == n_chunks:  # the shard is complete
                if self._pos:  # a chunk was written (in this call or an earlier one)
                    self._fh = self._fh or open(path, "ab")
                    idx = self._index.tobytes()
                    self._fh.writelines([idx, _crc32c(idx)])
                    self._fh.close()
                self._fh, self._pos = None, 0
                self._index = np.full((per, 2), 2 ** 64 - 1, "<u8")

    def close(self) -> str:
        """Finish writing; returns the staging path to hand to :meth:`PatchStore.commit_staged`."""
        self._finish_chunk()
        with writing(self.stage):
            self._write_shards(final=True)
        self._chunks = {}
        self._pool.shutdown()
        return str(self.stage)

    def commit(self, meta: Mapping[str, Any], record: dict[str, Any]) -> tuple[int, int]:
        self.close()
        return self.store.commit_staged(self.key, self.stage, self.n, meta, record, self.section)


def stage_name(section: str, key: str) -> str:
    return f"{section}-{quote(key, safe='')}.{os.getpid()}.{time.monotonic_ns()}"


# ---------------------------------------------------------------------------------------------- the store
@contextlib.contextmanager
def damaged(store: str, what: str, fix: str):
    """A chunk file that does not decompress (flipped or cut bytes: zstd/blosc errors, a shard checksum that does
    not match) is one StoreError naming the store and what was read, not a codec traceback."""
    try:
        yield
    except (RuntimeError, ValueError) as e:
        raise StoreError(f"{store}: cannot read {what} ({' '.join(str(e).split())[:160]}); the store is damaged: "
                         f"{fix}") from None


class PatchStore:
    """A patch store on disk. Open with :meth:`create` (new or resumable) or :meth:`open` (existing)."""

    def __init__(self, path: Path, mode: str, fresh: bool = False):
        self.path = path
        self.mode = mode
        self._shards_ok: set[int] = set()  # shard files seen on disk (_check_shards)
        self._sums_ok: set[int] = set()  # shard files whose size and CRC32 match their record (_check_sums)
        self._sums_cache: dict[str, list[int]] | None = None
        self._zpatches = None  # the patch array opened with zarr, for reading (_patch_array)
        # consolidated in the root zarr.json: the committed shapes. A writer reopens each array from its own
        # zarr.json (rows an interrupted commit wrote past the committed shapes are cut on opening); a reader
        # or a store just created takes them from the consolidated metadata (15 fewer file reads). The files
        # are read and written directly (zarr3): a writer imports no zarr
        root = zarr3.read_json(path / "zarr.json")
        self._attrs: dict[str, Any] = root.get("attributes") or {}
        self.manifest: dict[str, Any] = dict(self._attrs.get("slidestream") or {})
        consolidated = (root.get("consolidated_metadata") or {}).get("metadata") or {}
        committed = {name: consolidated.get(name) or zarr3.read_json(path / name / "zarr.json") for name in ARRAYS}
        self._rows = int(committed["patches"]["shape"][0])  # physical rows, padding included
        self._n_records = int(committed["records"]["shape"][0])
        self._meta = committed if fresh or mode == "r" else {name: zarr3.read_json(path / name / "zarr.json")
                                                              for name in ARRAYS}
        self._cols = {name: zarr3.Column(self._meta[name]) for name in (*COLUMNS, "records")}  # ValueError: unknown codecs
        chunks = self._meta["patches"]["codecs"][0]["configuration"]["chunk_shape"]
        self.size, self.chunk = int(chunks[1]), int(chunks[0])
        self.shard = self.chunk * SHARD_CHUNKS
        raw = self._cols["records"].read(path / "records", 0, self._n_records) if self._n_records else []
        self._log = [self._record(i, s) for i, s in enumerate(np.asarray(raw).tolist())]
        self._index()
        self._check_regions()
        self._check_layout()

    def _record(self, i: int, text: str) -> dict[str, Any]:
        """Record ``i`` of the log, refused when it is cut short or not of the shape commits write."""
        try:
            rec = json.loads(text)
        except ValueError:
            rec = None
        if not isinstance(rec, dict):
            self._bad_records(f"record {i} is not a JSON object (cut short?)")
        if not isinstance(rec.get("section"), str) or not isinstance(rec.get("key"), str):
            self._bad_records(f"record {i} has no section or key")
        reg = rec.get("region")
        if reg is not None and not (isinstance(reg, list) and len(reg) == 2 and all(type(v) is int and v >= 0 for v in reg)):
            self._bad_records(f"{rec['section']} {rec['key']!r} has the region {reg!r}, not [first row, patches]")
        return rec

    def _check_regions(self) -> None:
        """Current regions start at shard boundaries and never overlap: a record copied under another key (or a
        damaged one) would read the same patches twice, under two slide ids."""
        end, last = 0, None
        for rec in sorted((r for recs in self._records.values() for r in recs.values()
                           if r["section"] in ("slides", "synthetic") and r.get("region") and r["region"][1] > 0),
                          key=lambda r: r["region"][0]):
            p0, n = rec["region"]
            who = f"{rec['section']} {rec['key']!r}"
            if p0 % self.shard:
                self._bad_records(f"{who} starts at row {p0}, not at a shard boundary ({self.shard} rows)")
            if p0 < end:
                self._bad_records(f"{who} and {last} both claim rows {p0}..{min(end, p0 + n) - 1}")
            end, last = p0 + n, who

    def _bad_records(self, why: str) -> None:
        raise StoreError(f"store {self.path}: {why}: its records were edited or the store is damaged; copy it again, "
                         "or re-extract into a new --out")

    def _check_layout(self) -> None:
        """What the metadata says must hold what the records say (an edited or damaged zarr.json would end in
        an IndexError deep in a reader, or read rows as other rows): arrays of the store's types and shapes,
        every column as long as the patches, every committed region inside them."""
        why = None
        a = self._meta["patches"]
        shape = list(a.get("shape") or [])
        if not isinstance(self.manifest.get("pipeline", {}), dict) or not isinstance(self.manifest.get("format"), int):
            why = "its `slidestream` attributes are not those of a patch store"
        elif a.get("data_type") != "uint8" or len(shape) != 4 or shape[1:] != [self.size, self.size, 3]:
            why = f"patches are {a.get('data_type')} {tuple(shape[1:])}, not uint8 (S, S, 3)"
        else:
            short = [n for n in COLUMNS if len(self._meta[n].get("shape") or []) != 1 or self._meta[n]["shape"][0] < self._rows]
            end = max((p0 + n for p0, n in self._runs), default=0)
            if short:
                why = f"column {short[0]!r} has fewer rows than the patches ({self._rows})"
            elif end > self._rows:
                why = f"its records place patches up to row {end}, but the arrays hold {self._rows}"
        if why:
            raise StoreError(f"store {self.path}: {why}: its zarr.json was edited or the store is damaged; copy it "
                             "again, or re-extract into a new --out")

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path: str | Path, patch_size: int, store_cfg: Mapping[str, Any], manifest: dict[str, Any]) -> "PatchStore":
        """Open ``path`` for writing: create it, or resume it when its extraction hash matches.

        Creation is atomic: the store is built in ``STORE.partial/`` and renamed into place."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} is a file, not a store directory; choose a new --out directory")
        if (path / "zarr.json").is_file() or (path / "manifest.json").is_file():
            st = cls.open(path, mode="r+")
            old, new = st.manifest.get("extraction_hash"), manifest.get("extraction_hash")
            if old != new and manifest.get("pipeline"):
                from .config import made_before_dct_thumbnails

                why = made_before_dct_thumbnails(old, manifest["pipeline"])
                if why:
                    raise StoreError(f"store {path} {why}")
            if old != new:
                raise StoreError(f"store {path} was made by a different extraction pipeline (hash {str(old)[:12]} vs "
                                 f"{str(new)[:12]}); use a new --out, or delete the store to start over")
            return st
        if path.exists() and any(path.iterdir()):
            raise StoreError(f"{path} exists and is not a slidestream store; choose an empty or new --out directory")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            acquire_lock(path)
        except OSError as e:
            blocker = next((q for q in path.parents if q.is_file()), None)
            if blocker is not None:
                raise StoreError(f"cannot write the store at {path}: {blocker} is a file, not a folder; "
                                 "choose an --out inside a folder") from None
            raise StoreError(f"cannot write the store at {path}: {e.strerror}; choose a writable --out") from None
        partial = beside(path, "partial")
        shutil.rmtree(partial, ignore_errors=True)
        tmp = partial / "new-store"
        tmp.mkdir(parents=True)
        # the 16 zarr.json files zarr writes for this group and its arrays, consolidated (tests/test_store.py
        # compares them with zarr's), written directly: no zarr import on the write path (bench/README.md)
        arrays = _new_arrays(patch_size, store_cfg)
        attrs = {"slidestream": {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                 "label_names": {str(k): v for k, v in LABEL_NAMES.items()}, **manifest}}
        with writing(path):
            for name, meta in arrays.items():
                (tmp / name).mkdir()
                (tmp / name / "zarr.json").write_bytes(zarr3.dumps(meta))
            (tmp / "zarr.json").write_bytes(zarr3.dumps(zarr3.group_doc(attrs, arrays)))
            if path.exists():
                path.rmdir()  # the empty folder a user made for it
            os.rename(tmp, path)
        return cls(path, "r+", fresh=True)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "PatchStore":
        """Open an existing store (``r`` read-only, ``r+`` to append or set columns: takes the lock)."""
        path = Path(path)
        if (path / "manifest.json").is_file():  # format 1 kept its records there; this layout has none inside
            raise StoreError(f"{path} is a patch store of an older slidestream (one manifest.json); re-extract it into a "
                             "new folder: slidestream extract PIPELINE --slides COHORT --out NEW_STORE")
        if not (path / "zarr.json").is_file():
            raise StoreError(f"{path} is not a slidestream patch store (no zarr.json); run `slidestream extract` first")
        feats = _feature_header(path)
        if feats is not None:
            made = f" (its patch store is {feats['patch_store']})" if feats.get("patch_store") else ""
            raise StoreError(f"{path} is a feature store (from `slidestream features`), not a patch store: --store wants "
                             f"the patch store from `slidestream extract`{made} in features, train, predict, split, gan and export; "
                             "a feature store goes to `mil train --features` or `export --features`")
        if mode != "r":
            acquire_lock(path)
        try:
            try:
                st = cls(path, mode)
            except (OSError, ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:  # RuntimeError: a damaged chunk (zstd)
                raise StoreError(f"cannot open the store {path} ({type(e).__name__}: {e}); re-extract it into a new "
                                 "--out") from None
        except StoreError:
            if mode != "r":
                release_lock(path)
            raise
        if st.manifest.get("format") != FORMAT:
            raise StoreError(f"{path} has store format {st.manifest.get('format')}, this slidestream reads {FORMAT}; "
                             "re-extract it into a new --out")
        if mode != "r":
            with writing(path):
                st._grow(st._rows, st._n_records)  # cut what an interrupted commit wrote past the committed shapes
            shutil.rmtree(beside(path, "partial"), ignore_errors=True)
        return st

    def close(self) -> None:
        """Give up the writer's lock (also done when the process exits)."""
        if self.mode != "r":
            release_lock(self.path)

    def _index(self) -> None:
        """Current record per (section, key) from the log (a later record replaces an earlier one) and the
        committed regions in row order."""
        self._records: dict[str, dict[str, dict[str, Any]]] = {}
        self._seq: dict[tuple[str, str], int] = {}
        self._runs: list[tuple[int, int]] = []  # (first physical row, patches), in row order
        self._starts = [0]  # first logical row of each run, then the total
        self._logical: dict[tuple[str, str], tuple[int, int]] = {}
        self._phys_cache = None
        self._sums_cache = None
        self._cols_ok: set[str] = set()  # FIXED columns whose rows matched their commits' CRC32 (_check_column)
        current = {}
        for i, rec in enumerate(self._log):
            self._records.setdefault(rec["section"], {})[rec["key"]] = rec
            self._seq[rec["section"], rec["key"]] = i
            current[rec["section"], rec["key"]] = rec
        for rec in sorted((r for r in current.values() if r["section"] in ("slides", "synthetic") and r.get("region")
                           and r["region"][1] > 0), key=lambda r: r["region"][0]):
            self._add_run(rec)

    def _add_run(self, rec: dict[str, Any]) -> None:
        p0, n = rec["region"]
        l0 = self._starts[-1]
        self._runs.append((p0, n))
        self._starts.append(l0 + n)
        self._logical[rec["section"], rec["key"]] = (l0, l0 + n)
        self._phys_cache = self._sums_cache = None
        self._cols_ok = set()

    def _add(self, rec: dict[str, Any]) -> None:
        """Index a new record without rereading the log: a new key's region lies after all others; a key's new
        record with its old region (``update_rows``, another error) replaces the old one where it is."""
        self._log.append(rec)
        old = self._records.get(rec["section"], {}).get(rec["key"])
        if old is not None and old.get("region") != rec.get("region"):
            self._index()  # a re-extracted key (rare): index again
            return
        self._records.setdefault(rec["section"], {})[rec["key"]] = rec
        self._seq[rec["section"], rec["key"]] = len(self._log) - 1
        if old is not None:  # the same rows: only what _index would clear (rows may have been rewritten)
            self._sums_cache, self._cols_ok = None, set()
        elif rec["section"] in ("slides", "synthetic") and rec.get("region") and rec["region"][1] > 0:
            self._add_run(rec)

    @property
    def _phys(self) -> np.ndarray:
        """Physical row of each committed row."""
        if self._phys_cache is None:
            self._phys_cache = (np.concatenate([np.arange(p0, p0 + n, dtype=np.int64) for p0, n in self._runs])
                                if self._runs else np.zeros(0, np.int64))
        return self._phys_cache

    # ------------------------------------------------------------------ reading
    @property
    def patches(self) -> "PatchView":
        """Read-only view of the committed patches by row: ``shape``, ``chunks``, ``[...]``."""
        return PatchView(self)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def column(self, name: str) -> np.ndarray:
        if name not in COLUMNS:
            raise StoreError(f"unknown column {name!r}; columns: {', '.join(COLUMNS)}")
        with self._damaged(f"its column {name!r}"):
            full = self._cols[name].read(self.path / name, 0, self._rows)
        if name in FIXED and name not in self._cols_ok:
            self._check_column(name, full)
            self._cols_ok.add(name)
        return years(full[self._phys]) if name == "age" else full[self._phys]

    def _check_column(self, name: str, full: np.ndarray) -> None:
        """Refuse a column whose rows are not what each commit wrote (CRC32 in its record): two columns' chunk
        files swapped (x and y: same type and codec) or one replaced decode fine as other values."""
        for section in ("slides", "synthetic"):
            for key, rec in self._records.get(section, {}).items():
                want = (rec.get("columns") or {}).get(name) if rec.get("region") else None
                p0, n = rec["region"] if want is not None else (0, 0)
                if want is not None and _values_crc(full[p0:p0 + n]) != want:
                    raise StoreError(f"store {self.path}: column {name!r} of {section} {key!r} is not what its commit "
                                     f"wrote (CRC32): its chunk files ({name}/c/...) were swapped or replaced (or a writer "
                                     "changed the store since it was opened here); copy the store again, or re-extract "
                                     "into a new --out")

    def table(self, columns: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Metadata as a dict of equal-length numpy columns."""
        return {c: self.column(c) for c in (columns or COLUMNS)}

    def blocks(self) -> np.ndarray:
        """Committed rows as ``(k, 2)`` ``[row0, row1)`` ranges, each within one storage chunk: reading one
        block costs one decompression. Loaders shuffle and read by block; they never assume a chunk grid."""
        out = [(l0 + c, l0 + min(c + self.chunk, n)) for (_, n), l0 in zip(self._runs, self._starts)
               for c in range(0, n, self.chunk)]
        return np.array(out, np.int64).reshape(-1, 2)

    def read(self, row0: int, row1: int) -> np.ndarray:
        """Patches of the committed rows ``row0 .. row1`` (uint8, (n, S, S, 3))."""
        if not 0 <= row0 <= row1 <= len(self):
            raise StoreError(f"rows {row0}..{row1} are outside the store's {len(self)} committed rows")
        return self._read_phys(self._phys[row0:row1])

    def _read_phys(self, phys: np.ndarray) -> np.ndarray:
        """Patches at sorted physical rows, one read per contiguous run."""
        out = np.empty((len(phys), self.size, self.size, 3), np.uint8)
        if not len(phys):
            return out
        self._check_shards(phys)
        breaks = np.flatnonzero(np.diff(phys) != 1) + 1
        arr = self._patch_array()
        for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(phys)]):
            with self._damaged(f"the patches of {self._owner(int(phys[a]))} (rows {int(phys[a])}..{int(phys[b - 1])})"):
                out[a:b] = arr[int(phys[a]): int(phys[b - 1]) + 1]
        self._check_sums(phys)
        return out

    def _patch_array(self):
        """The patch array opened with zarr (imported here: only reading patches needs it), again when the
        store grew since."""
        if self._zpatches is None or self._zpatches.shape[0] < self._rows:
            self._zpatches = _zarr().open_array(str(self.path / "patches"), mode="r")
        return self._zpatches

    def _damaged(self, what: str):
        return damaged(f"store {self.path}", what, "copy it again, or re-extract into a new --out")

    def _owner(self, row: int) -> str:
        """Whose commit holds physical ``row``: "slides 'S1'" (or "a commit")."""
        return next((f"{r['section']} {r['key']!r}" for recs in self._records.values()
                     for r in recs.values() if r.get("region") and r["region"][0] <= row < r["region"][0] + r["region"][1]),
                    "a commit")

    def _check_shards(self, phys: np.ndarray) -> None:
        """Refuse to read committed rows whose shard file is missing (a damaged or partly copied store):
        zarr would return zeros (its fill value) as if they were patches. Each shard is checked once."""
        ok = self._shards_ok
        for j in np.unique(phys // self.shard).tolist():
            if j in ok:
                continue
            if not self._shard_file(j).is_file():
                raise StoreError(f"store {self.path}: the patches of {self._owner(j * self.shard)} are missing "
                                 f"({self._shard_file(j).relative_to(self.path)}); the store is damaged or incompletely "
                                 "copied: copy it again, or re-extract into a new --out")
            ok.add(j)

    def _check_sums(self, phys: np.ndarray) -> None:
        """Refuse shard files that are not the ones their commit wrote (size and fingerprint in its record, see
        ``_file_sum``): two slides' files swapped, or one replaced by a copy of another's, decode fine as the other
        slide's patches. Each shard is checked once per store object (a few small reads)."""
        for j in np.unique(phys // self.shard).tolist():
            if j in self._sums_ok:
                continue
            f = self._shard_file(j)
            name = f.relative_to(self.path).as_posix()
            want = self._sums().get(name)
            got = self._shard_sum(f)
            if want is not None and got != list(want):
                raise StoreError(f"store {self.path}: the patch shard {name} of {self._owner(j * self.shard)} is not the one "
                                 f"its commit wrote (size, fingerprint {got} vs {list(want)}): shard files were swapped or "
                                 "replaced; re-extract that slide (run the same `slidestream extract` again: it "
                                 "re-extracts slides whose shard files changed), or the store into a new --out")
            self._sums_ok.add(j)

    def _shard_sum(self, path: Path | str) -> list[int]:
        """``_file_sum`` of one of this store's shard files (its chunks per shard; CRC32C per chunk or not)."""
        return _file_sum(path, self.shard // self.chunk, _inner_codecs(self._meta["patches"])[1])

    def _sums(self) -> dict[str, list[int]]:
        """Shard file (``patches/c/...``) -> [size, fingerprint] from the current records (none in older stores)."""
        if self._sums_cache is None:
            self._sums_cache = {name: v for recs in self._records.values() for r in recs.values()
                                if r.get("region") for name, v in (r.get("shards") or {}).items()}
        return self._sums_cache

    def changed_shards(self, section: str = "slides") -> dict[str, str]:
        """Committed keys whose shard files are missing or not the ones their commit wrote (size and fingerprint,
        ``_file_sum``: a few small reads per file), with the first such file: ``extract`` re-extracts those slides
        on resume (a file swapped for another slide's of the same size too)."""
        out = {}
        for key, rec in self._records.get(section, {}).items():
            for name, want in (rec.get("shards") or {}).items() if rec.get("region") else ():
                try:
                    same = self._shard_sum(os.path.join(self.path, name)) == list(want)  # a str: cheaper than a Path
                except OSError:
                    same = False
                if not same:
                    out[key] = name
                    break
        return out

    def records(self, section: str = "slides") -> dict[str, dict[str, Any]]:
        """Current records of ``section`` (``slides``, ``synthetic`` or ``errors``) by key: what a slide's or
        a generator batch's commit said about it (reader, tiles, ``rows`` (this store's row range),
        ``region``, patient_source, ...). ``errors`` holds only slides whose last attempt failed."""
        out = {}
        for k, r in self._records.get(section, {}).items():
            if section == "errors" and self._seq.get(("slides", k), -1) > self._seq[section, k]:
                continue
            r = {a: b for a, b in r.items() if a not in ("section", "key")}
            if (section, k) in self._logical:
                r["rows"] = list(self._logical[section, k])
            out[k] = r
        return out

    def done(self, key: str, section: str = "slides") -> bool:
        return key in self._records.get(section, {})

    # ------------------------------------------------------------------ writing (the lock holder)
    def _writable(self) -> None:
        if self.mode == "r":
            raise StoreError(f"store {self.path} is open read-only")

    def append(self, key: str, patches: np.ndarray, meta: Mapping[str, Any], record: dict[str, Any],
               section: str = "slides") -> tuple[int, int]:
        """Append ``patches`` (n, S, S, 3) with their metadata and commit ``record`` under ``section/key``.

        ``meta`` maps column names to length-n arrays or scalars; missing columns get their fill.
        Returns the committed row range. Safe against a kill at any moment (see module docs).
        """
        writer = self.begin(key, int(patches.shape[0]), section)
        step = self.shard * 2
        for i in range(0, len(patches), step):  # bounded memory; a memmap streams from disk
            writer.write(i, np.asarray(patches[i: i + step]))
        return writer.commit(meta, record)

    def begin(self, key: str, n: int, section: str = "slides") -> RowWriter:
        """A writer for ``n`` new rows of ``key``; fill them with ``RowWriter.write``, then ``commit``."""
        self._writable()
        if self.done(key, section):
            raise StoreError(f"{section} {key!r} is already in store {self.path}")
        return RowWriter(self.stage_dir() / stage_name(section, key), n, self.size, self.store_cfg(), self, key, section)

    def stage_dir(self) -> Path:
        d = beside(self.path, "partial")
        d.mkdir(exist_ok=True)
        return d

    def store_cfg(self) -> dict[str, Any]:
        """What a staging writer needs to match this store's chunks and codec (the pipeline's ``store``)."""
        return dict((self.manifest.get("pipeline") or {}).get("store") or {}, chunk=self.chunk,
                    **_codec_cfg(self._meta["patches"]))

    def commit_staged(self, key: str, stage: str | Path | None, n: int, meta: Mapping[str, Any], record: dict[str, Any],
                      section: str = "slides", replace: bool = False) -> tuple[int, int]:
        """Commit a finished staging array (``None`` when ``n`` is 0) under ``section/key``: its shards are
        renamed into place after the last region, its column rows and record written, then the root
        metadata (the commit point). Cost does not depend on the store's size. ``replace`` supersedes a
        committed key (its old rows become padding)."""
        self._writable()
        if self.done(key, section) and not replace:
            raise StoreError(f"{section} {key!r} is already in store {self.path}")
        old = self._records.get(section, {}).get(key)
        k = math.ceil(n / self.shard)
        p0, p1 = self._rows, self._rows + k * self.shard
        i = self._n_records
        rec = {**record, "section": section, "key": key, "region": [p0, n] if n else None}
        with writing(self.path):  # a failure before the commit point leaves the store as it was (cut on reopening)
            self._commit_rows(stage, n, k, p0, p1, i, meta, rec)
        self._rows, self._n_records = p1, i + 1
        self._add(rec)
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        if old and old.get("region") and replace:
            self._blank(*old["region"])
        return self._logical.get((section, key), (len(self), len(self)))

    def _commit_rows(self, stage, n: int, k: int, p0: int, p1: int, i: int, meta: Mapping[str, Any],
                     rec: dict[str, Any]) -> None:
        self._grow(p1, i + 1)
        if n:
            stage = Path(stage)
            src, dst = zarr3.read_json(stage / "zarr.json"), self._meta["patches"]
            if src["shape"] != [n, *dst["shape"][1:]] or any(src[a] != dst[a] for a in ("chunk_grid", "codecs", "data_type")):
                c = src["codecs"][0].get("configuration", {})
                raise StoreError(f"staged {stage} does not match the store (shape {src['shape']}, chunks "
                                 f"{c.get('chunk_shape')}, codecs {c.get('codecs')}); extract that slide again")
            rec["shards"] = {}  # each shard file's size and fingerprint: swapped or replaced files are found on reading
            for j in range(k):
                target = self._shard_file(p0 // self.shard + j)
                target.parent.mkdir(parents=True, exist_ok=True)
                staged = stage / zarr3.chunk_key(src, (j, 0, 0, 0))
                rec["shards"][target.relative_to(self.path).as_posix()] = self._shard_sum(staged)
                os.replace(staged, target)
            rec["columns"] = self._write_columns(p0, p1, n, meta)
        self._cols["records"].write(self.path / "records", i, [json.dumps(rec, default=str)])
        self._commit_point()

    def _commit_point(self) -> None:
        """Rewrite the root ``zarr.json`` with every array's current metadata -- what
        ``zarr.consolidate_metadata`` writes, from the metadata in memory instead of listing the store and
        reading 15 files back (tests/test_store.py compares the two); replaced atomically."""
        # replaced as zarr replaces a file (a temporary one renamed over it); no fsync: as before, a commit costs
        # no disk flush (the kill -9 tests need none: the rename is atomic)
        zarr3.put(self.path / "zarr.json", zarr3.dumps(zarr3.group_doc(self._attrs, self._meta)))

    def commit_record(self, key: str, record: dict[str, Any], section: str) -> None:
        """Commit a record without rows (an error, an updated label)."""
        self.commit_staged(key, None, 0, {}, record, section, replace=True)

    def _grow(self, rows: int, n_records: int) -> None:
        """Resize every array to ``rows`` (``records`` to ``n_records``): grown by a commit, cut back on opening
        (chunks past the new rows deleted, as zarr's ``resize``)."""
        for name, meta in self._meta.items():
            size = n_records if name == "records" else rows
            if meta["shape"][0] != size:
                zarr3.resize(self.path / name, meta, size)

    def _write_columns(self, p0: int, p1: int, n: int, meta: Mapping[str, Any]) -> dict[str, int]:
        """Write rows ``p0 .. p1`` of every column (``n`` values, then fill); returns the CRC32 of the FIXED ones."""
        sums = {}
        for name, (dtype, fill) in COLUMNS.items():
            v = meta.get(name, fill)
            vals = np.full(p1 - p0, fill, dtype=object if dtype is str else dtype)
            vals[:n] = np.asarray(v) if np.ndim(v) else v
            self._cols[name].write(self.path / name, p0, vals)
            if name in FIXED:
                sums[name] = _values_crc(vals[:n])
        return sums

    def _blank(self, p0: int, n: int) -> None:
        """Turn the rows of a superseded region into padding (fill values, shard files removed)."""
        k = math.ceil(n / self.shard)
        self._write_columns(p0, p0 + k * self.shard, 0, {})
        for j in range(k):
            self._shard_file(p0 // self.shard + j).unlink(missing_ok=True)

    def _shard_file(self, j: int) -> Path:
        """The file of the ``j``-th shard of ``patches`` (rows ``j * shard ..``)."""
        return self.path / "patches" / zarr3.chunk_key(self._meta["patches"], (j, 0, 0, 0))

    def update_rows(self, key: str, values: Mapping[str, Any], record: dict[str, Any], section: str = "slides") -> None:
        """Set columns of a committed key's rows to ``values`` (scalars) and commit its new ``record``."""
        self._writable()
        old = self._records[section][key]
        keep = {a: b for a, b in old.items() if a not in ("section", "key")}
        rec = {**keep, **record, "section": section, "key": key}
        with writing(self.path):  # a full disk: one line naming the store
            if old.get("region"):
                p0, n = old["region"]
                for name, v in values.items():
                    vals = np.full(n, v, dtype=object if COLUMNS[name][0] is str else COLUMNS[name][0])
                    self._cols[name].write(self.path / name, p0, vals)
            zarr3.resize(self.path / "records", self._meta["records"], self._n_records + 1)
            self._cols["records"].write(self.path / "records", self._n_records, [json.dumps(rec, default=str)])
            self._commit_point()
        self._n_records += 1
        self._add(rec)

    def set_column(self, name: str, values: np.ndarray) -> None:
        """Overwrite a whole metadata column (e.g. ``split``)."""
        self._writable()
        if name not in COLUMNS:
            raise StoreError(f"unknown column {name!r}; columns: {', '.join(COLUMNS)}")
        values = np.asarray(values)
        if values.shape != (len(self),):
            raise StoreError(f"column {name!r} needs {len(self)} values, got {values.shape}")
        col = self._cols[name]
        full = col.read(self.path / name, 0, self._rows).astype(col.dtype)
        full[self._phys] = values
        if self._rows:
            with writing(self.path):  # a full disk: one line naming the store
                col.write(self.path / name, 0, full)

    def save_manifest(self) -> None:
        """Write ``manifest`` (small: pipeline, hashes, split settings) into the root group's attributes."""
        self._writable()
        self._attrs["slidestream"] = json.loads(json.dumps(self.manifest, default=str))
        with writing(self.path):
            self._commit_point()


def _values_crc(vals: np.ndarray) -> int:
    """CRC32 of a commit's rows of one column (strings joined by NUL, numbers as their bytes)."""
    a = np.asarray(vals)
    if a.dtype.kind in "OUT":
        return zlib.crc32("\0".join(map(str, a.tolist())).encode())
    return zlib.crc32(np.ascontiguousarray(a).tobytes())


def _feature_header(path: Path) -> dict[str, Any] | None:
    """The ``slidestream_features`` attributes of the zarr group at ``path`` (a feature store), else None."""
    try:
        attrs = zarr3.read_json(path / "zarr.json").get("attributes") or {}
    except (OSError, ValueError, AttributeError):
        return None
    v = attrs.get("slidestream_features") if isinstance(attrs, dict) else None
    return v if isinstance(v, dict) else None


def _file_sum(path: Path | str, n_chunks: int = SHARD_CHUNKS, crc: bool = True) -> list[int]:
    """[size, fingerprint] of a shard file (a shard's record). With a CRC32C ending each chunk (``crc``), the
    fingerprint is the CRC32 of the shard index and those chunk CRCs: ~ n_chunks small reads at the file's end and
    chunk ends, instead of reading (and CRC-ing) the whole file (+8 ms per 24 MB at commit and again at the first
    read). A swapped or replaced file has other chunk CRCs; a flipped byte fails the chunk's CRC32C on decoding.
    Not a CRC32C of the whole file: a message followed by its CRC32C has a constant CRC32C, so every shard of
    equal length would get the same one. Without chunk CRCs: the CRC32 of the whole file."""
    fd = os.open(path, os.O_RDONLY)  # unbuffered: a buffered file reads 8 KB for each of these 4-byte reads
    try:
        size = os.fstat(fd).st_size
        if not crc:
            with open(fd, "rb", closefd=False) as fh:
                return [size, zlib.crc32(fh.read())]
        tail = n_chunks * 16 + 4  # the index (offset, nbytes) per chunk, little-endian uint64, then its CRC32C
        if size < tail:
            return [size, -1]
        index = os.pread(fd, tail, size - tail)
        parts = [index]
        for off, nb in np.frombuffer(index, "<u8", count=2 * n_chunks).reshape(-1, 2).tolist():
            if off == 2 ** 64 - 1:  # an absent chunk
                continue
            if nb < 4 or off + nb > size - tail:
                return [size, -1]  # an index that does not fit the file: never equal to a written record
            parts.append(os.pread(fd, 4, off + nb - 4))
    finally:
        os.close(fd)
    return [size, zlib.crc32(b"".join(parts))]


def _codec_cfg(meta: dict[str, Any]) -> dict[str, Any]:
    """The pipeline ``store`` codec settings that made a patch array (its ``zarr.json``), so staging arrays
    compress alike."""
    comps, checksum = _inner_codecs(meta)
    if not comps:
        return {"codec": "none", "checksum": checksum}
    c = comps[0].get("configuration", {})
    if comps[0]["name"] == "zstd":
        return {"codec": "zstd", "level": c["level"], "checksum": checksum}
    return {"codec": f"blosc-{c['cname']}", "level": c["clevel"], "checksum": checksum}


class PatchView:
    """The committed patches of a store as one read-only array: ``shape``, ``dtype``, ``chunks`` and
    ``view[rows]`` with an int, a slice, or an array of row numbers (sorted reads fastest)."""

    def __init__(self, store: PatchStore):
        self.store = store
        self.shape = (len(store), store.size, store.size, 3)
        self.dtype = np.dtype("uint8")
        self.chunks = (store.chunk, store.size, store.size, 3)
        self.ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        rows = np.arange(self.shape[0])[key]
        scalar = np.ndim(rows) == 0
        rows = np.atleast_1d(rows)
        uniq, inv = np.unique(rows, return_inverse=True)
        out = self.store._read_phys(self.store._phys[uniq])[inv.ravel()]
        out = out[0] if scalar else out
        return out[(slice(None),) * (0 if scalar else 1) + rest] if rest else out

    def __array__(self, dtype=None, copy=None):
        a = self[:]
        return a.astype(dtype) if dtype else a
