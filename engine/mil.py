"""Attention-MIL training on a feature store: one bag of patch features per patient -> patient probability.

``slidestream mil train PIPELINE --features FEATS.zarr --out OUT`` trains the pipeline's ``aggregator`` (an
aggregator plugin with ``input: "features"``: ``abmil``, ``clam_sb``, or a third-party one) on the patients
of the feature store:

* Splits: the patch store's ``split`` column (``slidestream split``), read per patient; synthetic patches
  are never in a bag. With ``--folds K``: patient-level stratified K-fold cross-validation instead (fold i
  is test, fold i+1 validation, the rest train; ``OUT/fold<i>/``), reported as mean ± sd test AUC in
  ``OUT/cv.json``/``cv.md`` (sd: the sample sd over folds, ddof 1, ``sd_ddof``), as the MIL literature reports.
* Training: features standardized per dimension with the training patches' mean/sd (kept in the bundle);
  Adam, one bag per step (optionally ``max_patches`` random patches of it), binary cross-entropy
  of the bag logit (+ the model's ``instance_loss`` if it has one, e.g. CLAM's). The order of bags and the
  patch subsets depend only on (seed, epoch).
* Model selection: after each epoch the validation patients are scored; the best epoch has the highest
  validation AUC, ties broken by the lower validation loss (loss alone when validation has one class).
  Early stopping (``mil.patience``: P): training stops once P epochs have passed without a better one (a
  rerun of a stopped run stops again; the epochs it trained are those of an uninterrupted run).
* Resume: ``OUT/checkpoint.pt`` (model, optimizer, history, best state; tensors only, ``weights_only=True``)
  is replaced atomically after every epoch; rerunning the same command continues from the last epoch
  (on other features, patients or labels it is refused: another run).
* Output: a bundle ``OUT/model.safetensors`` + ``OUT/mil.json`` (aggregator, params, input dim, the encoder's
  name/params and weights sha256, the features' extraction hash, best epoch, metrics, the train and val patients (n,
  sorted ids, digest), the pipeline's fusion fitted on ``training.fusion_split`` (val by default, or train;
  ``training.fusion_cv`` is refused: no fold networks) and the Youden thresholds on val, the
  sha256 of model.safetensors and ``hash``, checked on load as a model bundle's), ``history.json``, ``predictions.csv``
  (patient_id,label,age,split,image_prob: what ``slidestream evaluate`` reads, so evaluation and age fusion
  work unchanged) and ``attention.npy`` (float32, one weight per feature-store row, NaN outside bags).
* Prediction (``slidestream mil predict``, :func:`predict`): the same scoring of another feature store of the same
  encoder and extraction, into the same CSV.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import registry
from .device import resolve_device
from .errors import ConfigError
from .features import FeatureStore, as_str, check_patch_store
from .train import _atomic_torch_save, load_checkpoint, write_predictions

DEFAULTS: dict[str, Any] = {"epochs": 20, "lr": 2e-4, "weight_decay": 1e-5, "seed": 0, "max_patches": None, "patience": None,
                            "threshold": 0.5, "device": "auto", "schedule": "constant",
                            "class_weight": None}


def epoch_lr(cfg: dict[str, Any], epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based): ``mil.lr``, or with ``schedule: cosine`` ``lr`` decayed along a half
    cosine over ``mil.epochs`` (Loshchilov & Hutter 2017, no restarts). A function of the epoch alone: resume-safe."""
    if cfg.get("schedule", "constant") == "cosine":
        return cfg["lr"] * 0.5 * (1 + math.cos(math.pi * epoch / cfg["epochs"]))
    return cfg["lr"]


def settings(pipeline: dict[str, Any], **overrides) -> dict[str, Any]:
    s = {**DEFAULTS, **(pipeline.get("mil") or {})}
    s.update({k: v for k, v in overrides.items() if v is not None})
    return s


def aggregator_ref(pipeline: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    ref = dict(pipeline.get("aggregator") or {"name": "abmil"})
    if name:
        ref = {"name": name, "params": ref.get("params", {}) if ref.get("name") == name else {}}
    plugin = registry.get("aggregator", ref["name"])
    if plugin.input != "features":
        raise ConfigError(f"aggregator {plugin.name!r} pools patch probabilities and has nothing to train; "
                          "name an attention-MIL aggregator (abmil, clam_sb) in the pipeline's aggregator section")
    return {"name": plugin.name, "params": dict(ref.get("params") or {})}


# ---------------------------------------------------------------------------------------------- bags
def patient_bags(fs: FeatureStore, split_column: np.ndarray | None, meta: dict[str, np.ndarray] | None = None,
                 unlabeled_ok: bool = False) -> dict[str, Any]:
    """Per patient (sorted ids): ``rows`` (feature-store rows of its real patches), ``label``, ``age``, ``split``.
    ``meta``: the patch store's ``patient_id``, ``label`` and ``age`` columns (row-aligned), when there is one: the
    feature store's copies are those of when the features were computed; ``split --patient-from`` may have
    rewritten the patient ids since (the split was made per those patients), a re-extract the labels and ages."""
    meta = meta or {}
    pid = as_str(meta["patient_id"]) if "patient_id" in meta else fs.column("patient_id").astype(str)
    real = ~fs.column("synthetic").astype(bool)
    label, age = (np.asarray(meta[c]) if c in meta else fs.column(c) for c in ("label", "age"))
    patients, inverse = np.unique(pid[real], return_inverse=True)
    rows = np.flatnonzero(real)
    order = np.argsort(inverse, kind="stable")
    groups = np.split(rows[order], np.searchsorted(inverse[order], np.arange(1, len(patients))))
    first = [g[0] for g in groups]
    mixed = label[rows] != label[first][inverse]  # a bag has one label: that of each of its slides
    if mixed.any():
        i = int(np.argmax(mixed))
        raise ConfigError(f"patient {str(patients[inverse[i]])!r} has slides with different labels ({label[first][inverse[i]]} "
                          f"and {label[rows[i]]}); give all slides of a patient one label in the cohort CSV and rerun "
                          "`slidestream extract`")
    out = {"patients": patients, "rows": groups, "label": label[first].astype(int), "age": age[first].astype(float),
           "split": as_str(split_column[first]) if split_column is not None else np.full(len(patients), "")}
    if np.any(out["label"] < 0) and not unlabeled_ok:  # predict: unknown labels are written -1, evaluate leaves them out
        bad = str(patients[out["label"] < 0][0])
        raise ConfigError(f"patient {bad!r} has no IDH label in the store; give every patient a label in the cohort CSV")
    return out


def kfold_splits(labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Per fold an array of split names per patient: fold i test, fold i+1 val, the rest train (stratified)."""
    from sklearn.model_selection import StratifiedKFold

    if k < 3:
        raise ConfigError(f"--folds must be at least 3 (a test, a validation and a training fold), got {k}")
    if np.bincount(labels, minlength=2).min() < k:
        raise ConfigError(f"--folds {k}: a class has fewer than {k} patients; use fewer folds")
    fold_of = np.empty(len(labels), int)
    for i, (_, test) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)):
        fold_of[test] = i
    out = []
    for i in range(k):
        s = np.full(len(labels), "train", dtype=object)
        s[fold_of == i] = "test"
        s[fold_of == (i + 1) % k] = "val"
        out.append(s.astype(str))
    return out


# ---------------------------------------------------------------------------------------------- training
class Standardized(torch.nn.Module):
    """An aggregator behind per-feature standardization with the training patches' mean and sd (saved with
    the weights as ``mean``/``std`` buffers): encoders' feature scales differ by orders of magnitude."""

    def __init__(self, net, mean: np.ndarray, std: np.ndarray, name: str = "?"):
        super().__init__()
        self.net, self.name = net, name
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, bag):
        logit, a = self.net((bag - self.mean) / self.std)
        if logit.numel() != 1 or a is None or tuple(a.shape) != (len(bag),):  # else broadcast onto the bag's rows
            raise ConfigError(f"aggregator {self.name!r} returned a logit of shape {tuple(logit.shape)} and attention of "
                              f"shape {None if a is None else tuple(a.shape)} for a bag of {len(bag)} patches; it must return "
                              "(scalar logit, (n,) attention): fix the aggregator plugin")
        return logit, a


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else None


def _score(model, feats, bags, idx, device):
    """Probabilities, mean BCE loss and per-row attention of the patients ``idx`` (eval mode)."""
    import torch.nn.functional as F

    model.eval()
    probs, losses, att = [], [], {}
    with torch.no_grad():
        for i in idx:
            logit, a = model(torch.from_numpy(feats[bags["rows"][i]]).float().to(device))
            y = torch.tensor(float(bags["label"][i]), device=device)
            losses.append(float(F.binary_cross_entropy_with_logits(logit, y)))
            probs.append(float(torch.sigmoid(logit)))
            att[i] = a.float().cpu().numpy()
    probs = np.array(probs)
    if not np.all(np.isfinite(probs)):  # NaN/inf weights: never a NaN row in predictions.csv or an AUC traceback
        raise ConfigError(f"the MIL network gave no probability (NaN) for {int(np.sum(~np.isfinite(probs)))} of "
                          f"{len(probs)} patients: its weights diverged; lower mil.lr in the pipeline and train again")
    return probs, float(np.mean(losses)) if losses else float("nan"), att


def _better(m: dict, best: dict | None) -> bool:
    if best is None:
        return True
    if m["val_auc"] is not None and best["val_auc"] is not None and m["val_auc"] != best["val_auc"]:
        return m["val_auc"] > best["val_auc"]
    return m["val_loss"] < best["val_loss"]


def _stops_after(history: list[dict], cfg: dict[str, Any]) -> int:
    """Epochs a run with ``cfg`` trains when its validation epochs are ``history`` (``epochs``, early stopping)."""
    best = None
    for e, m in enumerate(history[:cfg["epochs"]]):
        if cfg["patience"] and best is not None and e - best["epoch"] >= cfg["patience"]:
            return e
        best = m if _better(m, best) else best
    return min(len(history), cfg["epochs"])


def train_one(feats: np.ndarray, bags: dict[str, Any], split: np.ndarray, agg: dict[str, Any], cfg: dict[str, Any],
              out: Path, header: dict[str, Any], log=print, fusion: dict[str, Any] | None = None,
              fusion_split: str = "val") -> dict[str, Any]:
    """Train one aggregator on the ``split`` (train/val/test per patient) and write its bundle to ``out``.
    ``fusion`` (the pipeline's section): fitted on the ``fusion_split`` patients' scores (val, or train:
    ``training.fusion_split``, as ``train`` honours it) at the best epoch and kept in the bundle with the
    per-predictor Youden thresholds on val, as ``train`` does, for ``evaluate --bundle``.

    On the CPU it runs on one thread: a bag is a small matrix, and thread hand-offs cost more than they gain
    (measured: 3 epochs of 48 bags, 10.7 s on 2 threads of a busy machine vs 0.11 s on one)."""
    threads = torch.get_num_threads()
    if resolve_device(cfg["device"]) == "cpu":
        torch.set_num_threads(1)
    try:
        return _train_one(feats, bags, split, agg, cfg, out, header, log, fusion, fusion_split)
    finally:
        torch.set_num_threads(threads)


def _train_one(feats, bags, split, agg, cfg, out: Path, header, log, fref=None, fusion_split="val") -> dict[str, Any]:
    import torch.nn.functional as F
    from safetensors.torch import save

    from .bundle import patient_set, seal
    from .config import digest
    from .evaluate import apply_fusion, fit_fusion, youden_threshold
    from .store import atomic_write_bytes, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    tr, va = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    if len(tr) == 0 or len(va) == 0:
        raise ConfigError("MIL training needs train and val patients; run `slidestream split` on the patch store, "
                          "or use --folds K")
    table = {"patient_id": bags["patients"], "label": bags["label"], "age": bags["age"], "split": split,
             "image_prob": np.full(len(split), 0.5)}
    if fref:  # known now, not after training: too few val patients (ages) for the fusion leave it out, with a warning
        try:
            fit_fusion(table, fref["name"], fref.get("params"), fusion_split)
        except ConfigError as e:
            print(f"warning: the MIL bundle {out} gets no fusion: {e}", file=sys.stderr)
            fref = None
    device = torch.device(resolve_device(cfg["device"]))
    plugin = registry.get("aggregator", agg["name"])
    torch.manual_seed(cfg["seed"])
    rows = np.concatenate([bags["rows"][i] for i in tr])
    train_feats = feats[rows].astype(np.float64)  # one copy of the training patches, not two
    mean, std = train_feats.mean(0), train_feats.std(0) + 1e-6
    del train_feats
    model = Standardized(plugin.build(in_dim=feats.shape[1], **agg["params"]), mean, std, agg["name"]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    ident = {"aggregator": agg, "split": split.tolist(), **{k: cfg[k] for k in ("lr", "weight_decay", "seed", "max_patches")},
             "features": header.get("weights_sha256"), "encoder": header.get("encoder"),
             # the bags themselves: other features (each slide's CRC32), patients or labels are another run
             "data": digest([header.get("sums"), bags["patients"].tolist(), bags["label"].tolist()])[:16]}
    if cfg.get("schedule", "constant") != "constant":  # only then: checkpoints of runs before it still resume
        ident["schedule"] = [cfg["schedule"], cfg["epochs"]]  # its rates depend on mil.epochs: no extending it
    pos_weight = None
    if cfg.get("class_weight") == "balanced":  # each class weighs half of the training loss, whatever its share
        ident["class_weight"] = "balanced"
        n_pos = int(bags["label"][tr].sum())
        if n_pos in (0, len(tr)):
            raise ConfigError(f"mil.class_weight balanced: the training patients hold one class only ({len(tr)} patients); "
                              "give both classes training patients (split or --folds)")
        pos_weight = torch.tensor((len(tr) - n_pos) / n_pos, device=device)
    ckpt, history, best, best_state, start = out / "checkpoint.pt", [], None, None, 0
    if ckpt.exists():
        c = load_checkpoint(ckpt, device)
        if c["ident"] != json.dumps(ident, sort_keys=True):
            raise ConfigError(f"{out} holds a checkpoint of another MIL run (other settings or split); "
                              "use a new --out, or delete it to start over")
        model.load_state_dict(c["model"])
        opt.load_state_dict(c["opt"])
        history, best_state = json.loads(c["history"]), c["best_state"]
        stop = _stops_after(history, cfg)
        if len(history) > stop:  # its history and best epoch would pass for those of a run that stopped earlier
            raise ConfigError(f"{out} holds a MIL run already trained for {len(history)} epochs; with mil.epochs "
                              f"{cfg['epochs']} (--epochs) and mil.patience {cfg['patience']} it stops after {stop}: "
                              "give the settings it was trained with to resume it, or use a new --out")
        best = next(m for m in history if m["epoch"] == int(c["best_epoch"]))
        start = len(history)
        if log:
            log(f"resuming {agg['name']} at epoch {start + 1}")
    t0 = time.process_time()
    for epoch in range(start, cfg["epochs"]):
        if cfg["patience"] and best is not None and epoch - best["epoch"] >= cfg["patience"]:
            break  # early stopping: `patience` epochs without a better validation epoch
        model.train()
        torch.manual_seed(cfg["seed"] * 100_003 + epoch)  # dropout depends on (seed, epoch) only: resume = no kill
        rng = np.random.default_rng([cfg["seed"], epoch])
        for g in opt.param_groups:
            g["lr"] = epoch_lr(cfg, epoch)
        losses = []
        for i in rng.permutation(tr):
            rows = bags["rows"][i]
            if cfg["max_patches"] and len(rows) > cfg["max_patches"]:
                rows = np.sort(rng.choice(rows, cfg["max_patches"], replace=False))
            bag = torch.from_numpy(feats[rows]).float().to(device)
            y = torch.tensor(float(bags["label"][i]), device=device)
            logit, a = model(bag)
            loss = F.binary_cross_entropy_with_logits(logit, y, pos_weight=pos_weight)
            if hasattr(model.net, "instance_loss"):
                loss = loss + model.net.instance_loss(bag, y, a)
            losses.append(loss.item())
            if not np.isfinite(losses[-1]):  # a diverged network: a line, not the metrics' NaN traceback
                raise ConfigError(f"MIL training diverged: the loss is {losses[-1]} at epoch {epoch + 1} (lr {cfg['lr']:g}); "
                                  "lower mil.lr in the pipeline and train into a new --out")
            opt.zero_grad()
            loss.backward()
            opt.step()
        vp, vloss, _ = _score(model, feats, bags, va, device)
        m = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": vloss,
             "val_auc": _auc(bags["label"][va], vp), "lr": opt.param_groups[0]["lr"]}
        history.append(m)
        if _better(m, best):
            best, best_state = m, {k: v.detach().clone() for k, v in model.state_dict().items()}
        _atomic_torch_save({"model": model.state_dict(), "opt": opt.state_dict(), "history": json.dumps(history),
                            "best_state": best_state, "best_epoch": best["epoch"], "ident": json.dumps(ident, sort_keys=True)},
                           ckpt)
        if log:
            log(f"epoch {epoch + 1}/{cfg['epochs']}: train loss {m['train_loss']:.4f}, val loss {vloss:.4f}, "
                f"val AUC {m['val_auc'] if m['val_auc'] is None else round(m['val_auc'], 4)}")
    cpu_s = time.process_time() - t0
    model.load_state_dict(best_state)
    allp = np.arange(len(bags["patients"]))
    probs, _, att = _score(model, feats, bags, allp, device)
    metrics = {}
    for s in ("train", "val", "test"):
        sel = split == s
        if sel.any():
            y, p = bags["label"][sel], probs[sel]
            metrics[s] = {"n": int(sel.sum()), "auc": _auc(y, p),
                          "accuracy": float(np.mean((p >= cfg["threshold"]) == (y == 1)))}
    table["image_prob"] = probs
    write_predictions(out / "predictions.csv", table)
    fusion = fit_fusion(table, fref["name"], fref.get("params"), fusion_split) if fref else None
    scores = {"image": probs, **(apply_fusion(fusion, table) if fusion else {})}
    va_mask = split == "val"  # evaluate --bundle --threshold youden applies these to a held-out table
    youden = {k: youden_threshold(bags["label"][va_mask], v[va_mask]) for k, v in scores.items()}
    attention = np.full(len(feats), np.nan, np.float32)
    for i, a in att.items():
        attention[bags["rows"][i]] = a
    np.save(out / "attention.npy", attention)
    atomic_write_bytes(out / "model.safetensors", save({k: v.contiguous().cpu() for k, v in best_state.items()}))
    meta = {"kind": "mil", "aggregator": agg["name"], "params": agg["params"], "in_dim": int(feats.shape[1]),
            "encoder": {k: header.get(k) for k in ("encoder", "params", "weights_sha256", "input_size", "mean", "std")},
            "feature_store": header.get("path"), "extraction_hash": header.get("extraction_hash"),
            "best_epoch": best["epoch"], "epochs": cfg["epochs"],
            "epochs_trained": len(history),
            "settings": {k: cfg[k] for k in DEFAULTS}, "metrics": metrics, "train_cpu_s": round(cpu_s, 3),
            "fusion": fusion, "youden": youden,
            # the patients it trained on and those that chose its epoch: `evaluate --bundle` refuses them in test
            "patients": {"train": patient_set(bags["patients"][tr]), "val": patient_set(bags["patients"][va])}}
    atomic_write_text(out / "mil.json", json.dumps(seal(out, meta, FILES), indent=1))  # sha256 of the weights + hash
    atomic_write_text(out / "history.json", json.dumps(history, indent=1))
    return {"out": str(out), "best_epoch": best["epoch"], "epochs_trained": len(history), "metrics": metrics,
            "train_cpu_s": cpu_s}


FILES = ("model.safetensors",)  # the MIL bundle's files whose sha256 mil.json records


def read_bundle(path: str | Path) -> dict[str, Any]:
    """A MIL bundle's mil.json, verified like a model bundle's (``bundle.verify``: the weights' sha256 and the
    json's hash). Bundles written before MIL bundles were sealed (no ``hash``) load with a warning on stderr."""
    import sys

    from .bundle import verify

    path = Path(path)
    if not (path / "mil.json").is_file():
        raise ConfigError(f"{path} is not a MIL bundle (no mil.json); give OUT of `slidestream mil train`")
    try:
        meta = json.loads((path / "mil.json").read_text())
        int(meta["in_dim"]), meta["aggregator"], meta["params"]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"MIL bundle {path}: cannot read mil.json ({type(e).__name__}: {e}); rerun `slidestream mil train`") from None
    if "hash" in meta:
        verify(path, meta, FILES, "MIL bundle", "mil.json")
    else:
        print(f"warning: MIL bundle {path} records no sha256 of its weights (written by an older slidestream): "
              "they cannot be verified; retrain it to seal it", file=sys.stderr)
    return meta


def load_bundle(path: str | Path):
    """(model in eval mode, meta) of a MIL bundle written by :func:`train_one`, verified (``read_bundle``)."""
    from .bundle import load_weights

    path = Path(path)
    meta = read_bundle(path)
    in_dim, name, params = int(meta["in_dim"]), meta["aggregator"], meta["params"]
    net = registry.get("aggregator", name).build(in_dim=in_dim, **params)
    model = Standardized(net, np.zeros(in_dim), np.ones(in_dim), name)
    load_weights(model, path / "model.safetensors", f"MIL bundle {path}")
    return model.eval(), meta


def train(pipeline: dict[str, Any], features: str | Path, out: str | Path, *, store: str | Path | None = None,
          folds: int | None = None, aggregator: str | None = None, log=print, **overrides) -> dict[str, Any]:
    """Train on the patch store's split, or K-fold cross-validate (``folds``). Returns a summary."""
    cfg = settings(pipeline, **overrides)
    agg = aggregator_ref(pipeline, aggregator)
    training = pipeline.get("training") or {}
    if training.get("fusion_cv") and pipeline.get("fusion"):  # out-of-fold scores need fold networks mil train has not
        raise ConfigError("training.fusion_cv is for `slidestream train` (patch CNN): `mil train` fits the fusion on "
                          "training.fusion_split (val or train); remove fusion_cv from the pipeline")
    fsplit = training.get("fusion_split", "val")
    fs, feats, ps, meta = _inputs(features, store)
    header = {**fs.info, "path": str(Path(features).resolve())}
    out = Path(out)
    if folds:  # the patch store's patients when there is one: slides of a patient never in two folds
        bags = patient_bags(fs, None, meta)
        results = []
        for i, split in enumerate(kfold_splits(bags["label"], folds, cfg["seed"])):
            if log:
                log(f"fold {i + 1}/{folds}")
            results.append(train_one(feats, bags, split, agg, cfg, out / f"fold{i}", header, log, pipeline.get("fusion"),
                                     fsplit))
        aucs = [r["metrics"]["test"]["auc"] for r in results]
        valid = [a for a in aucs if a is not None]
        cv = {"aggregator": agg["name"], "folds": folds, "test_auc": aucs,
              "mean": float(np.mean(valid)) if valid else None, "sd": float(np.std(valid, ddof=1)) if len(valid) > 1 else None,
              "sd_ddof": 1,  # the sample sd over folds, as the MIL literature reports it
              "train_cpu_s": round(sum(r["train_cpu_s"] for r in results), 3)}
        from .store import atomic_write_text

        atomic_write_text(out / "cv.json", json.dumps(cv, indent=1))
        line = (f"{agg['name']}, {folds}-fold patient-level CV: test AUC {cv['mean']:.3f} ± {cv['sd']:.3f} "
                "(mean ± sd over folds; sample sd, ddof 1)" if cv["sd"] is not None
                else f"{agg['name']}: test AUC {cv['mean']}")
        atomic_write_text(out / "cv.md", f"# Cross-validation\n\n{line}\n\n| fold | test AUC |\n|---|---|\n"
                          + "".join(f"| {i} | {a if a is None else round(a, 4)} |\n" for i, a in enumerate(aucs)))
        if log:
            log(line)
        return {"cv": cv, "folds": results}
    if ps is None:
        raise ConfigError(f"feature store {features} has no patch store with a split column (written by `extract "
                          "--features-only`, or its patch store moved): use --folds K, or --store the patch store of the "
                          "same extraction")
    from .splits import check_assigned

    sp = ps.column("split")
    check_assigned(sp, meta["patient_id"], ps.column("slide_id"), ps.column("synthetic"), ps.path)
    bags = patient_bags(fs, sp, meta)
    res = train_one(feats, bags, bags["split"], agg, cfg, out, header, log, pipeline.get("fusion"), fsplit)
    if log:
        log(f"{agg['name']}: best epoch {res['best_epoch']}, test AUC {res['metrics'].get('test', {}).get('auc')}; "
            f"predictions: {out / 'predictions.csv'}")
    return res


def _inputs(features: str | Path, store: str | Path | None, check=None):
    """``(fs, feats, ps, cols)`` of `mil train` and `mil predict`: the complete feature store (``check(fs)`` next:
    predict's encoder check), all its rows (NaN/inf refused), its patch store (:func:`_patch_store`) and that
    store's ``patient_id``/``label``/``age`` columns (None without one)."""
    fs = FeatureStore(features)
    if not fs.complete():
        raise ConfigError(f"feature store {features} is incomplete; rerun `slidestream features` to finish it")
    if check:
        check(fs)
    feats = _finite_rows(fs, features)
    ps = _patch_store(fs, store, features)
    cols = {c: ps.column(c) for c in ("patient_id", "label", "age")} if ps is not None else None
    return fs, feats, ps, cols


def _finite_rows(fs: FeatureStore, features: str | Path) -> np.ndarray:
    """Every row of a feature store; NaN/inf rows refused in one line."""
    feats = fs.rows()
    bad = ~np.isfinite(feats).all(1)
    if bad.any():
        raise ConfigError(f"feature store {features}: {int(bad.sum())} row(s) hold NaN/inf features (first: row "
                          f"{int(np.argmax(bad))}); recompute it with `slidestream features` into a new --out")
    return feats


def check_encoder(bundle: str | Path, meta: dict[str, Any], fs: FeatureStore) -> None:
    """Refuse (one line) features of another encoder, encoder params or weights than the MIL bundle learned from."""
    enc = meta.get("encoder") or {}
    if meta["in_dim"] != fs.info["dim"] or any(enc.get(k) != fs.info.get(k) for k in ("encoder", "params", "weights_sha256")):
        raise ConfigError(f"MIL bundle {bundle} was trained on {enc.get('encoder')} features ({meta['in_dim']}-d, params "
                          f"{enc.get('params')}, weights sha256 {str(enc.get('weights_sha256'))[:12]}), not this feature "
                          f"store's {fs.info['encoder']} ({fs.info['dim']}-d, params {fs.info.get('params')}, weights "
                          f"sha256 {str(fs.info.get('weights_sha256'))[:12]}); give the feature store it was trained on")
    for k in ("input_size", "mean", "std"):  # the input transform, when both recorded it (a plugin upgrade changed it)
        if enc.get(k) is not None and fs.info.get(k) is not None and enc[k] != fs.info[k]:
            raise ConfigError(f"MIL bundle {bundle} was trained on features of patches with encoder {k} {enc[k]}, this "
                              f"feature store's have {fs.info[k]}; recompute the features with the encoder version the "
                              "bundle was trained with, or retrain it")
    own, theirs = meta.get("extraction_hash"), fs.info.get("extraction_hash")
    if own and theirs and own != theirs:  # same encoder on patches cut otherwise (magnification, size, tiling)
        raise ConfigError(f"MIL bundle {bundle} was trained on features of patches of extraction hash {own[:12]}, this "
                          f"feature store's patches have {theirs[:12]}; extract the slides with the pipeline of the "
                          "bundle's training store, then run `slidestream features`")


def predict(bundle: str | Path, features: str | Path, out: str | Path, *, store: str | Path | None = None,
            warn=lambda m: print(m, file=sys.stderr)) -> dict[str, Any]:
    """P(mutant) per patient of a feature store with a MIL bundle: the bag of each patient's real patches through
    the bundle's network (as `mil train` scores); writes ``out``, a predictions CSV for ``evaluate``. Patients,
    labels (unknown: -1), ages and splits are the patch store's (``store``, else the one the features were computed
    from; without one the feature store's, unsplit); splits as ``predict --store`` gives them
    (``predict.held_out_roles``: a never-split store's new patients are test, the bundle's own never)."""
    from .predict import held_out_roles, without_patches

    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the CSV file to write, e.g. {out / 'predictions.csv'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    model, meta = load_bundle(bundle)
    fs, feats, ps, cols = _inputs(features, store, lambda fs: check_encoder(bundle, meta, fs))
    sp = ps.column("split") if ps is not None else None
    if ps is not None:
        from .splits import check_assigned

        check_assigned(sp, cols["patient_id"], ps.column("slide_id"), ps.column("synthetic"), ps.path, unsplit_ok=True)
    bags = patient_bags(fs, sp, cols, unlabeled_ok=True)
    if not len(bags["patients"]):
        raise ConfigError(f"feature store {features} holds no patches of real slides: nothing to predict")
    with torch.no_grad():
        probs = np.array([float(torch.sigmoid(model(torch.from_numpy(feats[r]).float())[0])) for r in bags["rows"]])
    if not np.all(np.isfinite(probs)):
        raise ConfigError(f"MIL bundle {bundle} gave no probability (NaN) for {int(np.sum(~np.isfinite(probs)))} "
                          "patients: its weights diverged; retrain it with a lower mil.lr")
    table = {"patient_id": bags["patients"], "label": bags["label"], "age": bags["age"],
             "split": np.asarray(bags["split"], dtype=object), "image_prob": probs}
    roles = held_out_roles(table, meta.get("patients") or {}, f"feature store {features}", warn)
    write_predictions(out, table)
    return {"patients": len(probs), "patches": int(sum(len(r) for r in bags["rows"])), "out": str(out), **roles,
            "without_patches": without_patches(ps, table["patient_id"]) if ps is not None else []}


def _patch_store(fs: FeatureStore, store: str | Path | None, features: str | Path):
    """The patch store the features were computed from (``--store``, else the one the feature store records,
    when it is still there), checked row for row; None without one (``extract --features-only``)."""
    from .store import PatchStore

    path = store or fs.info.get("patch_store")
    if not path or (store is None and not Path(path).exists()):
        return None
    ps = PatchStore.open(path)
    check_patch_store(fs, ps, path, features)
    return ps


# ---------------------------------------------------------------------------------------------- demo
DEMO_ENCODER = {"name": "morphometry", "params": {"input_size": 64}}  # the demo's patch size: measured unresampled
# lr: DEFAULTS'. weight_decay 0.1 (DEFAULTS': 1e-5, CLAM's) chosen on the demo cohorts' train + val patients only,
# by nested CV (bench/mil_select.py, seeds 0-2, 15 dev folds): dev AUC 0.877 vs 0.865 (paired +0.012 +- 0.007 se)
DEMO_MIL = {"epochs": 20, "patience": 5, "weight_decay": 0.1}


def demo(out: str | Path = "slidestream-mil-demo", n_patients: int = 160, size: tuple[int, int] = (2048, 1536),
         epochs: int = 20, seed: int = 0, bootstrap: int = 1000, fusion_split: str = "val",
         log=print) -> dict[str, Any]:
    """The encoder path on the demo's synthetic cohort, on a CPU (``slidestream demo --mil`` and ``slidestream mil
    demo``): slides -> extract (the demo pipeline) -> split -> features (the weight-free ``morphometry`` encoder)
    -> ABMIL (``DEMO_MIL``: at most ``epochs``, early stopping after 5 epochs without a better validation AUC,
    weight decay 0.1)
    -> evaluate with age fusion -> report, plus an attention heatmap of one test slide."""
    from . import config
    from . import demo as demo_mod
    from . import evaluate as ev
    from . import runner, splits, synthetic
    from .export import export
    from .features import extract_features
    from .store import PatchStore

    say = log or (lambda s: None)
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = config.parse({**demo_mod.demo_pipeline(seed=seed), "encoder": DEMO_ENCODER, "aggregator": {"name": "abmil"},
                         "mil": {**DEMO_MIL, "epochs": epochs, "seed": seed}}, source="MIL demo pipeline")
    (out / "pipeline.json").write_text(json.dumps(pipe, indent=1))
    cohort = synthetic.make_cohort(out / "slides", n_patients=n_patients, seed=seed, size=size, mpp=0.25,
                                   objective=40, levels=(1, 4, 16))
    summary = runner.extract(pipe, runner.read_cohort(cohort), out / "store", progress=False)
    st = PatchStore.open(out / "store", mode="r+")
    sp = pipe["training"]["split"]
    splits.split_store(st, sp["ratios"], sp["seed"])
    say(f"[mil demo] {n_patients} slides, {summary['rows']} patches ({time.perf_counter() - t0:.0f} s)")
    extract_features(pipe, out / "store", out / "features.zarr", progress=False, log=say)
    res = train(pipe, out / "features.zarr", out / "mil", log=None)
    metrics = ev.evaluate(ev.load_predictions(out / "mil" / "predictions.csv"), fusion="age_gda", bootstrap=bootstrap,
                          seed=seed, fusion_split=fusion_split, trained=read_bundle(out / "mil").get("patients"))
    ev.write_report(metrics, out / "report")
    test_slides = sorted(set(st.column("slide_id")[st.column("split") == "test"].tolist()))
    heat = export(out / "store", "png", out / "heatmaps", features=out / "features.zarr", mil=out / "mil")
    result = {"report": str(out / "report" / "report.md"), "metrics": metrics, "best_epoch": res["best_epoch"],
              "heatmaps": [str(p) for p in heat if p.stem in test_slides][:1], "seconds": round(time.perf_counter() - t0, 1)}
    auc = (metrics.get("test", {}).get("image") or {}).get("auc")
    say(f"[mil demo] ABMIL test AUC {auc if auc is None else round(auc, 3)}; report {result['report']}; "
        f"{result['seconds']} s")
    return result
