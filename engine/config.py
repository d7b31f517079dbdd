"""Pipeline files: JSON validated by a JSON Schema (draft 2020-12) assembled from the registered plugins.

A pipeline names plugins and their parameters for each stage; ``schema()`` builds the schema from the
plugins' own fragments, so a wrong parameter of a third-party plugin is caught before any slide is read.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import jsonschema

from . import aggregate, registry
from .errors import ConfigError

SCHEMA_ID = "https://slidestream.dev/schemas/pipeline.json"

SEED_MAX = 2 ** 32 - 1  # torch refuses seeds over 2^64 - 1 (a traceback mid-run); MIL scales its seed per epoch
MAX_PIPELINE_BYTES = 16 << 20  # a pipeline file is a few KiB
MAX_CHUNK_BYTES = 2 ** 30  # one chunk of patches, uncompressed (a writer holds it in memory)

# Sections of a pipeline used by extraction: their hash decides whether a store can be resumed.
EXTRACTION_SECTIONS = ("seed", "magnification", "reader", "thumbnail", "filters", "tiling", "patches", "store")

DEFAULTS: dict[str, Any] = {
    "name": "pipeline",
    "seed": 0,
    "device": "auto",
    "magnification": 10,
    "reader": {"order": None},
    "thumbnail": {"scale": 32},
    "filters": [],
    "tiling": {"name": "grid", "params": {}},
    "patches": {"size": 256, "mode": "random", "per_tile": 8, "min_tissue": 0.0},
    "store": {"codec": "zstd", "level": 1, "chunk": 32, "batch_tiles": 4},
}


def _plugin_ref(kind: str) -> dict[str, Any]:
    """Schema of ``{"name": ..., "params": {...}}`` for one plugin of ``kind``."""
    table = registry.plugins(kind)
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string", "enum": sorted(table), "description": f"a registered {kind} plugin"},
            "params": {"type": "object"},
        },
        "required": ["name"],
        "additionalProperties": False,
        "allOf": [
            {"if": {"properties": {"name": {"const": n}}, "required": ["name"]},
             "then": {"properties": {"params": p.param_schema()}}}
            for n, p in sorted(table.items())
        ],
    }


def _one_or_many(kind: str) -> dict[str, Any]:
    ref = _plugin_ref(kind)
    return {"oneOf": [ref, {"type": "array", "items": ref}]}


def schema() -> dict[str, Any]:
    """The JSON Schema of a pipeline file, with every registered plugin's parameters."""
    num = {"type": "number"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "slidestream pipeline",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "$schema": {"type": "string"},
            "name": {"type": "string", "description": "a label for runs and manifests"},
            "description": {"type": "string"},
            "seed": {"type": "integer", "minimum": 0, "maximum": SEED_MAX, "description": "seed of every random choice"},
            "device": {"enum": ["auto", "cpu", "cuda"], "description": "auto uses a GPU when present"},
            "magnification": {"type": "number", "exclusiveMinimum": 0, "maximum": 200,
                              "description": "objective magnification tiles and patches are cut at (paper: 10); 10x = 1 µm/px"},
            "reader": {
                "type": "object", "additionalProperties": False,
                "properties": {"order": {"type": ["array", "null"], "items": {"enum": sorted(registry.plugins("reader"))},
                                         "description": "readers to try, in order (default: by priority)"},
                               "decoder": {"enum": ["cucim", "dali"],
                                           "description": "tile decoding: cucim (default): cuCIM's reader, one tile per call, its JPEG tiles "
                                                          "decoded by libjpeg-turbo (only those patches touch), or "
                                                          "dali: the JPEG tiles of a batch of regions decoded together "
                                                          "by DALI (nvJPEG on a GPU; other codecs fall back to cuCIM)"}},
            },
            "thumbnail": {
                "type": "object", "additionalProperties": False,
                "properties": {"scale": {"type": "number", "exclusiveMinimum": 1, "maximum": 1024,
                                         "description": "level-0 pixels per thumbnail pixel (DPW: 32)"},
                               "decode": {"enum": ["dct", "resize"],
                                          "description": "dct (default): a JPEG-tiled level decoded at 1/2-1/8 "
                                                         "size by libjpeg's DCT scaling, then resized (5x less CPU, "
                                                         "masks within 0.3 % of pixels); resize: the level decoded "
                                                         "whole and resized bilinearly, as DPW does"}},
            },
            "filters": {"type": "array", "items": _plugin_ref("filter"),
                        "description": "tissue filters, applied in order to the thumbnail"},
            "tiling": _plugin_ref("tiling"),
            "patches": {
                "type": "object", "additionalProperties": False,
                "properties": {
                    "size": {"type": "integer", "minimum": 8, "description": "patch side in pixels (paper: 256)"},
                    "mode": {"enum": ["random", "grid"], "description": "random: per_tile seeded positions; grid: all non-overlapping"},
                    "per_tile": {"type": "integer", "minimum": 1, "maximum": 4096, "description": "patches per tile in random mode"},
                    "min_tissue": {"type": "number", "minimum": 0, "maximum": 1,
                                   "description": "drop patches whose own tissue fraction is lower"},
                },
            },
            "store": {
                "type": "object", "additionalProperties": False,
                "properties": {
                    "codec": {"enum": ["zstd", "lz4", "blosc-zstd", "blosc-lz4", "none"],
                              "description": "patch compression (all lossless)"},
                    "level": {"type": "integer", "minimum": 0, "maximum": 22,
                              "description": "compression level (zstd 1-22, blosc 1-9: higher is taken as 9)"},
                    "chunk": {"type": "integer", "minimum": 1, "maximum": 4096, "description": "patches per stored chunk"},
                    "batch_tiles": {"type": "integer", "minimum": 1,
                                    "description": "tiles read per batch (bounds worker memory)"},
                },
            },
            "extract": {
                "type": "object", "additionalProperties": False,
                "properties": {"slide_timeout_s": {
                    "type": ["number", "null"], "minimum": 0,
                    "description": "seconds one slide may take in `slidestream extract` (default 1800 with --workers > 1; a serial run has a limit only when this is set) before its worker "
                                   "process is stopped and the slide recorded failed; 0 or null: no limit"}},
            },
            # ---- learning (issue: learning and evaluation) ----
            "normalization": {
                "type": "object", "additionalProperties": False,
                "properties": {"gan": _one_or_many("normalization"), "classifier": _one_or_many("normalization")},
                "description": "normalization chains: 'gan' for GAN training input, 'classifier' for the classifier",
            },
            "classifier": _plugin_ref("classifier"),
            "training": {  # defaults: slidestream.engine.train.DEFAULTS (the paper's settings)
                "type": "object", "additionalProperties": False,
                "description": "classifier training (Liu et al. 2020: Adam, batch 16, lr 1e-5, decay 1e-6, 100 epochs)",
                "properties": {
                    "epochs": {"type": "integer", "minimum": 1, "description": "passes over the training split (paper: 100)"},
                    "batch_size": {"type": "integer", "minimum": 1, "description": "patches per step (paper: 16)"},
                    "lr": {"type": "number", "exclusiveMinimum": 0, "description": "Adam learning rate (paper: 1e-5)"},
                    "weight_decay": {"type": "number", "minimum": 0, "description": "Adam L2 weight decay (default 0: none)"},
                    "lr_decay": {"type": "number", "minimum": 0,
                                 "description": "the paper's 'decay': Keras lr / (1 + lr_decay * iterations), per optimizer step (1e-6); 0 = off"},
                    "betas": {"type": "array", "items": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                              "minItems": 2, "maxItems": 2, "description": "Adam betas (paper momentum 0.9)"},
                    "dropout": {"type": "number", "minimum": 0, "maximum": 1, "description": "dropout before the output layer"},
                    "weights": {"type": ["string", "null"], "description": "local ImageNet state_dict (.pth/.safetensors); null = from scratch"},
                    "input_size": {"type": ["integer", "null"], "minimum": 8,
                                   "description": "resize patches to this side (null: the classifier's input size, e.g. 224 for resnet50)"},
                    "augment": {"type": "boolean", "description": "random 90-degree rotations and flips"},
                    "pool_blocks": {"type": "integer", "minimum": 1,
                                    "description": "random store blocks whose rows are shuffled together (global shuffle; 64)"},
                    "seed": {"type": "integer", "minimum": 0, "maximum": SEED_MAX, "description": "initialisation, batch order and dropout seed"},
                    "split": {"type": "object", "additionalProperties": False, "properties": {
                        "ratios": {"type": "array", "items": {"type": "number", "minimum": 0}, "minItems": 3, "maxItems": 3,
                                   "description": "train:val:test patients (paper 6:1:1)"},
                        "seed": {"type": "integer", "minimum": 0, "maximum": SEED_MAX},
                        "kfold": {"type": ["integer", "null"], "minimum": 2, "description": "k-fold instead of ratios"},
                        "fold": {"type": "integer", "minimum": 0, "description": "test fold (val = next fold)"}}},
                    "aggregation": {"type": "object", "additionalProperties": False, "properties": {
                        "method": {"enum": aggregate.methods(), "description": "patch -> patient aggregator plugin (paper: mean)"},
                        "k_frac": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}}},
                    "synthetic": {"type": "integer", "minimum": 0, "description": "synthetic (GAN) patches added to training"},
                    "select": {"enum": ["auc", "loss"], "description": "best epoch: validation patient AUC (ties: loss) or loss"},
                    "threshold": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "description": "P(mutant) cut for sens/spec/acc, in (0, 1) like evaluate --threshold"},
                    "fusion_split": {"enum": ["val", "train"], "description": "patients the fusion is fitted on: "
                                     "val (default, out of sample) or train (in sample); never test"},
                    "fusion_cv": {"type": ["integer", "null"], "minimum": 2, "description": "K: fit the fusion on "
                                  "out-of-fold image scores of all train+val patients (K extra networks, each trained "
                                  "on K-1 folds for the main run's best epoch + 1 epochs); null (default): on fusion_split"},
                    "num_workers": {"type": "integer", "minimum": 0, "maximum": 64,  # each reads a block ahead: 10^5 = 10^5 threads
                                    "description": "loader threads (at most 64)"},
                    "device": {"enum": ["auto", "cpu", "cuda"]},
                },
            },
            "fusion": _plugin_ref("fusion"),
            # ---- augmentation (issue: GAN augmentation) ----
            "augmenter": _plugin_ref("augmenter"),
            # ---- encoders, feature store, attention-MIL (issue 8) ----
            "encoder": _plugin_ref("encoder"),
            "features": {  # defaults: slidestream.engine.features.DEFAULTS
                "type": "object", "additionalProperties": False,
                "description": "feature store written by `slidestream features`",
                "properties": {
                    "batch_size": {"type": "integer", "minimum": 1, "description": "patches per encoder call"},
                    "dtype": {"enum": ["float16", "float32"], "description": "stored feature type (default float16)"},
                    "device": {"enum": ["auto", "cpu", "cuda"]},
                },
            },
            "aggregator": _plugin_ref("aggregator"),
            "mil": {  # defaults: slidestream.engine.mil.DEFAULTS
                "type": "object", "additionalProperties": False,
                "description": "attention-MIL training on the feature store (`slidestream mil train`)",
                "properties": {
                    "epochs": {"type": "integer", "minimum": 1},
                    "lr": {"type": "number", "exclusiveMinimum": 0, "description": "Adam learning rate (default 2e-4)"},
                    "weight_decay": {"type": "number", "minimum": 0},
                    "seed": {"type": "integer", "minimum": 0, "maximum": SEED_MAX},
                    "max_patches": {"type": ["integer", "null"], "minimum": 1,
                                    "description": "random patches per training bag and epoch (null = all)"},
                    "patience": {"type": ["integer", "null"], "minimum": 1,
                                 "description": "early stopping: stop after this many epochs without a better "
                                                "validation epoch (null = train all epochs)"},
                    "threshold": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                    "device": {"enum": ["auto", "cpu", "cuda"]},
                    "schedule": {"enum": ["constant", "cosine"],
                                 "description": "learning rate over the epochs: constant (default) or cosine decay to 0 "
                                                "at mil.epochs"},
                    "class_weight": {"enum": ["balanced", None],
                                     "description": "balanced: weigh the positive bags' loss by n_negative/n_positive "
                                                    "of the training patients (null, default: unweighted)"},
                },
            },
        },
        "$defs": {"number": num},
    }


# "integer" without the floats JSON Schema counts as integers (8.0, 1e3): they reached range() and array shapes
_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=jsonschema.Draft202012Validator
                                          .TYPE_CHECKER.redefine("integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool)))


def validation_errors(doc: Any) -> list[str]:
    """Every problem in a pipeline document, each as ``$.json.path: message``, sorted by path."""
    if not isinstance(doc, dict):  # else the schema error quotes the whole document
        return [f"$: a pipeline is a JSON object ({{...}}), not a {type(doc).__name__}; "
                "see schemas/examples/liu2020.json"]
    deep = _depth(doc)
    if deep > MAX_DEPTH:  # the validators recurse per level (a RecursionError) and quote the whole value
        return [f"$: nested {deep} levels deep (at most {MAX_DEPTH}); a pipeline is a few levels deep: see "
                "schemas/examples/liu2020.json"]
    validator = _Validator(schema())
    out = _not_finite(doc, "$")  # json.loads reads NaN and Infinity, and every bound of the schema lets NaN through
    for err in validator.iter_errors(doc):
        out.extend(_flatten(err))
    if not out:
        out = _too_big_patch(doc)
    return sorted(set(out))


MAX_DEPTH = 32  # nesting of a pipeline document (liu2020.json: 4)


def _depth(doc: Any) -> int:
    """Nesting depth of a JSON value, without recursion."""
    deepest, todo = 0, [(doc, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            todo.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _not_finite(v: Any, path: str) -> list[str]:
    if isinstance(v, float) and not math.isfinite(v):
        return [f"{path}: {v} is not a number; give a finite value"]
    if isinstance(v, dict):
        return [e for k, x in v.items() for e in _not_finite(x, f"{path}.{k}")]
    if isinstance(v, list):
        return [e for i, x in enumerate(v) for e in _not_finite(x, f"{path}[{i}]")]
    return []


def _too_big_patch(doc: dict[str, Any]) -> list[str]:
    """Patches larger than the tiles they are cut from (the tiling's ``size``, its default when not given), and a
    tile ``overlap`` not smaller than the tiles (no grid step: every slide failed at extraction)."""
    tiling, patches = doc.get("tiling"), doc.get("patches")
    params = tiling.get("params") if isinstance(tiling, dict) else None
    if isinstance(params, dict) and isinstance(params.get("overlap"), int):
        plugin = registry.plugins("tiling").get(tiling.get("name"))
        size = params.get("size", (plugin.param_schema().get("properties", {}).get("size", {}) if plugin else {}).get("default"))
        if isinstance(size, int) and params["overlap"] >= size:
            return [f"$.tiling.params.overlap: {params['overlap']} is not smaller than the tiles ({size} px, "
                    "$.tiling.params.size); lower it"]
    if not isinstance(tiling, dict) or not isinstance(patches, dict) or not isinstance(patches.get("size"), int):
        return []
    plugin = registry.plugins("tiling").get(tiling.get("name"))
    props = plugin.param_schema().get("properties", {}) if plugin else {}
    size = (tiling.get("params") or {}).get("size", props.get("size", {}).get("default"))
    if isinstance(size, int) and patches["size"] > size:
        return [f"$.patches.size: {patches['size']} is larger than the tiles ({size} px, $.tiling.params.size); "
                "lower it or raise the tile size"]
    store = doc.get("store") if isinstance(doc.get("store"), dict) else {}
    chunk = store.get("chunk", DEFAULTS["store"]["chunk"])
    if isinstance(chunk, int) and chunk * patches["size"] ** 2 * 3 > MAX_CHUNK_BYTES:  # held in memory while written
        return [f"$.store.chunk: {chunk} patches of {patches['size']}² px make {chunk * patches['size'] ** 2 * 3 / 2**30:.1f} "
                f"GiB per chunk (at most {MAX_CHUNK_BYTES // 2**30} GiB); lower store.chunk"]
    return []


def _flatten(err: jsonschema.ValidationError) -> list[str]:
    if err.validator in ("oneOf", "anyOf") and err.context:
        # report the branch that got furthest (e.g. a single plugin ref rather than "not an array")
        best = jsonschema.exceptions.best_match(err.context)
        return _flatten(best)
    path = err.json_path
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        valid = sorted(err.schema.get("properties") or {})
        return [f"{path}: unknown key {k!r}; " + (registry.nearest(k, valid) or f"valid keys: {', '.join(valid) or 'none'}")
                for k in err.instance if k not in valid]
    if err.validator == "enum" and path.endswith(".name"):
        return [f"{path}: unknown plugin {err.instance!r}; "
                + (registry.nearest(err.instance, err.validator_value) or f"installed: {', '.join(err.validator_value)}")
                + registry.broken_note()]
    hint = registry.nearest(err.instance, err.validator_value) if err.validator == "enum" else None
    return [f"{path}: {err.message}" + (f"; {hint}" if hint else "")]


def not_a_file(p: Path) -> str:
    """Why ``p``, which is no regular file, cannot be read as one (a folder said "not found")."""
    return "is a folder" if p.is_dir() else "is not a regular file (a pipe, device or socket)" if p.exists() else "not found"


def read_json(path: str | Path) -> Any:
    """The JSON document of a pipeline file, or a one-line ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"pipeline file {p} {not_a_file(p)}; give a JSON pipeline such as schemas/examples/liu2020.json")
    try:
        with open(p, "rb") as f:  # a slide given as the pipeline was read whole (a 1 GB file: 2.1 GB RSS, 6 s)
            raw = f.read(MAX_PIPELINE_BYTES + 1)
        if len(raw) > MAX_PIPELINE_BYTES:
            raise ConfigError(f"pipeline file {p} is over {MAX_PIPELINE_BYTES >> 20} MiB, no pipeline (a few KiB of "
                              "JSON); give a JSON pipeline such as schemas/examples/liu2020.json")
        text = raw.decode("utf-8-sig")  # a byte-order mark (Windows editors) is fine
        return json.loads(text, object_pairs_hook=_no_duplicates(p))
    except UnicodeDecodeError as e:
        raise ConfigError(f"pipeline file {p} is not UTF-8 text (byte {e.start}); give a JSON pipeline") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"pipeline file {p}: {_json_slip(text, e)}") from None
    except RecursionError:  # json's decoder recurses per level: [[[[...]]]] ended in a traceback
        raise ConfigError(f"pipeline file {p} nests arrays or objects hundreds of levels deep; a pipeline is a few "
                          "levels deep: see schemas/examples/liu2020.json") from None


def _json_slip(text: str, e: json.JSONDecodeError) -> str:
    """What is wrong at a JSON error, naming the two slips JSON readers of other languages allow."""
    if text.startswith(("//", "/*"), e.pos):
        return f"JSON has no comments ({text[e.pos:e.pos + 2]} at line {e.lineno}); remove them"
    before = text[:e.pos].rstrip()
    if before.endswith(",") and text.startswith(("}", "]"), e.pos):
        return f"trailing comma at line {before.count(chr(10)) + 1} (before {text[e.pos]!r}); remove it"
    return f"not valid JSON: {e.msg.removesuffix(' at')} at line {e.lineno} column {e.colno}"


def _no_duplicates(path: Path):
    """``object_pairs_hook`` refusing a key given twice in one object (``json.loads`` keeps the last silently)."""
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise ConfigError(f"pipeline file {path} gives the key {k!r} twice in one object; keep one")
            out[k] = v
        return out
    return hook


def load(path: str | Path) -> dict[str, Any]:
    """Read and validate a pipeline file; raise ConfigError with the first problem (all via ``validate``)."""
    return parse(read_json(path), source=str(path))


def parse(doc: Any, source: str = "pipeline") -> dict[str, Any]:
    errors = validation_errors(doc)
    if errors:
        more = f" (and {len(errors) - 1} more; run `slidestream validate {source}`)" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: {errors[0]}{more}")
    return with_defaults(doc)


def with_defaults(doc: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(DEFAULTS)
    for k, v in doc.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and "name" not in v:
            out[k] = {**out[k], **v}
        else:
            out[k] = copy.deepcopy(v)
    return out


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()


def extraction_hash(pipeline: dict[str, Any]) -> str:
    """Hash of the sections that determine a patch store's contents."""
    sections = {k: pipeline.get(k) for k in EXTRACTION_SECTIONS}
    if isinstance(sections["reader"], dict) and sections["reader"].get("decoder") == "cucim":  # the default, unnamed
        sections["reader"] = {k: v for k, v in sections["reader"].items() if k != "decoder"}
    if isinstance(sections["thumbnail"], dict):  # "resize" is how every store was made before "decode" existed
        thumb = {k: v for k, v in sections["thumbnail"].items() if k != "decode"}
        decode = sections["thumbnail"].get("decode", "dct")
        sections["thumbnail"] = thumb if decode == "resize" else {**thumb, "decode": decode}
    return digest(sections)


def made_before_dct_thumbnails(old_hash: Any, pipeline: dict[str, Any]) -> str:
    """The refusal for a store whose extraction hash is this pipeline's with ``thumbnail.decode`` "resize": one
    made before the DCT-scaled thumbnail became the default ('' when it is not that)."""
    resize = {**pipeline, "thumbnail": {**(pipeline.get("thumbnail") or {}), "decode": "resize"}}
    if old_hash != extraction_hash(pipeline) and old_hash == extraction_hash(resize):
        return ("was made with thumbnails resized from the whole level, before the DCT-scaled decode became the "
                "default; add \"decode\": \"resize\" to the pipeline's thumbnail section to resume it, or use a new --out")
    return ""


def refs(section: Any) -> list[dict[str, Any]]:
    """A plugin reference or list of them, as a list."""
    if section is None:
        return []
    return list(section) if isinstance(section, list) else [section]


def example(name: str = "liu2020") -> Path:
    """Path of a bundled example pipeline (``schemas/examples/NAME.json``)."""
    from importlib import resources

    return Path(str(resources.files("slidestream.schemas") / "examples" / f"{name}.json"))
