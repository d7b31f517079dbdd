"""Docs stay true to the code: the pipeline schema against the code's defaults, enums and the refusals of the
plugins (tile overlap, Adam betas, GAN resolutions); --help against the code's limits; hookspecs against what
the engine calls; README's pipeline keys against the schema; and the DALI batch read path refusing a tile its
decoder gives up on in one line."""
from __future__ import annotations

import numpy as np
import pytest

from slidestream.engine import config, features, mil, train
from slidestream.engine.errors import ConfigError, SlideError


def _doc(path, value):
    for k in reversed(path):
        value = {k: value}
    return value


def _enums(s, path=()):
    if isinstance(s, dict):
        if "enum" in s and path[-1:] != ("name",):
            yield path, s["enum"]
        for k, v in s.get("properties", {}).items():
            yield from _enums(v, path + (k,))


def test_schema_and_code_defaults_agree():
    """Every default the code fills in is a key of the schema and validates; every schema key has a default."""
    props = config.schema()["properties"]
    bad = [f"{k}={v!r}: {config.validation_errors({k: v})}" for k, v in config.DEFAULTS.items()
           if k not in props or config.validation_errors({k: v})]
    for section, defaults in (("training", train.DEFAULTS), ("features", features.DEFAULTS), ("mil", mil.DEFAULTS)):
        keys = props[section]["properties"]
        bad += [f"{section}.{k} not in the schema" for k in defaults if k not in keys]
        bad += [f"{section}.{k} has no default in the code" for k in keys if k not in defaults]
        bad += [f"{section}.{k}={v!r}: {config.validation_errors({section: {k: v}})}" for k, v in defaults.items()
                if config.validation_errors({section: {k: v}})]
    assert not bad


def test_every_schema_enum_value_is_accepted():
    bad = [f"{'.'.join(p)}={v!r}" for p, values in _enums(config.schema()) for v in values
           if config.validation_errors(_doc(p, v))]
    assert not bad


def test_bundled_examples_validate():
    for name in ("liu2020", "uni_abmil"):
        assert config.validation_errors(config.read_json(config.example(name))) == []


# ---------------------------------------------------------------------------------------------- DALI
def _bad_sampling_slide(path):
    """A 512² JPEG-tiled TIFF whose tile 1 says 'sampling factor 0' (libjpeg: Bogus sampling factors): the
    tile checks pass it, DALI's decoder fails on it."""
    tifffile = pytest.importorskip("tifffile")
    rgb = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    tifffile.imwrite(path, rgb, tile=(256, 256), compression="jpeg", photometric="rgb")
    with tifffile.TiffFile(path) as tf:
        off, cnt = tf.pages[0].dataoffsets[1], tf.pages[0].databytecounts[1]
    data = bytearray(path.read_bytes())
    sof = bytes(data[off:off + cnt]).find(b"\xff\xc0")
    data[off + sof + 11] = 0  # first component's sampling factors
    path.write_bytes(bytes(data))


def test_dali_batch_read_refuses_an_undecodable_tile_in_one_line(tmp_path):
    pytest.importorskip("nvidia.dali")
    from slidestream.engine.runner import iter_patch_batches
    from slidestream.engine.slide import open_slide

    path = tmp_path / "bad.tif"
    _bad_sampling_slide(path)
    slide = open_slide(path, order=["dali"], mpp=0.25)
    try:
        out = slide.read_batch_checked([(0, 0, 256, 256), (256, 0, 256, 256), (0, 256, 256, 256)])
        assert [said == "" for _, said in out] == [True, False, True]
        assert out[1][0] is None and "cannot decode the image data" in out[1][1] and "DALI's cpu decoder gave up" in out[1][1]
        assert out[0][0].shape == (256, 256, 3) and out[2][0].shape == (256, 256, 3)  # the pipeline still decodes

        class Tile:
            def __init__(self, x):
                self.x, self.y, self.w = x, 0, 256

        class Geo:
            factor = 1.0

        pipeline = {"patches": {"size": 64}, "store": {"batch_tiles": 4}}
        with pytest.raises(SlideError, match=r"bad\.tif: corrupt image data in tile 1 .*cannot decode") as e:
            list(iter_patch_batches(pipeline, slide, [Tile(0), Tile(256)], [(0, 0, 0), (1, 0, 0)], Geo()))
        assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
    finally:
        slide.close()


# ---------------------------------------------------------------------------------------------- --help
def test_bench_size_help_states_the_limits_the_code_enforces(cli, tmp_path):
    from slidestream.engine.benchslide import make_slide
    from slidestream.engine.errors import ConfigError

    with pytest.raises(ConfigError, match="multiples of 1024, at least 4096"):
        make_slide(tmp_path / "s.svs", size=(4096, 3072))  # multiples of 1024, as the help said, and refused
    for cmd in (["make-slide"], ["extract"], ["decode"], ["features"]):
        code, out, _ = cli("bench", *cmd, "--help")
        assert code == 0 and "multiples of 1024, at least 4096" in " ".join(out.replace("│", " ").split()), cmd


# ---------------------------------------------------------------------------------------------- hookspecs
def test_hookspecs_document_each_kind_with_an_example_and_what_the_engine_calls():
    """A plugin author reads engine/hookspecs.py and one example: each kind's class names an existing built-in
    example of that kind, documents every field it declares, and the optional members the engine looks up."""
    import dataclasses
    import inspect
    import re
    from pathlib import Path

    from slidestream.engine import hookspecs

    root = Path(hookspecs.__file__).resolve().parents[1]
    folder = {"reader": "readers", "filter": "filters", "tiling": "tiling", "normalization": "normalization",
              "augmenter": "augmenters", "classifier": "classifiers", "fusion": "fusion", "encoder": "encoders",
              "aggregator": "aggregators"}
    classes = {c.kind: c for c in vars(hookspecs).values()
               if inspect.isclass(c) and issubclass(c, hookspecs.Plugin) and c is not hookspecs.Plugin}
    assert sorted(classes) == sorted(hookspecs.KINDS)
    common = {f.name for f in dataclasses.fields(hookspecs.Plugin)}
    bad = []
    for kind, cls in classes.items():
        doc = cls.__doc__ or ""
        m = re.search(r"Example: ``(plugins/[\w/]+\.py)``", doc)
        if not m or not (root / m[1]).is_file() or not m[1].startswith(f"plugins/{folder[kind]}/"):
            bad.append(f"{cls.__name__}: no existing example of its kind ({m and m[1]})")
        bad += [f"{cls.__name__}.{f.name} undocumented" for f in dataclasses.fields(cls)
                if f.name not in common and f"``{f.name}" not in doc]
    source = inspect.getsource(hookspecs)
    # optional members the engine reads with getattr/hasattr (runner, slide, augment, loader, mil)
    bad += [f"optional {name} undocumented" for name in ("read_regions", "decode_device", "BrokenFile", "stages",
                                                         "freeze", "instance_loss") if f"``{name}" not in source]
    assert not bad


def test_pipeline_keys_named_in_readme_and_hookspecs_exist_in_the_schema():
    """`section.key` in README (backticked) or hookspecs names a key the schema accepts (README named a
    `store.checksum` that every pipeline refuses as an unknown key)."""
    import re
    from pathlib import Path

    from slidestream.engine import hookspecs

    root = Path(hookspecs.__file__).resolve().parents[1]
    props = config.schema()["properties"]
    named = set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", (root / "README.md").read_text(encoding="utf-8")))
    named |= set(re.findall(r"``([a-z_]+(?:\.[a-z_]+)+)``", Path(hookspecs.__file__).read_text(encoding="utf-8")))
    bad = []
    for key in sorted(named):
        first, *rest = key.split(".")
        if first not in props or key.endswith(".json"):  # file names (training.json, mil.json)
            continue
        s = props[first]
        for k in rest:
            if k in (s.get("properties") or {}):
                s = s["properties"][k]
            elif "allOf" not in s:  # a plugin reference's params are the plugin's own
                bad.append(key)
                break
            else:
                break
    assert not bad


def test_a_tile_overlap_the_tiling_refuses_is_refused_by_validation():
    """The schema let any overlap >= 0 through; the grid tiling raised 'overlap must be smaller than size' for
    every slide at extraction (exit 1) although `slidestream validate` said valid."""
    tiling = {"name": "grid", "params": {"size": 128, "overlap": 128}}
    assert config.validation_errors({"tiling": tiling}) == [
        "$.tiling.params.overlap: 128 is not smaller than the tiles (128 px, $.tiling.params.size); lower it"]
    assert config.validation_errors({"tiling": {"name": "grid", "params": {"overlap": 1024}}})  # the default size
    assert config.validation_errors({"tiling": {"name": "grid", "params": {"size": 128, "overlap": 127}}}) == []


def test_adam_betas_of_one_are_refused_by_validation_as_torch_refuses_them():
    """pggan's schema let betas up to 1 through; torch.optim.Adam raised 'Invalid beta parameter at index 1: 1.0'
    as a traceback from `slidestream gan train` (the classifier's training.betas already stopped below 1)."""
    gan = {"augmenter": {"name": "pggan", "params": {"betas": [0.0, 1.0]}}}
    assert [e.split(":")[0] for e in config.validation_errors(gan)] == ["$.augmenter.params.betas[1]"]
    assert config.validation_errors({"augmenter": {"name": "pggan", "params": {"betas": [0.0, 0.99]}}}) == []
    assert config.validation_errors({"training": {"betas": [0.9, 1.0]}})


def test_gan_train_refuses_a_start_resolution_above_the_resolution_in_one_line():
    """Both are valid resolutions for the schema; `gan train` ended in pggan's ValueError traceback (the
    refusal is now a ConfigError: one 'error:' line, exit 2)."""
    pytest.importorskip("torch")
    from slidestream.plugins.augmenters.pggan import resolve

    with pytest.raises(ConfigError, match="start_resolution 32 is larger than resolution 16; lower"):
        resolve({"resolution": 16, "start_resolution": 32})
