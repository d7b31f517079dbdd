"""A lab's filter plugin, built and installed as its own package, used by a pipeline from the CLI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLE, WSI

PKG = Path(__file__).parent / "plugin_pkg"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(target), str(PKG)], check=True, cwd=build)
    assert (target / "mylab_filters.py").exists()
    return target


def _run(site, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "slidestream.engine", *map(str, args)], capture_output=True, text=True, env=env)


def test_out_of_tree_filter_plugin(site, tmp_path):
    r = _run(site, "plugins", "--kind", "filter")
    assert r.returncode == 0 and "mylab.dark" in r.stdout
    doc = json.loads(EXAMPLE.read_text())
    doc["filters"].append({"name": "mylab.dark", "params": {"max_mean": "dark"}})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    r = _run(site, "validate", bad)
    assert r.returncode == 2 and "$.filters[6].params.max_mean: 'dark' is not of type 'number'" in r.stderr

    doc["filters"][-1]["params"]["max_mean"] = 250  # drops almost everything: proves the plugin ran
    good = tmp_path / "good.json"
    good.write_text(json.dumps(doc))
    r = _run(site, "tissue", WSI / "CMU-1-Small-Region.svs", "--out", tmp_path / "lab", "--pipeline", good)
    assert r.returncode == 0, r.stderr
    assert _run(site, "tissue", WSI / "CMU-1-Small-Region.svs", "--out", tmp_path / "base").returncode == 0
    from PIL import Image

    lab = np.asarray(Image.open(tmp_path / "lab_mask.png")) > 0
    base = np.asarray(Image.open(tmp_path / "base_mask.png")) > 0
    assert lab.sum() < base.sum() and not (lab & ~base).any()
    r = _run(site, "extract", good, "--slides", WSI / "CMU-1-Small-Region.svs", "--out", tmp_path / "st", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["slides"][0]["status"] == "empty"  # the lab filter removed the tissue: recorded, not an error


def test_out_of_tree_encoder_and_aggregator(site, tmp_path):
    """The lab's encoder writes a feature store from the CLI; its aggregator is accepted by the pipeline schema."""
    import zarr

    from slidestream.engine.synthetic import make_store

    r = _run(site, "plugins")
    assert r.returncode == 0 and "mylab.meanrgb" in r.stdout and "mylab.max" in r.stdout
    st = make_store(tmp_path / "s", n_patients=2, per_patient=4, patch=32)
    st.close()  # its writer lock: this (pytest) process stays alive while the features subprocess runs
    pipe = tmp_path / "p.json"
    pipe.write_text(json.dumps({"encoder": {"name": "mylab.meanrgb"}, "training": {"aggregation": {"method": "mylab.max"}}}))
    r = _run(site, "features", pipe, "--store", st.path, "--out", tmp_path / "f.zarr", "--quiet")
    assert r.returncode == 0, r.stderr
    f = np.asarray(zarr.open_group(str(tmp_path / "f.zarr"), mode="r")["features"][:], np.float32)
    x = st.read(0, len(st)).astype(np.float32) / 255  # 32 px patches, antialiased to 16 px: the mean is kept
    np.testing.assert_allclose(f[:, :3], x.mean(axis=(1, 2)), atol=2e-3)
