"""A write that fails (full disk, file size limit, read-only output) during `extract`, `extract --features-only` or
`features`: one line naming the path and the fix, exit 2, no traceback; slides committed before it are intact
and byte-equal to a clean run's, the failed slide is neither done nor an error, the lock is released, and the
same command run again (space freed) ends with the store an uninterrupted run makes."""
import contextlib
import csv
import errno
import json
import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import EXAMPLE
from slidestream.engine import config, features, synthetic
from slidestream.engine.errors import StoreError
from slidestream.engine.runner import extract, read_cohort
from slidestream.engine.store import PatchStore, beside
from test_features_only import TINY

LINE = r"^error: \S+: (No space left on device|File too large); free space.* run the same command again to resume\n$"


def _pipeline(d, encoder=None):
    doc = json.loads(EXAMPLE.read_text())
    doc["tiling"]["params"].update(size=256, min_tissue=0.3, max_tiles=6)
    doc["patches"] = {"size": 64, "mode": "random", "per_tile": 16}
    doc["thumbnail"] = {"scale": 16}
    if encoder:
        doc["encoder"] = encoder
    f = d / ("enc.json" if encoder else "small.json")
    f.write_text(json.dumps(doc))
    return f


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """s0 small, s1 large (its staged shard is several times s0's), s2 small; and a clean store of them."""
    d = tmp_path_factory.mktemp("wf")
    rows = []
    for i, size in enumerate([(1536, 1024), (3072, 2048), (1536, 1024)]):
        rows.append([synthetic.make_slide(d / f"s{i}.svs", size=size, label=i % 2, seed=i + 10), f"P{i}", i % 2, 40 + i, ""])
    f = d / "cohort.csv"
    with open(f, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_path", "patient_id", "label", "age", "mpp"])
        w.writerows(rows)
    pipe = _pipeline(d)
    ref = d / "ref"
    s = extract(config.load(pipe), read_cohort(f), ref, progress=False, qa=False)
    assert [x["status"] for x in s["slides"]] == ["done"] * 3
    return d, pipe, f, ref


def _run(*args, fsize=None):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))

    return subprocess.run([sys.executable, "-m", "slidestream.engine", *map(str, args)], capture_output=True,
                          text=True, timeout=300, preexec_fn=limit if fsize else None)


def per_slide(path):
    st = PatchStore.open(path)
    t = st.table()
    return {sid: (st.patches[slice(*rec["rows"])].tobytes(), {c: t[c][slice(*rec["rows"])].tolist() for c in t})
            for sid, rec in st.records().items()}


def _same(a, b):
    pa, pb = per_slide(a), per_slide(b)
    assert sorted(pa) == sorted(pb)
    for sid in pa:
        assert pa[sid][0] == pb[sid][0], sid
        assert json.dumps(pa[sid][1]) == json.dumps(pb[sid][1]), sid


def _check_stopped(r, out, done):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    import re

    assert re.match(LINE, r.stderr.splitlines(keepends=True)[-1]), r.stderr
    st = PatchStore.open(out)
    assert sorted(st.records()) == done and not st.records("errors")  # the failed slide: not done, no error
    assert not beside(out, "lock").exists()


def test_file_size_limit_mid_cohort_stops_and_resumes(cohort, tmp_path):
    """RLIMIT_FSIZE below s1's staged shard (no root needed): s0 committed, s1 stops the run."""
    d, pipe, csvf, ref = cohort
    sizes = {p.parent.parent.parent.name: p.stat().st_size for p in (ref / "patches" / "c").rglob("*") if p.is_file()}
    small = max(sizes["0"], sizes["2"])
    assert sizes["1"] > 2 * small
    out = tmp_path / "store"
    r = _run("extract", pipe, "--slides", csvf, "--out", out, "--json", "--no-qa", fsize=small + 4096)
    _check_stopped(r, out, ["s0"])
    ref_s0 = per_slide(ref)["s0"]
    assert per_slide(out)["s0"] == ref_s0
    r = _run("extract", pipe, "--slides", csvf, "--out", out, "--json", "--no-qa")
    assert r.returncode == 0, r.stderr
    _same(out, ref)
    assert not beside(out, "partial").exists()


def _full_disk_at_second_features_write(monkeypatch):
    """Make the second write into a feature store's ``features`` array fail with ENOSPC; returns the real
    ``zarr.Array.__setitem__`` (to put back: "space freed")."""
    import zarr

    real = zarr.Array.__setitem__
    calls = {"n": 0}

    def setitem(self, key, value):
        if self.path == "features":
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", setitem)
    return real


def _tmpfs(path, size):
    path.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    except OSError:  # no mount command
        pytest.skip("cannot mount a tmpfs here (no mount command)")
    if r.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")


def test_full_disk_mid_cohort_stops_and_resumes(cohort, tmp_path):
    """A real ENOSPC: a tmpfs smaller than the store (root only; skipped elsewhere)."""
    d, pipe, csvf, ref = cohort
    total = sum(p.stat().st_size for p in ref.rglob("*") if p.is_file())
    mnt = tmp_path / "mnt"
    _tmpfs(mnt, f"{total // 2 // 4096 * 4}k")
    try:
        out = mnt / "store"
        r = _run("extract", pipe, "--slides", csvf, "--out", out, "--json", "--no-qa")
        st = PatchStore.open(out)
        done = sorted(st.records())
        assert done != ["s0", "s1", "s2"]
        _check_stopped(r, out, done)
        full = per_slide(ref)
        assert all(per_slide(out)[k] == full[k] for k in done)
        subprocess.run(["mount", "-o", f"remount,size={4 * total // 4096 * 4}k", str(mnt)], check=True)
        r = _run("extract", pipe, "--slides", csvf, "--out", out, "--json", "--no-qa")
        assert r.returncode == 0, r.stderr
        _same(out, ref)
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


@pytest.mark.parametrize("fail_at", ["shard", "column", "record", "commit point"])
def test_failed_commit_leaves_the_store_as_it_was(cohort, tmp_path, monkeypatch, fail_at):
    """ENOSPC at each write of s1's commit (in-process): the store reopens with s0 only, nothing stray in it,
    and the rerun gives the clean run's store."""
    d, pipe, csvf, ref = cohort
    out = tmp_path / "store"
    real_replace = os.replace
    calls = {"n": 0}

    def target(dst):
        dst = str(dst)
        return {"shard": f"{os.sep}patches{os.sep}c{os.sep}" in dst, "column": f"{os.sep}x{os.sep}c{os.sep}" in dst,
                "record": f"{os.sep}records{os.sep}c{os.sep}" in dst, "commit point": dst == str(out / "zarr.json")}[fail_at]

    def replace(src, dst, *a, **k):
        if target(dst):
            calls["n"] += 1
            if calls["n"] == 2:  # s0's commit passes, s1's fails
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    p = config.load(pipe)
    with pytest.raises(StoreError, match=r"No space left on device; free space and run the same command again"):
        extract(p, read_cohort(csvf), out, progress=False, qa=False)
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(PatchStore.open(out).records()) == ["s0"] and not PatchStore.open(out).records("errors")
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    assert not beside(out, "lock").exists()
    extract(p, read_cohort(csvf), out, progress=False, qa=False)
    _same(out, ref)


def test_features_only_full_disk_resumes(cohort, tmp_path, monkeypatch):
    """`extract --features-only`: ENOSPC at s1's feature rows; the store keeps s0 and the rerun ends equal to a
    clean run's."""
    import zarr

    d, _, csvf, _ = cohort
    p = config.load(_pipeline(d, TINY))
    clean = features.extract_features_only(p, read_cohort(csvf), tmp_path / "clean.zarr", progress=False, qa=False)
    assert clean["failed"] == 0
    out = tmp_path / "fo.zarr"
    real = _full_disk_at_second_features_write(monkeypatch)
    with pytest.raises(StoreError, match=rf"^{out}: No space left on device; free space"):
        features.extract_features_only(p, read_cohort(csvf), out, progress=False, qa=False)
    monkeypatch.setattr(zarr.Array, "__setitem__", real)
    info = features.FeatureStore(out).info
    assert list(info["done"]) == ["s0"] and not info["errors"]
    assert not beside(out, "lock").exists()
    s = features.extract_features_only(p, read_cohort(csvf), out, progress=False, qa=False)
    assert s["failed"] == 0
    a, b = features.FeatureStore(tmp_path / "clean.zarr"), features.FeatureStore(out)
    assert a.info["done"] == b.info["done"]
    assert np.array_equal(np.asarray(a.features[:]), np.asarray(b.features[:]))


@contextlib.contextmanager
def file_size_limit(n):
    """Writes past ``n`` bytes fail with EFBIG in this process (no root needed), as on a full disk."""
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def test_failed_checkpoint_save_keeps_the_previous_one(tmp_path):
    """`train` and `mil train` checkpoints: a save that fails is one line naming the file, and leaves the last
    good checkpoint (what a rerun resumes from) and no temporary file. torch's own file writer reported a full
    disk as RuntimeError "unexpected pos" and left a truncated file."""
    import torch

    from slidestream.engine.store import WriteError
    from slidestream.engine.train import _atomic_torch_save

    ckpt = tmp_path / "last.pt"
    _atomic_torch_save({"epoch": 1, "w": torch.zeros(10)}, ckpt)
    with file_size_limit(64 * 1024), pytest.raises(WriteError, match=rf"^{ckpt}: File too large; free space"):
        _atomic_torch_save({"epoch": 2, "w": torch.zeros(100_000)}, ckpt)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_failed_bundle_save_keeps_the_previous_bundle(tmp_path):
    import torch

    from slidestream.engine import bundle
    from slidestream.engine.store import WriteError

    meta = {"arch": "linear", "in_channels": 3, "input_size": 8, "aggregation": "mean"}
    pipe = json.loads(EXAMPLE.read_text())
    bundle.save(tmp_path / "b", torch.nn.Linear(2, 2), pipe, meta)
    before = {f.name: f.read_bytes() for f in (tmp_path / "b").iterdir()}
    with file_size_limit(64 * 1024), pytest.raises(WriteError, match=r"model.safetensors: File too large; free space"):
        bundle.save(tmp_path / "b", torch.nn.Linear(200, 200), pipe, meta)
    assert {f.name: f.read_bytes() for f in (tmp_path / "b").iterdir()} == before


def test_features_full_disk_resumes(cohort, tmp_path, monkeypatch):
    """`features` from a patch store: ENOSPC at the second slide's rows; s0 stays done, the rerun completes."""
    import zarr

    d, _, _, ref = cohort
    p = config.load(_pipeline(d, TINY))
    features.extract_features(p, ref, tmp_path / "clean.zarr", progress=False, log=None)
    out = tmp_path / "f.zarr"
    real = _full_disk_at_second_features_write(monkeypatch)
    with pytest.raises(StoreError, match=rf"^{out}: No space left on device; free space"):
        features.extract_features(p, ref, out, progress=False, log=None)
    monkeypatch.setattr(zarr.Array, "__setitem__", real)
    assert not out.exists()  # a first run is built beside --out, renamed when complete
    assert list(zarr.open_group(str(tmp_path / "f.zarr.partial"), mode="r").attrs[features.ATTR]["done"]) == ["s0"]
    s = features.extract_features(p, ref, out, progress=False, log=None)
    assert s["skipped"] == 1
    a, b = features.FeatureStore(tmp_path / "clean.zarr"), features.FeatureStore(out)
    assert a.info["done"] == b.info["done"]
    assert np.array_equal(np.asarray(a.features[:]), np.asarray(b.features[:]))


def test_gan_checkpoint_on_a_full_disk_keeps_the_previous_one(tmp_path):
    """PG-GAN checkpoints and state: a write past the file size limit is one WriteError; the previous file stays
    and no temporary file is left (safetensors' own writer raised SafetensorError and left its .tmp)."""
    import torch

    from slidestream.engine.store import WriteError
    from slidestream.plugins.augmenters import pggan

    ck, js = tmp_path / "ck.safetensors", tmp_path / "pggan.json"
    pggan._atomic_tensors(ck, {"w": torch.zeros(4)})
    pggan._atomic_json(js, {"nimg": 1})
    old = ck.read_bytes(), js.read_bytes()
    prev, lim = signal.signal(signal.SIGXFSZ, signal.SIG_IGN), resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, lim[1]))
    try:
        with pytest.raises(WriteError, match="free space"):
            pggan._atomic_tensors(ck, {"w": torch.zeros(100_000)})
        with pytest.raises(WriteError, match="free space"):
            pggan._atomic_json(js, {"nimg": 2, "pad": "x" * 10_000})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, lim)
        signal.signal(signal.SIGXFSZ, prev)
    assert (ck.read_bytes(), js.read_bytes()) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.safetensors", "pggan.json"]
