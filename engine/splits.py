"""Patient-level, label-stratified train/val/test splits (paper: 6:1:1, random), written to the store.

Every patch of a patient lands in the same split, so no patient is in two splits. Within each label the
patients are shuffled with the seed and cut by the ratios (largest-remainder rounding, at least one
patient per non-zero part when a class has enough patients). Synthetic rows (GAN patches) always go to
``train``: they were generated from training patches only.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import ConfigError

NAMES = ("train", "val", "test")


def _cut(n: int, ratios: Sequence[float]) -> list[int]:
    """Split n items into len(ratios) counts proportional to ratios (largest remainder)."""
    r = np.asarray(ratios, float) / float(np.sum(ratios))
    exact = r * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    # give an empty non-zero part one item from the largest part (small cohorts)
    for i in range(len(counts)):
        if counts[i] == 0 and r[i] > 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    return counts.tolist()


def assign(patients: Sequence[str], labels: Sequence[int], ratios: Sequence[float] = (6, 1, 1), seed: int = 0,
           kfold: int | None = None, fold: int = 0) -> dict[str, str]:
    """Patient id -> split name. ``labels`` is one label per patient (same order).

    Without ``kfold``: train/val/test by ``ratios``. With ``kfold = k``: stratified k-fold over patients;
    fold ``fold`` is ``test``, fold ``(fold + 1) % k`` is ``val``, the rest ``train``.
    """
    patients, labels = list(patients), np.asarray(labels)
    if len(set(patients)) != len(patients):
        raise ConfigError("split: patient ids must be unique")
    if len(ratios) != 3 or min(ratios) < 0 or ratios[0] <= 0:
        raise ConfigError(f"split ratios must be three non-negative numbers train:val:test with train > 0, got {list(ratios)}")
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for lab in sorted(set(labels.tolist())):
        group = [p for p, l in zip(patients, labels) if l == lab]
        group = [group[i] for i in rng.permutation(len(group))]
        if kfold:
            if not 2 <= kfold <= len(patients) or not 0 <= fold < kfold:
                raise ConfigError(f"kfold must be 2..{len(patients)} and fold 0..kfold-1, got kfold={kfold} fold={fold}")
            # deal patients round-robin into folds; the start rotates per label to balance fold sizes
            start = len(out) % kfold
            for i, p in enumerate(group):
                f = (start + i) % kfold
                out[p] = "test" if f == fold else "val" if f == (fold + 1) % kfold else "train"
        else:
            counts = _cut(len(group), ratios)
            edges = np.cumsum([0, *counts])
            for name, a, b in zip(NAMES, edges[:-1], edges[1:]):
                for p in group[a:b]:
                    out[p] = name
    return out


def split_store(store, ratios: Sequence[float] = (6, 1, 1), seed: int = 0, kfold: int | None = None,
                fold: int = 0) -> dict[str, dict[str, int]]:
    """Assign splits for every patient in ``store`` (a PatchStore open ``r+``) and write the ``split``
    column. Returns ``{split: {"patients": n, "patches": n, "mutant": n_patients, "wildtype": n_patients}}``."""
    t = store.table(["patient_id", "label", "synthetic"])
    real = ~t["synthetic"].astype(bool)
    pids, first = np.unique(t["patient_id"][real], return_index=True)
    labels = t["label"][real][first]
    if np.any(labels < 0):
        raise ConfigError("split: some patients have no label (-1); give every slide a label in the slides CSV")
    for p in pids:  # one label per patient
        if len(set(t["label"][real][t["patient_id"][real] == p].tolist())) > 1:
            raise ConfigError(f"split: patient {p} has slides with different labels; fix the slides CSV")
    mapping = assign(pids.tolist(), labels.tolist(), ratios, seed, kfold, fold)
    split = np.array([mapping.get(p, "train") for p in t["patient_id"]], dtype=object)
    split[~real] = "train"
    store.set_column("split", split.astype(str))
    store.manifest["split"] = {"ratios": list(ratios), "seed": seed, "kfold": kfold, "fold": fold}
    store.save_manifest()
    summary = {}
    for name in NAMES:
        ps = [p for p in pids if mapping[p] == name]
        lab = dict(zip(pids.tolist(), labels.tolist()))
        summary[name] = {"patients": len(ps), "patches": int(np.sum((split == name) & real)),
                         "mutant": sum(lab[p] == 1 for p in ps), "wildtype": sum(lab[p] == 0 for p in ps)}
    summary["train"]["synthetic"] = int(np.sum(~real))
    return summary
