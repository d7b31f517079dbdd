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
