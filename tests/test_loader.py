"""The patch loader: block Dataset + global sampler + pooled shuffle, reproducible order, resize, DALI path."""
import numpy as np
import pytest
import torch

from torch.utils.data import DataLoader

from slidestream.engine.loader import (BlockDataset, BlockSampler, PatchLoader, dali_available, dali_epoch,
                                        pool_batches, to_tensor)
from slidestream.engine.synthetic import make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("loader") / "s", n_patients=8, per_patient=10, patch=16, chunk=8)


def test_every_row_once_and_reproducible(store):
    rows = np.arange(3, len(store), 2)
    loader = PatchLoader(store, rows, batch_size=7, seed=1, workers=2, pool_blocks=2)
    seen = np.concatenate([r for _, _, r in loader.epoch(0)])
    assert sorted(seen.tolist()) == rows.tolist()
    again = np.concatenate([r for _, _, r in loader.epoch(0)])
    other = np.concatenate([r for _, _, r in loader.epoch(1)])
    assert np.array_equal(seen, again) and not np.array_equal(seen, other)
    assert len(list(loader.epoch(0))) == len(loader)


def test_batches_match_store_rows_and_labels(store):
    loader = PatchLoader(store, np.arange(len(store)), batch_size=16, shuffle=False)
    labels = store.column("label")
    for x, y, r in loader.epoch(0):
        assert np.array_equal(x, store.patches[r[0]: r[-1] + 1]) and np.array_equal(y, labels[r])


def test_chain_and_tensor_conversion(store):
    gray = [(lambda b: b.mean(axis=3, keepdims=True).astype(np.uint8), {})]
    loader = PatchLoader(store, np.arange(20), batch_size=8, chain=gray, shuffle=False)
    x, y, _ = next(loader.tensors(0, size=24))
    assert x.shape == (8, 1, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64


@pytest.fixture(scope="module")
def many_slides(tmp_path_factory):
    # 48 slides of 16 patches, 8 per block: 2 blocks per slide, 96 blocks
    return make_store(tmp_path_factory.mktemp("many") / "s", n_patients=48, per_patient=16, patch=8, chunk=8)


def _slides_per_batch(store, loader) -> float:
    slide = store.column("slide_id")
    return float(np.mean([len(set(slide[r])) for _, _, r in loader.epoch(0) if len(r) == 16]))


def test_global_shuffle_mixes_many_slides_per_batch(many_slides):
    rows = np.arange(len(many_slides))
    wide = _slides_per_batch(many_slides, PatchLoader(many_slides, rows, 16, seed=0, pool_blocks=64))
    local = _slides_per_batch(many_slides, PatchLoader(many_slides, rows, 16, seed=0, pool_blocks=8))
    # 16 draws from 64 blocks of 96 (2 per slide): ~14 distinct slides expected; from 8 blocks at most 8
    assert wide >= 12 and local <= 8, (wide, local)


def test_dataset_and_sampler_work_with_torch_dataloader(many_slides):
    rows = np.arange(5, len(many_slides), 3)
    ds = BlockDataset(many_slides, rows)
    sampler = BlockSampler(ds, seed=3)
    blocks = DataLoader(ds, sampler=sampler, batch_size=None, num_workers=2)  # worker processes reopen the store
    ref = PatchLoader(many_slides, rows, 16, seed=3, workers=2)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        got = list(pool_batches(blocks, 16, rng=np.random.default_rng([3, epoch])))
        want = list(ref.epoch(epoch))
        assert len(got) == len(want)
        for (x, y, r), (xr, yr, rr) in zip(got, want):
            assert np.array_equal(r, rr) and np.array_equal(x, xr) and np.array_equal(y, yr)
    assert sorted(np.concatenate([r for _, _, r in got]).tolist()) == rows.tolist()


def test_cpu_resize_is_antialiased_bilinear(store):
    x = store.read(0, 8)
    for size in (12, 24):  # down and up
        t = to_tensor(x, size)
        ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255, size=(size, size),
                                              mode="bilinear", antialias=True)
        assert t.shape == (8, 3, size, size) and torch.allclose(t, (ref - 0.45) / 0.225, atol=1e-5)


@pytest.mark.parametrize("size", [None, 8, 12, 24])
def test_dali_external_source_pipeline_matches_torch_path(store, size):
    pytest.importorskip("nvidia.dali")
    loader = PatchLoader(store, np.arange(24), batch_size=8, shuffle=False)
    try:
        out = list(dali_epoch(loader, 0, size=size, device_id=None))  # DALI's CPU operators
    except RuntimeError as e:
        pytest.skip(f"DALI CPU pipeline unavailable here: {e}")
    ref = list(loader.tensors(0, size=size, device="cpu"))
    assert len(out) == len(ref)
    for (x, y, r), (xr, yr, rr) in zip(out, ref):
        assert np.array_equal(r, rr) and torch.equal(y, yr)
        assert x.shape == xr.shape
        d = (x - xr).abs()  # one gray level is 1 / 255 / 0.225 = 0.017 standardised units
        # identical inside; when shrinking, the two libraries pad the one-pixel border differently
        assert d[..., 1:-1, 1:-1].max() < 0.005 and d.max() < 0.2 and d.mean() < 0.01


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("size", [12, 32])
def test_dali_gpu_path(store, size):
    assert dali_available()
    loader = PatchLoader(store, np.arange(24), batch_size=8, shuffle=False)
    x, y, r = next(loader.tensors(0, size=size, device="cuda"))
    assert x.is_cuda and x.shape == (8, 3, size, size)
    ref = to_tensor(store.patches[r[0]: r[-1] + 1], size, "cpu")  # the CPU path's tensor
    d = (x.cpu() - ref).abs()  # as on DALI's CPU operators (above): identical but for the border when shrinking
    assert d[..., 1:-1, 1:-1].max() < 0.005 and d.max() < 0.2 and d.mean() < 0.01
