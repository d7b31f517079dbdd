"""Model bundles: a directory with everything prediction needs, and nothing pickled.

Layout (``BUNDLE/``)::

    bundle.json          arch, classifier params, input size/channels, normalization chain, aggregation,
                         fusion (plugin, params, fitted state, and the patients that fitted it: split,
                         n, sorted ids, ids digest), ``patients`` (the train patients it trained on and the
                         val patients that chose its epoch: per split n, sorted ids, ids digest), threshold,
                         initialisation, best epoch, training summary, package versions, the pipeline's
                         extraction hash, sha256 of every file, and ``hash``
    model.safetensors    the network weights (safetensors: tensors only, no code)
    pipeline.json        the pipeline the bundle was trained with (extraction + learning sections)

``hash`` is the sha256 of the canonical bundle.json without ``hash`` (which lists the files' sha256), so
``load`` detects a changed weight file, pipeline file or bundle.json. A bundle refuses a patch store or a
pipeline whose extraction sections differ from its own (patches cut differently from those it learned).
MIL bundles (``mil.json``, engine/mil.py) are sealed and verified the same way (``seal``, ``verify``).
``patients`` lets ``evaluate --bundle`` refuse a test split holding a patient the model trained or selected on;
bundles written before it have none (evaluate then says it cannot check).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from . import config, registry
from .errors import ConfigError
from .store import atomic_write_bytes, atomic_write_text

FORMAT = 1
FILES = ("model.safetensors", "pipeline.json")


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks (bundle files, local weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _meta_hash(meta: dict[str, Any]) -> str:
    return config.digest({k: v for k, v in meta.items() if k != "hash"})


def patient_set(ids) -> dict[str, Any]:
    """A patient set as a bundle records it: ``n``, sorted ``patients``, ``ids_digest`` (like the fusion's)."""
    from .evaluate import ids_digest

    ids = sorted({str(p) for p in ids})
    return {"n": len(ids), "patients": ids, "ids_digest": ids_digest(ids)}


def seal(directory: Path, meta: dict[str, Any], files: tuple[str, ...]) -> dict[str, Any]:
    """``meta`` plus the sha256 of each of ``files`` (in ``directory``) and ``hash`` over all of it."""
    doc = {**meta, "files": {f: sha256_file(directory / f) for f in files}}
    doc["hash"] = _meta_hash(doc)
    return doc


def verify(directory: Path, meta: dict[str, Any], files: tuple[str, ...], what: str, meta_name: str) -> None:
    """Refuse (one-line ConfigError) a missing file, a file whose sha256 is not the recorded one, or a
    ``meta_name`` that does not match its ``hash``."""
    for f in files:
        if not (directory / f).is_file():
            raise ConfigError(f"{what} {directory} is incomplete: {f} is missing; copy the whole bundle directory")
        if sha256_file(directory / f) != (meta.get("files") or {}).get(f):
            raise ConfigError(f"{what} {directory}: {f} does not match its recorded sha256 (modified or corrupt); "
                              "re-copy or retrain")
    if meta.get("hash") != _meta_hash(meta):
        raise ConfigError(f"{what} {directory}: {meta_name} does not match its hash (edited by hand?); re-copy or retrain")


def save(out: str | Path, model: torch.nn.Module, pipeline: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write a bundle for ``model`` trained with ``pipeline``; ``meta`` must hold at least ``arch``,
    ``in_channels``, ``input_size``, ``aggregation``; ``meta["extraction_hash"]`` (the training store's)
    overrides the hash of ``pipeline``'s extraction sections. Returns the bundle directory."""
    from safetensors.torch import save

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out / "model.safetensors", save(state))  # a full disk: WriteError, the old file kept
    atomic_write_text(out / "pipeline.json", json.dumps(pipeline, indent=1, sort_keys=True))
    doc = seal(out, {"format": FORMAT, "extraction_hash": config.extraction_hash(pipeline), **meta,
                     "pipeline_name": pipeline.get("name"), "versions": registry.distribution_versions()}, FILES)
    atomic_write_text(out / "bundle.json", json.dumps(doc, indent=1, default=str))
    return out


def resolve(path: str | Path) -> Path:
    """The bundle directory at ``path``, or the single bundle inside a ``slidestream train --out`` directory."""
    p = Path(path)
    if (p / "bundle.json").is_file():
        return p
    inner = sorted(d for d in p.glob("*/bundle.json")) if p.is_dir() else []
    if len(inner) == 1:
        return inner[0].parent
    if inner:
        names = ", ".join(str(d.parent) for d in inner)
        raise ConfigError(f"{p} holds several model bundles ({names}); give one of them")
    if (p / "mil.json").is_file():  # `predict` of a MIL bundle
        raise ConfigError(f"{p} is a MIL bundle (mil.json), not a model bundle: score patients with `slidestream mil "
                          f"predict {p} --features FEATS.zarr`")
    raise ConfigError(f"{p} is not a model bundle (no bundle.json); give the --out of `slidestream train` or a bundle in it")


def load_weights(model: torch.nn.Module, path: str | Path, what: str) -> None:
    """Load a safetensors file into ``model`` strictly; one ConfigError line names the file and the first
    missing, unexpected or mis-shaped tensor (or why the file cannot be read)."""
    from safetensors.torch import load_file

    try:
        sd = load_file(str(path))
    except Exception as e:  # noqa: BLE001 (missing, truncated, not safetensors)
        raise ConfigError(f"{what}: cannot read the weights {path} ({type(e).__name__}: {e}); re-copy or retrain") from None
    own = model.state_dict()
    for k, v in own.items():
        if k not in sd:
            raise ConfigError(f"{what}: weights {path} have no tensor {k!r}; re-copy or retrain")
        if tuple(sd[k].shape) != tuple(v.shape):
            raise ConfigError(f"{what}: weights {path}: {k!r} has shape {tuple(sd[k].shape)}, the model needs "
                              f"{tuple(v.shape)}; re-copy or retrain")
    extra = next((k for k in sd if k not in own), None)
    if extra is not None:
        raise ConfigError(f"{what}: weights {path} have a tensor {extra!r} the model does not have; re-copy or retrain")
    model.load_state_dict(sd)


class Bundle:
    """A loaded, verified bundle: ``model`` (eval mode), ``meta`` (bundle.json), ``pipeline``."""

    def __init__(self, path: Path, meta: dict[str, Any], pipeline: dict[str, Any], model: torch.nn.Module):
        self.path, self.meta, self.pipeline, self.model = path, meta, pipeline, model

    def check_extraction(self, extraction_hash: str | None, what: str) -> None:
        """Refuse patches extracted by another pipeline (one-line ConfigError)."""
        own = self.meta["extraction_hash"]
        if extraction_hash and extraction_hash != own:
            raise ConfigError(f"bundle {self.path} was trained on patches of pipeline {self.meta.get('pipeline_name')!r} "
                              f"(extraction hash {own[:12]}) but {what} has extraction hash {extraction_hash[:12]}; "
                              f"extract with the bundle's own {self.path / 'pipeline.json'}")


def read(path: str | Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Verify a bundle's files and hashes without building its network: (directory, bundle.json, pipeline)."""
    p = resolve(path)
    try:
        meta = json.loads((p / "bundle.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"bundle {p}: cannot read bundle.json ({e}); re-copy or retrain") from None
    if not isinstance(meta, dict):  # valid JSON but not the bundle's object (an edit, another file copied over it)
        raise ConfigError(f"bundle {p}: bundle.json holds {json.dumps(meta)[:40]}, not a bundle's JSON object; "
                          "re-copy or retrain")
    verify(p, meta, FILES, "bundle", "bundle.json")
    return p, meta, json.loads((p / "pipeline.json").read_text())


def load(path: str | Path, device: str | torch.device = "cpu", pipeline: dict[str, Any] | None = None) -> Bundle:
    """Load and verify a bundle. ``pipeline``, when given, must have the bundle's extraction sections."""
    p, meta, bpipe = read(path)
    b = Bundle(p, meta, bpipe, None)  # type: ignore[arg-type]
    if pipeline is not None:
        b.check_extraction(config.extraction_hash(pipeline), "the given pipeline")
    plugin = registry.get("classifier", meta["arch"])
    model = plugin.build(num_classes=2, in_channels=int(meta["in_channels"]), dropout=float(meta.get("dropout", 0.5)),
                         **meta.get("classifier_params", {}))
    load_weights(model, p / "model.safetensors", f"bundle {p}")
    b.model = model.to(device).eval()
    return b
