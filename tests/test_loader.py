"""The streaming patch loader: chunk-aligned, reproducible shuffling, normalization, DALI path."""
import numpy as np
import pytest
import torch

from slidestream.engine.loader import PatchLoader, dali_available, dali_epoch, to_tensor
from slidestream.engine.synthetic import make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("loader") / "s", n_patients=8, per_patient=10, patch=16, chunk=8)


def test_every_row_once_and_reproducible(store):
    rows = np.arange(3, len(store), 2)
    loader = PatchLoader(store, rows, batch_size=7, seed=1, workers=2, buffer_chunks=2)
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


def test_dali_external_source_pipeline_matches_torch_path(store):
    pytest.importorskip("nvidia.dali")
    loader = PatchLoader(store, np.arange(24), batch_size=8, shuffle=False)
    try:
        out = list(dali_epoch(loader, 0, size=None, device_id=None))  # DALI's CPU operators
    except RuntimeError as e:
        pytest.skip(f"DALI CPU pipeline unavailable here: {e}")
    ref = list(loader.tensors(0, size=None, device="cpu"))
    assert len(out) == len(ref)
    for (x, y, r), (xr, yr, rr) in zip(out, ref):
        assert np.array_equal(r, rr) and torch.equal(y, yr)
        assert torch.allclose(x, xr, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dali_gpu_path(store):
    assert dali_available()
    loader = PatchLoader(store, np.arange(24), batch_size=8, shuffle=False)
    x, y, r = next(loader.tensors(0, size=32, device="cuda"))
    assert x.is_cuda and x.shape == (8, 3, 32, 32)
    ref = to_tensor(store.patches[r[0]: r[-1] + 1], 32, "cuda")
    assert torch.allclose(x, ref, atol=0.1)
