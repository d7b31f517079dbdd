"""The project's benchmark slide (engine/benchslide.py), DALI tile decoding (engine/dali_decode.py) and
`slidestream bench` run from outside the source tree."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slidestream.engine.benchslide import make_slide
from slidestream.engine.dali_decode import DaliTiles, NotJpegTiled
from slidestream.engine.errors import ConfigError

WSI = Path(__file__).parent / "data" / "wsi"


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "bench.svs"
    make_slide(path, (8192, 4096), seed=3)
    return path


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------- bench slide
def test_bench_slide_is_deterministic(slide, tmp_path):
    (tmp_path / "a").mkdir()
    again, other = tmp_path / "a" / "bench.svs", tmp_path / "bench.svs"  # the file name is in the metadata
    make_slide(again, (8192, 4096), seed=3)
    make_slide(other, (8192, 4096), seed=4)
    assert _sha(again) == _sha(slide)
    assert _sha(other) != _sha(slide)


def test_bench_slide_metadata_for_cucim_and_openslide(slide):
    import openslide

    from slidestream.engine.slide import open_slide

    want = [(8192, 4096), (2048, 1024), (512, 256), (128, 64)]
    with openslide.OpenSlide(str(slide)) as s:
        assert s.level_dimensions == tuple(want)
        assert float(s.properties["openslide.mpp-x"]) == 0.25
        assert s.properties["openslide.objective-power"] == "40"
    s = open_slide(slide, order=["cucim"])
    try:
        assert s.reader_name == "cucim" and s.mpp == 0.25
        assert [tuple(d) for d in s.reader.level_dimensions] == want
    finally:
        s.close()


def test_bench_slide_has_tissue_pen_and_debris_for_dpw(slide):
    """DPW on the 1/64 level: tissue near the design's fraction, pen ink removed by the pen filters,
    debris specks removed by small_objects."""
    import tifffile

    from slidestream.plugins.filters import dpw

    rgb = tifffile.TiffFile(slide).series[0].levels[2].asarray()  # 1/16: 512 x 256
    ones = np.ones(rgb.shape[:2], bool)
    colour = dpw.green_channel(rgb, ones) & dpw.grays(rgb, ones)
    pens = ~(dpw.red_pen(rgb, ones) & dpw.green_pen(rgb, ones) & dpw.blue_pen(rgb, ones))
    assert 0.4 < colour.mean() < 0.8, colour.mean()  # tissue (plus pen) at ~0.62 of the slide
    assert pens.mean() > 0.01, "pen strokes are found by DPW's pen filters"
    for c in ("red", "green", "blue"):
        assert (~getattr(dpw, f"{c}_pen")(rgb, ones)).sum() > 20, c
    bare = colour & ~pens
    cleaned = dpw.small_objects(rgb, bare, min_size=30)
    assert 0 < (bare & ~cleaned).sum(), "debris specks are small objects"


def test_bench_slide_bad_size_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="multiples of 1024"):
        make_slide(tmp_path / "x.svs", (5000, 4096))


# ------------------------------------------------------------------------------- DALI decode
def _regions(dims, downsamples, rng, n=4):
    out = []
    for level, ((W, H), ds) in enumerate(zip(dims, downsamples)):
        for k in range(n):
            w, h = int(rng.integers(16, min(W, 700))), int(rng.integers(16, min(H, 700)))
            x, y = (W - w, H - h) if k == 0 else (int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1)))
            out.append(((int(round(x * ds)), int(round(y * ds))), level, (w, h)))  # k=0: at the level's corner
    return out


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "bench"])
def test_dali_cpu_equals_cucim(name, slide):
    """Stated tolerance: +-2 grey levels per channel (both are libjpeg-turbo here; measured: 0)."""
    from cucim import CuImage

    path = slide if name == "bench" else WSI / name
    img = CuImage(str(path))
    with DaliTiles(path, device="cpu", batch=8) as d:
        assert d.level_dimensions == [tuple(v) for v in img.resolutions["level_dimensions"]]
        reqs = _regions(d.level_dimensions, d.level_downsamples, np.random.default_rng(0))
        got = d.read_regions(reqs)
    for (loc, level, size), a in zip(reqs, got):
        b = np.asarray(img.read_region(location=loc, size=size, level=level))[..., :3]
        assert a.shape == b.shape and a.dtype == np.uint8
        assert np.abs(a.astype(int) - b).max() <= 2, (name, loc, level, size)


def test_dali_rgb_jpeg_needs_the_adobe_marker(monkeypatch):
    """Aperio's JPEG/RGB tiles decode to false colours without the APP14 marker (guards the splice)."""
    from cucim import CuImage

    from slidestream.engine import dali_decode

    path = WSI / "CMU-1-Small-Region.svs"
    monkeypatch.setattr(dali_decode, "ADOBE_RGB", b"")
    with DaliTiles(path, batch=4) as d:
        a = d.read_region((0, 0), 0, (240, 240))
    b = np.asarray(CuImage(str(path)).read_region(location=(0, 0), size=(240, 240), level=0))[..., :3]
    assert np.abs(a.astype(int) - b).max() > 20


def test_dali_refuses_jpeg2000_so_cucim_reads_it():
    with pytest.raises(NotJpegTiled, match="JP2000.*use cuCIM"):
        DaliTiles(WSI / "tcga-cr-7395-01a-01-ts1.svs")


@pytest.mark.gpu
def test_dali_mixed_equals_cpu_on_the_gpu(slide):
    import cupy

    with DaliTiles(slide, device="cpu") as c, DaliTiles(slide, device="mixed") as g:
        reqs = _regions(c.level_dimensions, c.level_downsamples, np.random.default_rng(1))
        on_dev = g.read_regions(reqs, keep_on_device=True)
        assert all(isinstance(a, cupy.ndarray) for a in on_dev)
        for a, b in zip(c.read_regions(reqs), on_dev):
            # measured on an H200: max 3 with jpeg_fancy_upsampling (IDCT rounding), 14 without it
            assert np.abs(a.astype(int) - cupy.asnumpy(b)).max() <= 4


def test_dali_gpu_refuses_rgb_coded_jpeg_tiles(slide):
    """nvJPEG decodes RGB-coded tiles (APP14 transform 0) as YCbCr: mean 51 grey levels off on the H200.
    Refused at open, before any GPU work, so this runs without a GPU; YCbCr tiles are accepted."""
    with pytest.raises(NotJpegTiled, match="RGB-coded"):
        DaliTiles(WSI / "CMU-1-Small-Region.svs", device="mixed")
    DaliTiles(slide, device="mixed").close()
    DaliTiles(WSI / "CMU-1-Small-Region.svs", device="cpu").close()  # libjpeg-turbo honours the marker


@pytest.mark.parametrize("broken", [False, True])
def test_dali_reader_checks_its_gpu_decode_against_the_cpu(slide, monkeypatch, broken):
    """The DALI reader's once-per-slide check: other pixels than cuCIM's CPU decode send the slide on to the
    next reader (imitated on the CPU backend by corrupting what DALI returns)."""
    from slidestream.plugins.readers.dali import DaliSlide

    r = DaliSlide(str(slide), device="cpu")
    if broken:
        real = DaliSlide.read_region
        monkeypatch.setattr(DaliSlide, "read_region", lambda self, *a: 255 - real(self, *a))
    try:
        if broken:
            with pytest.raises(ValueError, match="differs from the CPU decode"):
                r._check_against_cpu()
        else:
            r._check_against_cpu()
    finally:
        r.close()


# ------------------------------------------------------------------------------- slidestream bench
def _cli(args, cwd, env_extra=None):
    exe = Path(sys.executable).with_name("slidestream")
    env = {**os.environ, "PYTHONPATH": "", **(env_extra or {})}
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_bench_extract_json_from_outside_the_source_tree(slide, tmp_path):
    r = _cli(["bench", "extract", str(slide), "--json", "--repeat", "1", "--threads", "1"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["bench"] == "extract" and out["device"] == "cpu"
    assert out["patches"] > 0 and out["tiles"] > 0
    for k in ("tiles_per_s", "patches_per_s", "decode_mp_per_s", "engine_over_decode", "peak_rss_mb"):
        assert out[k] > 0, k


def test_bench_make_slide_and_errors(tmp_path):
    r = _cli(["bench", "make-slide", "s.svs", "--size", "4096", "4096", "--json"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["size"] == [4096, 4096] and (tmp_path / "s.svs").stat().st_size > 0
    r = _cli(["bench", "make-slide", "t.svs", "--size", "4000", "4096"], cwd=tmp_path)
    assert r.returncode != 0 and "multiples of 1024" in r.stderr and "Traceback" not in r.stderr
    r = _cli(["bench", "extract", "--device", "tpu"], cwd=tmp_path)
    assert r.returncode != 0 and "use cpu or cuda" in r.stderr and "Traceback" not in r.stderr


def test_gpu_check_script_dry_run_on_cpu(tmp_path):
    """bench/gpu_check.sh --cpu-dry-run: gpu tests run (and skip), a benchmark runs, cuda steps are
    recorded as skipped, one JSON file. (The full dry run, all benchmarks, takes ~2.5 min here.)"""
    script = Path(__file__).parent.parent / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {**os.environ, "OUT": str(tmp_path), "GPU_CHECK_TESTS": str(Path(__file__).parent / "test_bench.py"),
           "GPU_CHECK_ONLY": "features", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", str(script), "--cpu-dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "gpu_check.json").read_text())
    s = out["steps"]
    assert out["dry_run"] is True
    assert s["gpu_tests"]["exit"] == 0 and s["gpu_tests"]["skipped"] >= 1 and not s["gpu_tests"]["failed"]
    assert s["features_cpu"]["bench"] == "features"
    assert s["extract_cpu"] == {"skipped": "not in GPU_CHECK_ONLY"}
    for b in ("extract", "decode", "train", "gan", "features"):
        assert "skipped" in s[f"{b}_cuda"], b


def test_dali_reader_extracts_the_same_patches_as_cucim(slide):
    """The opt-in `dali` reader (reader.order: ["dali", ...]): same thumbnail and patches as cuCIM (+-2)."""
    from slidestream.engine import config
    from slidestream.engine.runner import extract_slide_patches
    from slidestream.engine.slide import open_slide

    p = config.load(config.example("liu2020"))
    got = {}
    for name in ("cucim", "dali"):
        p["reader"]["order"] = [name]
        patches, _, thumb, tiles, _ = extract_slide_patches(p, str(slide), threads=2)
        got[name] = patches, thumb
    assert len(got["dali"][0]) == len(got["cucim"][0]) > 0
    for a, b in zip(got["dali"], got["cucim"]):
        assert np.abs(a.astype(int) - b).max() <= 2
    s = open_slide(slide, order=["dali"])
    assert s.reader_name == "dali"
    s.close()
    s = open_slide(WSI / "tcga-cr-7395-01a-01-ts1.svs", order=["dali", "cucim"], mpp=0.5)  # JPEG 2000
    assert s.reader_name == "cucim"
    s.close()


@pytest.mark.parametrize("name", ["bench", "CMU-1-Small-Region.svs"])
def test_decoder_dali_reads_batches_and_equals_cucim(slide, name, monkeypatch):
    """`reader.decoder: dali`: the DALI reader is tried first and decodes each batch of tiles in one
    ``read_regions`` call; its patches and thumbnail equal cuCIM's within +-2 grey levels."""
    from slidestream.engine import config
    from slidestream.engine.runner import extract_slide_patches
    from slidestream.plugins.readers.dali import DaliSlide

    path = slide if name == "bench" else WSI / name
    p = config.load(config.example("liu2020"))
    if name != "bench":  # a small real slide (at 0.5 um/px: 20x, no resize): smaller tiles so that several are kept
        p["magnification"], p["tiling"]["params"]["size"], p["patches"]["size"] = 20, 256, 64
        p["tiling"]["params"]["min_tissue"] = 0.2
    calls = []
    real = DaliSlide.read_regions
    monkeypatch.setattr(DaliSlide, "read_regions", lambda self, reqs: calls.append(len(reqs)) or real(self, reqs))
    got = {}
    for decoder in ("cucim", "dali"):
        p["reader"]["decoder"] = decoder
        assert config.validation_errors(p) == []
        patches, table, thumb, tiles, _ = extract_slide_patches(p, str(path), None if name == "bench" else 0.5, 2)
        got[decoder] = patches, thumb, table
    assert calls and max(calls) > 1  # batches of tiles, not one tile per call
    assert sum(calls) == len(set(got["dali"][2]["tile_id"].tolist()))
    assert len(got["dali"][0]) == len(got["cucim"][0]) > 0
    for a, b in zip(got["dali"][:2], got["cucim"][:2]):
        assert np.abs(a.astype(int) - b).max() <= 2


def test_decoder_in_the_pipeline_schema_and_hash():
    from slidestream.engine import config
    from slidestream.engine.runner import readers_for

    p = config.load(config.example("liu2020"))
    h = config.extraction_hash(p)
    assert readers_for(p) is None
    p["reader"]["decoder"] = "cucim"
    assert config.extraction_hash(p) == h  # the default, named or not: the same store
    p["reader"]["decoder"] = "dali"
    assert config.extraction_hash(p) != h and readers_for(p)[0] == "dali"
    p["reader"]["decoder"] = "nvjpeg"
    assert config.validation_errors(p)


def test_dali_sees_every_tiled_level_of_an_svs(tmp_path):
    """Tiled pyramid levels that tifffile files under another series (an SVS's page 1, which it takes for
    the thumbnail) are levels for DALI too, as for cuCIM: else the DALI reader is refused on such slides."""
    import tifffile

    from slidestream.engine.dali_decode import jpeg_levels
    from slidestream.engine.slide import open_slide

    img = np.random.default_rng(0).integers(0, 255, (1024, 1536, 3), np.uint8)
    path = tmp_path / "s.svs"
    with tifffile.TiffWriter(path) as tw:
        for k, ds in enumerate((1, 4, 16)):
            tw.write(img[::ds, ::ds], tile=(256, 256) if ds < 16 else (64, 64), compression="jpeg", photometric="rgb",
                     description="Aperio Image Library v12\n1536x1024 |AppMag = 40|MPP = 0.25" if k == 0 else "")
    assert [(lv.width, lv.height) for lv in jpeg_levels(path)] == [(1536, 1024), (384, 256), (96, 64)]
    s = open_slide(path, order=["dali", "cucim"])
    try:
        assert s.reader_name == "dali" and len(s.reader.level_dimensions) == 3
    finally:
        s.close()


def test_bench_train_reuses_its_store_in_the_same_work_folder(tmp_path):
    """`train_bench(work=...)` called twice: the second call reuses the store the first made (it looked for a
    format-1 manifest.json, so it tried to make the store again over the existing one)."""
    from slidestream.engine.bench import train_bench

    for _ in range(2):
        r = train_bench("cpu", ("small_cnn",), size=32, batch=4, steps=1, work=str(tmp_path))
        assert r["bench"] == "train" and r["device"] == "cpu"


def test_bench_extract_of_failed_slides_is_an_error_not_a_figure(tmp_path):
    """On the H200 every slide failed (cuFile) and `bench extract --device cuda` still printed 0 tiles at
    1.6 s as a result; a benchmark of slides that failed must fail."""
    from slidestream.engine.bench import extract_bench
    from slidestream.engine.errors import SlideError

    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00" + bytes(5000))
    with pytest.raises(SlideError, match=r"1 of 1 slides failed \(broken"):
        extract_bench([str(bad)], repeat=1, threads=1)
