"""The feature store's header (its commit point) is not rewritten per slide: the cost grew with the store
(O(slides²) in all); a run stopped by an error still keeps the slides it encoded."""
import pytest
import zarr

from slidestream.engine import features
from slidestream.engine.errors import ConfigError
from slidestream.engine.store import beside
from test_mil import coords_store
from test_redteam_feat7 import _pipe, tiny_encoder  # noqa: F401 (the rt7.tiny encoder, registered per module)


@pytest.fixture()
def header_writes(monkeypatch):
    from zarr.core.attributes import Attributes

    writes, put = [], Attributes.__setitem__

    def counting(self, key, value):
        if key == features.ATTR:
            writes.append(len(value.get("done") or {}))
        return put(self, key, value)

    monkeypatch.setattr(Attributes, "__setitem__", counting)
    return writes


def test_header_written_a_few_times_not_once_per_slide(tmp_path, header_writes):
    st = coords_store(tmp_path / "store", n_patients=40, per=2)
    out = tmp_path / "f.zarr"
    features.extract_features(_pipe(), st.path, out, progress=False, log=None)
    assert len(header_writes) <= 4, header_writes  # created, final (+ once a second): was 41 (one per slide)
    g = zarr.open_group(str(out), mode="r")
    assert len(g.attrs[features.ATTR]["done"]) == 40 and features.FeatureStore(out).info["done"]


def test_an_error_mid_run_keeps_the_slides_encoded_before_it(tmp_path, header_writes):
    st = coords_store(tmp_path / "store", n_patients=4, per=4)  # S1, S3 bright: NaN features
    out = tmp_path / "f.zarr"
    with pytest.raises(ConfigError, match="'S1'"):
        features.extract_features(_pipe(bad="nan"), st.path, out, progress=False, log=None)
    g = zarr.open_group(str(beside(out, "partial")), mode="r")
    assert sorted(g.attrs[features.ATTR]["done"]) == ["S0"]  # written on the way out, not lost with the error
