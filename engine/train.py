"""Classifier training (Liu et al. 2020, "ResNet50 for image classification"), with resume and model selection.

Paper defaults (``training`` section; see ``DEFAULTS``): Adam (beta1 = 0.9, the paper's "momentum"),
batch 16, learning rate 1e-5, decay 1e-6, 100 epochs, ImageNet initialisation, dropout before the output
layer; each patch carries its slide's label and patients are classified by their mean patch probability.
The paper's "decay rate" is the Keras optimizer's ``decay`` argument: the time-based learning-rate schedule
``lr / (1 + lr_decay * iterations)``, applied after every optimizer step (``lr_decay``, default 1e-6). There
is no weight decay unless ``weight_decay`` asks for it (default 0; Adam's L2 penalty).

* Input: patches are resized on the fly to the classifier's ``input_size`` (its plugin's native size, e.g.
  224 for ResNet50; ``training.input_size`` overrides), identically on the CPU (torch) and GPU (DALI) paths;
  inference (``store_probs``, ``predict``) uses the same size, recorded in the bundle.
* Batches come from ``loader.PatchLoader``: a global block shuffle over the whole training split, rows of
  ``pool_blocks`` random store blocks shuffled together (~14 slides per batch of 16 by default).

* Model selection: after every epoch the validation split is scored at the patient level (aggregated
  patch probabilities, ``aggregation``). The best epoch has the highest validation patient AUC, ties
  broken by the lower validation patch cross-entropy; ``select: "loss"`` uses the loss alone (also the
  fallback when the validation split holds one class, where the AUC is undefined).
* Checkpoints: ``OUT/<arch>/checkpoint.pt`` (model, optimizer, lr schedule, history, the best epoch's weights
  (one file: a failed or killed save never leaves best weights of another epoch) and every RNG state:
  torch CPU, CUDA on all devices when present, numpy's global generator and Python's ``random``; tensors and
  plain containers only, loaded with ``weights_only=True``) is replaced atomically after every epoch. Run the
  same command again after a kill and training continues from the last finished epoch; batch order depends
  only on (seed, epoch) and the RNG states are restored, so the resumed run reproduces the uninterrupted one.
* Output per architecture: ``OUT/<arch>/`` is a model bundle (``engine/bundle.py``; it records the train and val
  patients) plus ``history.json`` (per epoch), ``training.json`` (settings, best epoch chosen on val, the
  train/val/fusion patients' counts and digests, image metrics at
  the best epoch: val as the selection set, test held out), ``train.log`` and ``predictions.csv``
  (patient_id,label,age,split,image_prob: the format ``slidestream evaluate`` reads); only ``evaluate`` writes
  ``metrics.json``. ``OUT/comparison.{md,json}`` and ``OUT/roc.png`` compare the architectures on the
  validation and test splits (the paper's Table 1 and Fig. 2).
* Fusion (``fusion`` section, e.g. ``age_gda``): fitted at the best epoch on the ``training.fusion_split``
  patients, by default ``val`` (out of sample: the network never trained on them), and stored fitted in
  the bundle, so ``evaluate --bundle`` and ``predict`` use exactly the same model. The fusion split is
  checked before training starts. ``training.fusion_cv = K`` (``--fusion-cv``) fits it instead on out-of-fold
  scores of every train+val patient (``fusion_cv_scores``: K fold networks trained like the main one for its
  best epoch + 1 epochs; checkpoints in ``OUT/<arch>/fusion_cv/fold<f>/``); the bundle records ``fit_on: "oof"``
  and the folds.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import bundle as bundle_mod
from . import config, registry
from .aggregate import aggregate
from .device import resolve_device
from .errors import ConfigError
from .loader import PatchLoader, frozen, norm_chain, to_tensor
from .store import PatchStore, atomic_write_bytes, atomic_write_text

DEFAULTS: dict[str, Any] = {
    "epochs": 100, "batch_size": 16, "lr": 1e-5, "weight_decay": 0.0, "lr_decay": 1e-6, "betas": [0.9, 0.999],
    "dropout": 0.5, "weights": None, "input_size": None, "augment": False, "pool_blocks": 64, "seed": 0,
    "split": {"ratios": [6, 1, 1], "seed": 0, "kfold": None, "fold": 0},
    "aggregation": {"method": "mean", "k_frac": 0.2}, "synthetic": 0, "select": "auc", "threshold": 0.5,
    "fusion_split": "val", "fusion_cv": None, "num_workers": 2, "device": "auto",
}


def settings(pipeline: dict[str, Any], **overrides) -> dict[str, Any]:
    """The pipeline's ``training`` section over ``DEFAULTS``, then non-None ``overrides``."""
    t = copy.deepcopy(DEFAULTS)
    for k, v in (pipeline.get("training") or {}).items():
        t[k] = {**t[k], **v} if isinstance(t.get(k), dict) and isinstance(v, dict) else v
    t.update({k: v for k, v in overrides.items() if v is not None})
    return t


def pick_device(name: str = "auto") -> torch.device:
    return torch.device(resolve_device(name))


# ---------------------------------------------------------------------------------------------- inference
@torch.no_grad()
def infer(model: torch.nn.Module, batches, size: int | None, device: torch.device) -> np.ndarray:
    """P(mutant) for every patch of ``batches`` (an iterable of uint8 (n,h,w,c) arrays), in order."""
    model.eval()
    out = []
    for xb in batches:
        out.append(torch.softmax(model(to_tensor(xb, size, device)).float(), 1)[:, 1].cpu().numpy())
    probs = np.concatenate(out) if out else np.zeros(0, np.float32)
    bad = int(np.sum(~np.isfinite(probs)))
    if bad:  # NaN/inf weights or activations: never a plausible-looking AUC or a NaN row in predictions.csv
        raise ConfigError(f"the network gave no probability (NaN) for {bad} of {len(probs)} patches: its weights "
                          "diverged or overflowed; retrain it with a lower training.lr")
    return probs


def store_probs(model, store: PatchStore, rows: np.ndarray, chain, size, device, batch_size=64, workers=2) -> np.ndarray:
    """Patch probabilities for store ``rows`` (sorted), streamed in store order."""
    loader = PatchLoader(store, rows, batch_size, chain, shuffle=False, workers=workers)
    return infer(model, (xb for xb, _, _ in loader.epoch(0)), size, device)


def patient_table(store_tab: dict[str, np.ndarray], rows: np.ndarray, probs: np.ndarray, agg: dict) -> dict[str, np.ndarray]:
    """Per patient: patient_id, label, age, split, image_prob (aggregated patch probabilities)."""
    pids, pp = aggregate(store_tab["patient_id"][rows], probs, agg.get("method", "mean"), agg.get("k_frac", 0.2))
    first = {p: r for r, p in zip(rows[::-1], store_tab["patient_id"][rows][::-1])}
    idx = np.array([first[p] for p in pids], np.int64)
    return {"patient_id": pids, "label": store_tab["label"][idx].astype(int), "age": store_tab["age"][idx].astype(float),
            "split": store_tab["split"][idx], "image_prob": pp}


def write_predictions(path: Path, table: dict[str, np.ndarray]) -> None:
    """Replace ``path`` atomically: a kill or a full disk leaves the previous file whole, never a table missing
    its last patients that `evaluate` would read as good."""
    cols = ["patient_id", "label", "age", "split", "image_prob"]
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(cols)
    for i in range(len(table["patient_id"])):
        age = table["age"][i]
        w.writerow([table["patient_id"][i], int(table["label"][i]), "" if np.isnan(age) else repr(float(age)),
                    table["split"][i], repr(float(table['image_prob'][i]))])
    atomic_write_text(path, f.getvalue())


# ---------------------------------------------------------------------------------------------- rows
def training_rows(tab: dict[str, np.ndarray], synthetic: int, seed: int, eligible: np.ndarray | None = None) -> np.ndarray:
    """Real train-split rows plus ``synthetic`` synthetic rows (half per class when possible, seeded), drawn
    from the synthetic rows in ``eligible`` (default: all; ``train`` passes only those of generators that
    learned from current train-split patients, see ``synthetic_pool``)."""
    syn = tab["synthetic"].astype(bool)
    real = np.nonzero((tab["split"] == "train") & ~syn)[0]
    if not synthetic:
        return real
    if eligible is not None:
        syn = syn & np.isin(np.arange(len(syn)), eligible)
    rng = np.random.default_rng([seed, 1])
    pools = [rng.permutation(np.nonzero(syn & (tab["label"] == c))[0]) for c in (1, 0)]
    want = [synthetic - synthetic // 2, synthetic // 2]
    if want[0] > len(pools[0]):  # not enough of one class: take the rest from the other
        want = [len(pools[0]), synthetic - len(pools[0])]
    elif want[1] > len(pools[1]):
        want = [synthetic - len(pools[1]), len(pools[1])]
    if want[0] > len(pools[0]) or want[1] > len(pools[1]):
        raise ConfigError(f"training.synthetic asks for {synthetic} synthetic patches but the store holds "
                          f"{len(pools[0])} mutant + {len(pools[1])} wildtype usable ones (from generators trained on "
                          "current train-split patients); run `slidestream gan sample` first")
    return np.sort(np.concatenate([real, pools[0][:want[0]], pools[1][:want[1]]]))


def synthetic_pool(st: PatchStore, strict: bool = False, log: Callable[[str], None] | None = None) -> np.ndarray:
    """Synthetic rows training may use: those of generators whose patients are all in the current train split.
    Rows of other generators (a re-split moved one of their patients to val/test) are dropped with a one-line
    warning, or refused with ``strict``."""
    from .augment import train_synthetic_rows

    rows, bad = train_synthetic_rows(st)
    if bad:
        n = int(np.sum(np.isin(st.column("generator"), list(bad)) & st.column("synthetic").astype(bool)))
        what = "; ".join(f"{g} ({', '.join(p[:3])}{' ...' if len(p) > 3 else ''})" for g, p in bad.items())
        msg = (f"{n} synthetic patches of {len(bad)} generator(s) learned from patients outside the current train "
               f"split: {what}")
        if strict:
            raise ConfigError(msg + "; retrain those generators on this split (`slidestream gan train`), or drop --strict "
                              "to train without their patches")
        if log:
            log("warning: " + msg + "; left out of training")
    return rows


# ---------------------------------------------------------------------------------------------- training
def optimizer(model: torch.nn.Module, cfg: dict[str, Any]):
    """Adam with the paper's settings and the Keras time-based decay ``lr / (1 + lr_decay * iterations)``
    (``iterations`` = optimizer steps taken; call ``sched.step()`` after every ``opt.step()``)."""
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]), betas=tuple(cfg["betas"]),
                           weight_decay=float(cfg["weight_decay"]))
    decay = float(cfg["lr_decay"])
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0 / (1.0 + decay * it))


def rng_state() -> dict[str, Any]:
    """Every RNG training may draw from: torch CPU, CUDA (all devices), numpy's global generator, ``random``.
    Tensors and plain containers only (``torch.load(weights_only=True)`` reads it back)."""
    import random

    np_state = np.random.get_state(legacy=False)
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)), "pos": int(np_state["state"]["pos"]),
                      "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
            "python": json.dumps(random.getstate())}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore ``rng_state()``; CUDA states only when the same number of devices is visible."""
    import random

    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    v, internal, gauss = json.loads(state["python"])
    random.setstate((v, tuple(internal), gauss))


def load_checkpoint(path: Path, map_location="cpu") -> dict[str, Any]:
    """A checkpoint of ``_atomic_torch_save``, or a one-line ConfigError when the file is damaged (a copy cut
    short, a disk error): torch's zip reader raised a RuntimeError traceback."""
    import pickle

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise ConfigError(f"{path} is damaged and cannot be resumed from ({str(e).splitlines()[0][:80]}); delete it "
                          "to train that run from the start, or use a new --out") from None


def _atomic_torch_save(obj, path: Path) -> None:
    """Replace ``path`` with ``obj``: serialized in memory, then written and renamed, so a full disk leaves the
    previous checkpoint (and raises the one-line ``WriteError``; torch's own file writer reports it as a
    RuntimeError "unexpected pos" and leaves a truncated file)."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getbuffer())


def _better(m: dict, best: dict | None, select: str) -> bool:
    if best is None:
        return True
    if select == "auc" and m["val_auc"] is not None and best["val_auc"] is not None:
        if m["val_auc"] != best["val_auc"]:
            return m["val_auc"] > best["val_auc"]
    return m["val_loss"] < best["val_loss"]


def train_loader(st: PatchStore, rows: np.ndarray, chain, cfg: dict[str, Any]) -> PatchLoader:
    """The shuffled loader of training ``rows`` with the run's settings (the main run and every fusion_cv fold)."""
    return PatchLoader(st, rows, int(cfg["batch_size"]), chain, shuffle=True, seed=int(cfg["seed"]),
                       workers=int(cfg["num_workers"]) or 1, augment=bool(cfg["augment"]),
                       pool_blocks=int(cfg["pool_blocks"]))


def _state(model, opt, sched) -> dict[str, Any]:
    """What a checkpoint holds besides its run id and epoch (read back by ``_restore``)."""
    return {"model": model.state_dict(), "optim": opt.state_dict(), "sched": sched.state_dict(), "rng": rng_state()}


def _restore(c: dict[str, Any], model, opt, sched) -> None:
    model.load_state_dict(c["model"])
    opt.load_state_dict(c["optim"])
    sched.load_state_dict(c["sched"])
    set_rng_state(c["rng"])


def train_epoch(model, opt, sched, loader: PatchLoader, epoch: int, size: int, dev: torch.device) -> list[float]:
    """One epoch of Adam steps (lr schedule stepped after each) over ``loader``'s batches; the batch losses."""
    model.train()
    losses = []
    for x, y, _ in loader.tensors(epoch, size, dev):
        loss = F.cross_entropy(model(x), y)
        losses.append(loss.item())
        if not np.isfinite(losses[-1]):  # a diverged network: stop with a line, not at the metrics' NaN traceback
            raise ConfigError(f"training diverged: the loss is {losses[-1]} at epoch {epoch + 1}, batch {len(losses)} "
                              f"(lr {opt.param_groups[0]['lr']:g}); lower training.lr in the pipeline and train into a new --out")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return losses


def fusion_cv_scores(st: PatchStore, tab: dict[str, np.ndarray], cfg: dict[str, Any], build: Callable, chain,
                     size: int, dev: torch.device, run_id: str, out_dir: Path, epochs: int,
                     say: Callable[[str], None]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Out-of-fold image scores of every train+val patient (``training.fusion_cv = K``).

    The real train+val patients are dealt into K stratified folds (``splits.cv_folds``, seeded with
    ``training.seed``); for each fold a network is built and trained exactly as the main one (same initialisation,
    settings and seed) on the real patches of the other K-1 folds, for ``epochs`` epochs (the main run's best
    epoch + 1: no fold is spent on model selection, so every held-out patient is scored by a network that made
    no choice on it), and it scores its held-out fold. Synthetic patches are left out: their generators learned
    from train patients, which include held-out ones. Test patients are used nowhere. Checkpoints:
    ``OUT/<arch>/fusion_cv/fold<f>/checkpoint.pt`` after every epoch; a rerun resumes each fold.

    Returns the out-of-fold patient table (patient_table columns) and the record stored with the fusion
    (``cv``: k, seed, epochs, folds_digest, per fold its held-out patients with their scores and the digest
    of the rows its network trained on)."""
    from .evaluate import ids_digest
    from .splits import cv_folds

    k = int(cfg["fusion_cv"])
    tv = ~tab["synthetic"].astype(bool) & np.isin(tab["split"], ("train", "val"))
    pid = np.array([str(p) for p in tab["patient_id"].tolist()])
    pids, first = np.unique(pid[tv], return_index=True)
    folds = cv_folds(pids, tab["label"][np.nonzero(tv)[0][first]], k, int(cfg["seed"]))
    fold_of = np.array([folds[p] if ok else -1 for p, ok in zip(pid, tv)])
    if cfg["synthetic"]:
        say(f"fusion_cv: the fold networks train without the {cfg['synthetic']} synthetic patches (their generators "
            "learned from train patients, held-out ones included)")
    parts, record = [], []
    for f in range(k):
        rows, held = np.nonzero(tv & (fold_of != f))[0], np.nonzero(fold_of == f)[0]
        d = out_dir / "fusion_cv" / f"fold{f}"
        d.mkdir(parents=True, exist_ok=True)
        rows_digest = config.digest(rows.tolist())
        fold_id = config.digest({"run": run_id, "k": k, "fold": f, "rows": rows_digest})
        model, _ = build()
        opt, sched = optimizer(model, cfg)
        ckpt, start = d / "checkpoint.pt", 0
        if ckpt.is_file():
            c = load_checkpoint(ckpt)
            if c.get("run_id") == fold_id and int(c["epoch"]) < epochs:
                _restore(c, model, opt, sched)
                start = int(c["epoch"]) + 1
            else:  # another run's (or a longer) fold: start it over
                say(f"fusion_cv fold {f + 1}/{k}: checkpoint of another run or longer training ignored")
        loader = train_loader(st, rows, chain, cfg)
        for epoch in range(start, epochs):
            losses = train_epoch(model, opt, sched, loader, epoch, size, dev)
            _atomic_torch_save({"run_id": fold_id, "epoch": epoch, **_state(model, opt, sched)}, ckpt)
            say(f"fusion_cv fold {f + 1}/{k}: epoch {epoch + 1}/{epochs}, train loss "
                f"{np.mean(losses) if losses else float('nan'):.4f} ({len(rows)} patches)")
        probs = store_probs(model, st, held, chain, size, dev, workers=int(cfg["num_workers"]) or 1)
        part = patient_table(tab, held, probs, cfg["aggregation"])
        parts.append(part)
        trained_on = sorted(set(pid[rows].tolist()))
        record.append({"fold": f, "held_out": {str(p): float(v) for p, v in zip(part["patient_id"], part["image_prob"])},
                       "train_rows": {"n": int(len(rows)), "digest": rows_digest},
                       "train_patients": {"n": len(trained_on), "ids_digest": ids_digest(trained_on)}})
    table = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    cv = {"k": k, "seed": int(cfg["seed"]), "epochs": int(epochs), "synthetic": 0,
          "folds_digest": config.digest(sorted(folds.items())), "folds": record}
    return table, cv


def train(pipeline: dict[str, Any], store: str | Path, out: str | Path, arch: str | None = None, *,
          synthetic: int | None = None, seed: int | None = None, epochs: int | None = None,
          device: str | None = None, strict: bool = False, log: Callable[[str], None] | None = print,
          patient_from: str | None = None,
          **overrides) -> dict[str, Any]:
    """Train one architecture on the store's splits; write the bundle to ``OUT/<arch>``; return a summary.

    ``arch`` defaults to the pipeline's ``classifier``; ``synthetic`` = number of synthetic (GAN) patches to
    add to the training split (GAN sweep); ``seed`` fixes initialisation, batch order and dropout;
    ``strict`` refuses synthetic rows of generators that learned from patients outside the current train split
    (default: leave them out with a warning); ``overrides`` replace other ``training`` keys (``batch_size``,
    ``lr``, ...). Resumes from ``OUT/<arch>/checkpoint.pt`` when it belongs to the same run; a finished run is not trained again.
    ``patient_from``: "slide" or "tcga" to accept a store whose patient ids are slide ids (see splits.py).
    """
    from .evaluate import apply_fusion, fit_fusion, metrics_at, roc_points, youden_threshold
    from .splits import check_assigned, check_patients

    t0 = time.perf_counter()
    given = {k: v for k, v in dict(synthetic=synthetic, seed=seed, epochs=epochs, device=device, **overrides).items()
             if v is not None}
    bad = config.validation_errors({"training": given})  # the pipeline's own values were checked when it was loaded
    if bad:  # epochs=2.5 ran 2 epochs; --epochs 0 ran no epoch and ended in a FileNotFoundError traceback (no best weights)
        raise ConfigError(f"training setting {bad[0].removeprefix('$.training.')}; give a valid value")
    cfg = settings(pipeline, **given)
    cref = pipeline.get("classifier") or {"name": "resnet50"}
    arch = arch or cref["name"]
    cparams = dict(cref.get("params") or {}) if cref["name"] == arch else {}
    plugin = registry.get("classifier", arch)
    st = PatchStore.open(store)
    tab = st.table()
    if not np.any(tab["split"] == "train"):
        raise ConfigError(f"store {store} has no split yet; run `slidestream split PIPELINE --store {store}` first")
    check_patients(st, patient_from)
    check_assigned(tab["split"], tab["patient_id"], tab["slide_id"], tab["synthetic"], store)
    fref = pipeline.get("fusion")
    if cfg["fusion_cv"] and not fref:
        raise ConfigError("training.fusion_cv (--fusion-cv) fits the pipeline's fusion, but it has no fusion section "
                          '(e.g. "fusion": {"name": "age_gda"})')
    if fref:  # fail now, not after training: the fusion split (or the folds) must be able to fit the fusion
        real = np.nonzero(~tab["synthetic"].astype(bool))[0]
        blank = patient_table(tab, real, np.full(len(real), 0.5), cfg["aggregation"])
        fit_fusion(blank, fref["name"], fref.get("params"), "oof" if cfg["fusion_cv"] else cfg["fusion_split"])
        if cfg["fusion_cv"]:
            from .splits import cv_folds

            tv = np.isin(blank["split"], ("train", "val"))
            cv_folds(blank["patient_id"][tv], blank["label"][tv], int(cfg["fusion_cv"]), int(cfg["seed"]))
    out_dir = Path(out) / arch
    out_dir.mkdir(parents=True, exist_ok=True)
    logf = open(out_dir / "train.log", "a")

    def say(msg: str) -> None:
        line = f"[{arch}] {msg}"
        logf.write(time.strftime("%H:%M:%S ") + line + "\n")
        logf.flush()
        if log:
            log(line)

    dev = pick_device(cfg["device"])
    chain, channels = norm_chain(pipeline)
    size = int(cfg["input_size"] or plugin.input_size)  # the network's input side; patches are resized to it
    pool = synthetic_pool(st, strict, say) if cfg["synthetic"] else None
    train_rows = training_rows(tab, int(cfg["synthetic"] or 0), int(cfg["seed"]), pool)
    # real rows only: synthetic (GAN) rows are split "train", but never let a hand-set split bring them into val
    val_rows = np.nonzero((tab["split"] == "val") & ~tab["synthetic"].astype(bool))[0]
    if not len(val_rows):
        n = len(np.unique(tab["patient_id"][~tab["synthetic"].astype(bool)]))
        raise ConfigError(f"the store's validation split is empty ({n} patients); re-split with a val part in the ratios "
                          "(e.g. 6:1:1) and enough patients for one in val")
    run_id = config.digest({"pipeline": {k: v for k, v in pipeline.items() if k not in ("evaluation", "description")},
                            "store": st.manifest.get("extraction_hash"), "rows": len(st),
                            "split": st.manifest.get("split"), "arch": arch,
                            "cfg": {k: v for k, v in cfg.items() if k not in ("epochs", "num_workers", "device", "fusion_cv")}})

    def build():  # the initial network (same for the main run and every fusion_cv fold)
        torch.manual_seed(int(cfg["seed"]))
        model = plugin.build(num_classes=2, in_channels=channels, dropout=float(cfg["dropout"]), **cparams)
        if not cfg["weights"]:
            return model.to(dev), {"kind": "scratch"}
        from slidestream.plugins.classifiers.nets import load_imagenet

        counts = load_imagenet(model, cfg["weights"])
        return model.to(dev), {"kind": "imagenet", "file": str(cfg["weights"]),
                               "sha256": bundle_mod.sha256_file(Path(cfg["weights"])), **counts}

    model, init = build()
    if init["kind"] == "imagenet":
        say(f"initialised from ImageNet weights {cfg['weights']} ({init['loaded']} tensors, "
            f"{init['adapted']} adapted to {channels} channel(s), {init['skipped']} left random)")
    else:
        say("no training.weights given: training FROM SCRATCH (random initialisation, not ImageNet as in the paper)")
    opt, sched = optimizer(model, cfg)
    history: list[dict] = []
    best: dict | None = None
    best_state: dict | None = None  # the best epoch's weights: in the checkpoint, committed with it
    start = 0
    ckpt = out_dir / "checkpoint.pt"
    if ckpt.is_file():
        c = load_checkpoint(ckpt)
        if c.get("run_id") != run_id:
            raise ConfigError(f"{out_dir} holds a checkpoint of a different training run (other pipeline, store, split "
                              "or settings); use a new --out or delete it to start over")
        if int(c["epoch"]) + 1 > int(cfg["epochs"]):  # its history and best epoch would pass for a shorter run's
            raise ConfigError(f"{out_dir} holds a run already trained for {int(c['epoch']) + 1} epochs, more than the "
                              f"{cfg['epochs']} asked (--epochs, training.epochs); ask for {int(c['epoch']) + 1} or more "
                              "to resume it, or use a new --out")
        _restore(c, model, opt, sched)
        history, start = json.loads(c["history"]), int(c["epoch"]) + 1
        best = json.loads(c["best"]) if c.get("best") else None
        if "best_state" in c:
            best_state = c["best_state"]
        else:  # a checkpoint of an older version: its best weights were written beside it
            from safetensors.torch import load_file

            best_state = load_file(str(out_dir / "best.safetensors"))
        say(f"resuming after epoch {start} of {cfg['epochs']} from {ckpt}")

    loader = train_loader(st, train_rows, chain, cfg)
    say(f"{len(train_rows)} training patches ({int(np.sum(tab['synthetic'][train_rows]))} synthetic), "
        f"{len(val_rows)} validation patches; input {channels}x{size}x{size}; device {dev}; "
        f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, lr {cfg['lr']:g} / (1 + {cfg['lr_decay']:g} * step), "
        f"weight decay {cfg['weight_decay']:g}")
    for epoch in range(start, int(cfg["epochs"])):
        te = time.perf_counter()
        losses = train_epoch(model, opt, sched, loader, epoch, size, dev)
        vp = store_probs(model, st, val_rows, chain, size, dev, workers=int(cfg["num_workers"]) or 1)
        vy = tab["label"][val_rows].astype(int)
        vloss = float(-np.mean(np.log(np.clip(np.where(vy == 1, vp, 1 - vp), 1e-7, 1))))
        ptab = patient_table(tab, val_rows, vp, cfg["aggregation"])
        vm = metrics_at(ptab["label"], ptab["image_prob"], float(cfg["threshold"]))
        m = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else None, "val_loss": vloss,
             "val_auc": vm["auc"], "val_accuracy": vm["accuracy"], "lr": opt.param_groups[0]["lr"],
             "seconds": round(time.perf_counter() - te, 2)}
        history.append(m)
        if _better(m, best, cfg["select"]):
            best, best_state = m, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        _atomic_torch_save({"run_id": run_id, "epoch": epoch, **_state(model, opt, sched), "history": json.dumps(history),
                            "best": json.dumps(best), "best_state": best_state}, ckpt)
        auc = "n/a" if vm["auc"] is None else f"{vm['auc']:.3f}"
        say(f"epoch {epoch + 1}/{cfg['epochs']}: train loss {m['train_loss']:.4f}, val loss {vloss:.4f}, "
            f"val patient AUC {auc} ({m['seconds']:.1f} s){'  *best' if best is m else ''}")
    atomic_write_text(out_dir / "history.json", json.dumps(history, indent=1))

    # ---- the best epoch: score every split, fit fusion, write bundle + predictions
    model.load_state_dict(best_state)
    real = np.nonzero(~tab["synthetic"].astype(bool))[0]
    probs = store_probs(model, st, real, chain, size, dev, workers=int(cfg["num_workers"]) or 1)
    ptab = patient_table(tab, real, probs, cfg["aggregation"])
    write_predictions(out_dir / "predictions.csv", ptab)
    # fusion fitted out of sample by default: on the val patients, whose scores come from a network that never
    # trained on them (training.fusion_split "train" fits in sample), or with training.fusion_cv on the
    # out-of-fold scores of every train+val patient; never on test
    if fref and cfg["fusion_cv"]:
        oof, cv = fusion_cv_scores(st, tab, cfg, build, chain, size, dev, run_id, out_dir, best["epoch"] + 1, say)
        fusion = {**fit_fusion(oof, fref["name"], fref.get("params"), "oof"), "cv": cv}
        say(f"fusion {fref['name']} fitted on the out-of-fold scores of {fusion['n']} train+val patients "
            f"({cv['k']} folds, {cv['epochs']} epochs each; fold digest {cv['folds_digest']})")
    else:
        fusion = fit_fusion(ptab, fref["name"], fref.get("params"), cfg["fusion_split"]) if fref else None
    # per predictor, the Youden threshold on the val patients: `evaluate --bundle --threshold youden` applies it to
    # a table of held-out patients (no val rows there to choose it on)
    val = ptab["split"] == "val"
    scores = {"image": ptab["image_prob"], **(apply_fusion(fusion, ptab) if fusion else {})}
    youden = {k: youden_threshold(ptab["label"][val], v[val]) for k, v in scores.items()} if val.any() else {}
    metrics = {}
    for split in ("val", "test"):
        sel = ptab["split"] == split
        if np.any(sel):
            y, p = ptab["label"][sel], ptab["image_prob"][sel]
            metrics[split] = {**metrics_at(y, p, float(cfg["threshold"])), "roc": roc_points(y, p)}
    meta = {"arch": arch, "classifier_params": cparams, "in_channels": channels, "input_size": size,
            "patch_size": int(st.patches.shape[1]), "dropout": float(cfg["dropout"]),
            "normalization": (pipeline.get("normalization") or {}).get("classifier"), "aggregation": cfg["aggregation"],
            "threshold": float(cfg["threshold"]), "youden": youden, "fusion": fusion, "init": init, "training": cfg,
            "best_epoch": best["epoch"] if best else None, "selection": cfg["select"], "selection_split": "val",
            "metrics": {s: {k: v for k, v in m.items() if k != "roc"} for s, m in metrics.items()},
            # the patients it trained on (real train rows; synthetic rows come from generators of train patients)
            # and those that chose its epoch: `evaluate --bundle` refuses a test split holding any of them
            "patients": {"train": bundle_mod.patient_set(tab["patient_id"][np.setdiff1d(train_rows, np.flatnonzero(
                             tab["synthetic"].astype(bool)))]),
                         "val": bundle_mod.patient_set(tab["patient_id"][val_rows])}}
    # the bundle's pipeline: the store's extraction sections (how its patches were cut) + this run's learning ones
    spipe = st.manifest.get("pipeline") or {}
    bpipe = frozen({**pipeline, **{k: spipe[k] for k in config.EXTRACTION_SECTIONS if k in spipe}})  # no stain-target file
    meta["extraction_hash"] = st.manifest.get("extraction_hash") or config.extraction_hash(bpipe)
    bundle_mod.save(out_dir, model, bpipe, meta)
    summary = {"arch": arch, "bundle": str(out_dir), "best_epoch": meta["best_epoch"], "epochs": int(cfg["epochs"]),
               "train_rows": {"n": int(len(train_rows)), "synthetic": int(np.sum(tab["synthetic"][train_rows])),
                              "digest": config.digest(train_rows.tolist())},
               "init": init["kind"], "metrics": metrics, "history": history, "seconds": round(time.perf_counter() - t0, 1)}
    # training.json: settings, best epoch (chosen on val), fusion fit, image metrics at the best epoch; val metrics
    # are selection-set metrics (val chose the epoch). Only `slidestream evaluate` writes metrics.json.
    val_role = "selection set (chose the best epoch" + (
        ", fitted the fusion)" if fusion and fusion["fit_on"] == "val" else
        ", fitted the fusion with its out-of-fold scores)" if fusion and fusion["fit_on"] == "oof" else ")")
    doc = {"arch": arch, "settings": cfg, "init": init, "best_epoch": meta["best_epoch"],
           "best_epoch_chosen_on": "val", "selection": cfg["select"], "epochs": int(cfg["epochs"]),
           "fusion": ({**{k: fusion[k] for k in ("name", "params", "fit_on", "n", "ids_digest")},
                       **({"cv": {k: fusion["cv"][k] for k in ("k", "seed", "epochs", "folds_digest")}}
                          if "cv" in fusion else {})} if fusion else None),
           "metrics": {s_: {**{k: v for k, v in m.items() if k != "roc"},
                            "role": val_role if s_ == "val" else "held out"}
                       for s_, m in metrics.items()},
           "patients": {k: {"n": v["n"], "ids_digest": v["ids_digest"]} for k, v in meta["patients"].items()},
           "train_rows": summary["train_rows"], "seconds": summary["seconds"], "bundle": str(out_dir)}
    atomic_write_text(out_dir / "training.json", json.dumps(doc, indent=1, default=str))
    say(f"best epoch {summary['best_epoch'] + 1 if best else '-'}; "
        + "; ".join(f"{s} AUC {m['auc']:.3f}" if m["auc"] is not None else f"{s} AUC n/a" for s, m in metrics.items())
        + f"; bundle {out_dir}")
    logf.close()
    return summary


def compare(results: Sequence[dict[str, Any]], out: str | Path) -> dict[str, Path]:
    """Table 1-like comparison (markdown + JSON) and a Fig. 2-like ROC figure of several trained architectures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    rows = []
    lines = ["| split | model | sensitivity | specificity | accuracy | AUC | best epoch | init |",
             "|---|---|---|---|---|---|---|---|"]
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for split in ("val", "test"):
        for r in results:
            m = r["metrics"].get(split)
            if not m:
                continue
            rows.append({"split": split, "model": r["arch"], **{k: m[k] for k in ("sensitivity", "specificity", "accuracy", "auc", "n")},
                         "best_epoch": r["best_epoch"], "init": r["init"]})
            lines.append(f"| {'val (selection set)' if split == 'val' else split} | {r['arch']} | {f(m['sensitivity'])} | {f(m['specificity'])} | {f(m['accuracy'])} | "
                         f"{f(m['auc'])} | {r['best_epoch'] + 1} | {r['init']} |")
    md = out / "comparison.md"
    atomic_write_text(md, "# Classification performance by architecture (patient level, cf. Liu et al. 2020 Table 1)\n\n"
                      + "\n".join(lines) + "\n")
    js = out / "comparison.json"
    atomic_write_text(js, json.dumps(rows, indent=1))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, split, title in zip(axes, ("val", "test"), ("(a) validation set", "(b) test set")):
        for r in results:
            m = r["metrics"].get(split)
            if m and m["roc"]:
                ax.plot(m["roc"]["fpr"], m["roc"]["tpr"], label=f"{r['arch']} (AUC = {m['auc']:.3f})")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set(xlabel="False positive rate", ylabel="True positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
        if ax.get_legend_handles_labels()[0]:  # no curves (one class): no legend (matplotlib warns on stderr)
            ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    roc = out / "roc.png"
    fig.savefig(roc, dpi=120)
    plt.close(fig)
    return {"markdown": md, "json": js, "roc": roc}


def train_many(pipeline: dict[str, Any], store: str | Path, out: str | Path, archs: Sequence[str] | None = None,
               **kw) -> dict[str, Any]:
    """Train each architecture in ``archs`` (default: the pipeline's classifier) and compare them."""
    archs = list(archs or [(pipeline.get("classifier") or {"name": "resnet50"})["name"]])
    results = [train(pipeline, store, out, a, **kw) for a in archs]
    return {"results": results, "comparison": compare(results, out)}
