"""Synthetic slides: readable pyramidal Aperio-style TIFFs, deterministic, classes differ in texture not colour."""
import time

import numpy as np
import tifffile

from slidestream.engine.synthetic import make_cohort, make_slide, render


def test_slide_readable_by_openslide_and_tifffile(tmp_path):
    import openslide

    p = make_slide(tmp_path / "a.svs", size=(1024, 768), label=1, seed=2)
    s = openslide.OpenSlide(str(p))
    assert s.level_dimensions == ((1024, 768), (256, 192), (64, 48))
    assert float(s.properties["openslide.mpp-x"]) == 0.25 and s.properties["openslide.objective-power"] == "40"
    with tifffile.TiffFile(p) as t:
        assert t.pages[0].is_tiled and t.pages[0].description.startswith("Aperio")


def test_deterministic_and_fast(tmp_path):
    assert np.array_equal(render((512, 384), 0, seed=5), render((512, 384), 0, seed=5))
    assert not np.array_equal(render((512, 384), 0, seed=5), render((512, 384), 0, seed=6))
    make_slide(tmp_path / "warm.svs", size=(512, 512))
    t = time.perf_counter()
    make_slide(tmp_path / "big.svs", size=(4096, 3072), seed=1)
    assert time.perf_counter() - t < 3.0  # ~0.7 s on 2 cores; loose for busy CI machines


def test_classes_same_colour_different_texture():
    a = [render((512, 512), 1, seed=s, mpp=1.0, full=True).reshape(-1, 3).mean(0) for s in range(6)]
    b = [render((512, 512), 0, seed=s, mpp=1.0, full=True).reshape(-1, 3).mean(0) for s in range(6)]
    # the class means differ by less than the per-slide stain jitter
    assert np.abs(np.mean(a, 0) - np.mean(b, 0)).max() < 2 * np.std(a + b, axis=0).max() + 3


def test_cohort_csv_and_ages(tmp_path):
    import csv

    path = make_cohort(tmp_path, n_patients=6, seed=0, size=(512, 384))
    rows = list(csv.DictReader(open(path)))
    assert [r["patient_id"] for r in rows] == [f"P{i:03d}" for i in range(6)]
    assert sorted(int(r["label"]) for r in rows) == [0, 0, 0, 1, 1, 1]
    assert all(18 <= float(r["age"]) <= 90 for r in rows)
