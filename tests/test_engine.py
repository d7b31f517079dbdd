"""Plugin registry, pipeline schema and validation, and the small CLI commands."""
import json

import pytest

from conftest import EXAMPLE
from slidestream.engine import config, registry
from slidestream.engine.errors import ConfigError, UnknownPlugin
from slidestream.engine.hookspecs import KINDS


def test_builtins_register_through_entry_points():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="slidestream.plugins")}
    assert {"readers", "filters", "tiling"} <= names
    assert {"cucim", "openslide", "tifffile", "image"} <= set(registry.plugins("reader"))
    assert "grid" in registry.plugins("tiling")
    for name in ["dpw.green_channel", "dpw.grays", "dpw.red_pen", "dpw.green_pen", "dpw.blue_pen", "dpw.small_objects", "otsu"]:
        assert name in registry.plugins("filter")
    for kind in KINDS:
        for name, p in registry.plugins(kind).items():
            assert p.kind == kind and p.name == name


def test_unknown_plugin_lists_installed():
    with pytest.raises(UnknownPlugin, match="installed: .*dpw.grays"):
        registry.get("filter", "nope")


def test_example_pipeline_is_valid_and_paper_faithful():
    p = config.load(EXAMPLE)
    assert p["magnification"] == 10 and p["thumbnail"]["scale"] == 32
    t = p["tiling"]["params"]
    assert (t["size"], t["min_tissue"], t["max_tiles"], t["scorer"]) == (1024, 0.5, 50, "tissue")
    assert p["patches"]["size"] == 256


def test_validation_reports_json_paths():
    doc = json.loads(EXAMPLE.read_text())
    doc["filters"][5]["params"]["min_size"] = -3
    doc["filters"][2] = {"name": "dpw.red_pen", "params": {"bogus": 1}}
    doc["tiling"]["params"]["size"] = "big"
    doc["patches"]["mode"] = "everywhere"
    errs = config.validation_errors(doc)
    joined = "\n".join(errs)
    assert "$.filters[5].params.min_size: -3 is less than the minimum of 0" in joined
    assert "$.filters[2].params" in joined and "bogus" in joined
    assert "$.tiling.params.size: 'big' is not of type 'integer'" in joined
    assert "$.patches.mode" in joined
    doc2 = json.loads(EXAMPLE.read_text())
    doc2["filters"][0]["name"] = "mylab.missing"
    assert any(e.startswith("$.filters[0].name: unknown plugin 'mylab.missing'") for e in config.validation_errors(doc2))


def test_load_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        config.load(bad)
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "missing.json")


def test_cli_validate_and_schema(cli, tmp_path):
    code, out, _ = cli("validate", EXAMPLE)
    assert code == 0 and "valid" in out
    doc = json.loads(EXAMPLE.read_text())
    doc["filters"][5]["params"]["min_size"] = -3
    f = tmp_path / "p.json"
    f.write_text(json.dumps(doc))
    code, out, err = cli("validate", f)
    assert code == 2
    assert "$.filters[5].params.min_size: -3 is less than the minimum of 0" in err
    code, out, _ = cli("schema")
    s = json.loads(out)
    assert s["$schema"].endswith("2020-12/schema")
    assert "dpw.small_objects" in json.dumps(s["properties"]["filters"])
    code, out, _ = cli("plugins", "--kind", "reader")
    assert code == 0 and "cucim" in out and "openslide" in out


def test_extraction_hash_ignores_learning_sections():
    p = config.load(EXAMPLE)
    q = dict(p, training={"epochs": 3})
    assert config.extraction_hash(p) == config.extraction_hash(q)
    r = dict(p, patches={**p["patches"], "size": 128})
    assert config.extraction_hash(p) != config.extraction_hash(r)
