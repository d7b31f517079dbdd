"""Patient-level, label-stratified train/val/test splits (paper: 6:1:1, random), written to the store.

Every patch of a patient lands in the same split, so no patient is in two splits. Within each label the
patients are shuffled with the seed and cut by the ratios (largest-remainder rounding, at least one
patient per non-zero part when a class has enough patients). Synthetic rows (GAN patches) always go to
``train``: they were generated from training patches only.

Patient identity: slides without a ``patient_id`` in the cohort fall back to their slide id (the slide record
says ``patient_source: "slide"``), so two slides of one patient could land in train and test. ``split`` and
``train`` refuse such a store unless told where patients come from (``patient_from``): ``"slide"`` (each
slide is its own patient, explicitly) or ``"tcga"`` (the patient is the first 12 characters of a TCGA slide
barcode, e.g. ``TCGA-CS-4938``). Both rewrite the store's ``patient_id`` column, and the split records the
choice in the manifest (``split.patient_from``; ``"table"`` = the cohort's own patient ids).
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from .errors import ConfigError
from .store import writing

NAMES = ("train", "val", "test")
PATIENT_FROM = ("table", "slide", "tcga")
TCGA = re.compile(r"TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}", re.IGNORECASE)  # project-TSS-participant: the patient


def fell_back(store) -> bool:
    """True when some slide's patient id is its slide id (no patient_id in the cohort). Records written before
    slide records carried ``patient_source`` count as ``"table"``."""
    return any(r.get("patient_source") == "slide" for r in store.records("slides").values())


def _refusal(store) -> ConfigError:
    return ConfigError(f"store {store.path}: some patient ids fell back to slide ids (no patient_id in the cohort), "
                       "so slides of one patient could land in different splits; give patient_id in the slides CSV, "
                       "or re-split with --patient-from tcga (TCGA barcodes) or --patient-from slide (one patient a slide)")


def tcga_patients(slide_ids: Sequence[str]) -> np.ndarray:
    """The patient barcode (first 12 characters, e.g. TCGA-CS-4938) of each TCGA slide id."""
    ids = [str(sid) for sid in slide_ids]
    for sid in ids:
        if not TCGA.match(sid):
            raise ConfigError(f"--patient-from tcga: slide id {sid!r} is not a TCGA barcode (TCGA-XX-XXXX...); "
                              "give patient_id in the slides CSV or use --patient-from slide")
    return np.array([sid[:12].upper() for sid in ids], dtype=str)


def check_patients(store, patient_from: str | None = None) -> None:
    """Refuse to train on a store whose patients are slide ids nobody chose (see the module docstring);
    ``patient_from`` must match how the store was split."""
    recorded = (store.manifest.get("split") or {}).get("patient_from")
    if patient_from not in (None, *PATIENT_FROM):
        raise ConfigError(f"--patient-from must be one of {', '.join(PATIENT_FROM)}, not {patient_from!r}")
    if recorded is None and patient_from != "tcga":  # split before splits recorded it: the ids as they are
        if patient_from != "slide" and fell_back(store):
            raise _refusal(store)
    elif patient_from and patient_from != recorded:
        raise ConfigError(f"store {store.path} was split with --patient-from {recorded or 'table'}, not "
                          f"{patient_from}; re-run `slidestream split ... --patient-from {patient_from}` first")


def refuse_copies_across_patients(store, slide_ids, patient_ids) -> None:
    """ConfigError when two slides of different patients are byte-identical files (equal ``fingerprint`` in
    their records: size and first/last 64 KiB): a split could put the same pixels in train and in test."""
    patient = dict(zip((str(s) for s in slide_ids), (str(p) for p in patient_ids)))
    by_print: dict[str, list[str]] = {}
    for sid, rec in store.records("slides").items():
        if rec.get("fingerprint") and sid in patient:
            by_print.setdefault(rec["fingerprint"], []).append(sid)
    clashes = [sids for sids in by_print.values() if len({patient[s] for s in sids}) > 1]
    if clashes:
        shown = "; ".join(" = ".join(f"{s} (patient {patient[s]})" for s in sids) for sids in clashes[:5])
        raise ConfigError(f"split: {len(clashes)} slide file{'s are' if len(clashes) > 1 else ' is'} copied under "
                          f"another patient (byte-identical: same size, same first and last 64 KiB): {shown}; the same "
                          "pixels would land in train and test: remove the copies from the cohort and extract again")


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
    if len(ratios) != 3 or not np.isfinite(ratios).all() or min(ratios) < 0 or ratios[0] <= 0:  # NaN: a KeyError
        raise ConfigError(f"split ratios must be three non-negative numbers train:val:test with train > 0, got {list(ratios)}")
    if seed < 0:
        raise ConfigError(f"split seed must be 0 or more, got {seed}")
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


def check_assigned(split: np.ndarray, patient_id: np.ndarray, slide_id: np.ndarray, synthetic: np.ndarray,
                   store, unsplit_ok: bool = False) -> None:
    """Refuse (one-line ConfigError) a split store whose real rows are not all in train/val/test (slides
    extracted after ``split`` would be left out of training and evaluation without a word; ``unsplit_ok``:
    allowed, for ``predict``) or whose patient has rows in two splits (a hand-edited split column: its patches
    in train and test, or its predicted row given the split of its first slide)."""
    from .features import as_str as text  # zarr's variable-length strings -> fixed-width str

    real = ~np.asarray(synthetic).astype(bool)
    sp, pid = text(split)[real], text(patient_id)[real]
    unsplit = ~np.isin(sp, NAMES)
    if unsplit.any() and not unsplit_ok:
        sids = np.unique(text(slide_id)[real][unsplit])
        raise ConfigError(f"store {store}: {int(unsplit.sum())} patches of {len(sids)} slide(s) (e.g. {sids[0]}) are in no "
                          f"split (extracted after `slidestream split`?); re-run `slidestream split PIPELINE --store {store}`")
    patients, ip = np.unique(pid, return_inverse=True)
    names, isp = np.unique(sp, return_inverse=True)
    counts = np.bincount(np.unique(ip * len(names) + isp) // len(names), minlength=len(patients))  # splits per patient
    if np.any(counts > 1):
        bad = str(patients[counts > 1][0])
        shown = ", ".join(sorted(s_ or "no split" for s_ in set(sp[pid == bad].tolist())))
        raise ConfigError(f"store {store}: patient {bad!r} has patches in {shown} ({int(np.sum(counts > 1))} such "
                          f"patient(s)): the split column was edited, or slides were added after the split; re-run "
                          f"`slidestream split PIPELINE --store {store}`")


def thin_splits(summary: dict[str, dict[str, int]], ratios: Sequence[float] | None = None) -> list[str]:
    """Warnings for a ``split_store`` summary: a val or test split without a patient of each class (too few
    patients for the ratios) has no AUC, so training selects its epoch by loss and evaluate reports none. A
    split whose ratio is 0 (asked to be empty) is not warned about."""
    out = []
    for i, (name, use) in enumerate((("val", "choose the best epoch by AUC"), ("test", "give a test AUC")), start=1):
        v = summary[name]
        if ratios is not None and not ratios[i] and not v["patients"]:
            continue
        if v["mutant"] == 0 or v["wildtype"] == 0:
            out.append(f"warning: the {name} split holds {v['mutant']} mutant and {v['wildtype']} wildtype patients: too "
                       f"few to {use}; use more patients, or ratios with a larger {name} part")
    return out


def cv_folds(patients: Sequence[str], labels: Sequence[int], k: int, seed: int = 0) -> dict[str, int]:
    """Patient id -> fold 0..k-1: stratified by label, shuffled with ``seed`` (scikit-learn's StratifiedKFold over
    the sorted patient ids, so the assignment depends only on the patient set, labels, k and seed). Used by
    ``training.fusion_cv``: every patient is held out exactly once."""
    from sklearn.model_selection import StratifiedKFold

    pids = np.array([str(p) for p in patients])
    order = np.argsort(pids, kind="stable")
    pids, y = pids[order], np.asarray(labels, int)[order]
    counts = np.bincount(y, minlength=2)
    if k < 2 or counts.min() < k:
        raise ConfigError(f"training.fusion_cv = {k} needs 2 <= K <= the patients of each class among train+val "
                          f"({counts[1]} mutant, {counts[0]} wildtype); use a smaller --fusion-cv")
    folds = StratifiedKFold(k, shuffle=True, random_state=seed).split(pids, y)
    return {str(pids[i]): f for f, (_, held) in enumerate(folds) for i in held}


def split_store(store, ratios: Sequence[float] = (6, 1, 1), seed: int = 0, kfold: int | None = None,
                fold: int = 0, patient_from: str | None = None) -> dict[str, dict[str, int]]:
    """Assign splits for every patient in ``store`` (a PatchStore open ``r+``) and write the ``split``
    column. ``patient_from`` (``slide``/``tcga``) first rewrites ``patient_id`` from the slide ids; without it
    a store whose patient ids fell back to slide ids is refused.
    Returns ``{split: {"patients": n, "patches": n, "mutant": n_patients, "wildtype": n_patients}}``."""
    if patient_from not in (None, *PATIENT_FROM):
        raise ConfigError(f"--patient-from must be one of {', '.join(PATIENT_FROM)}, not {patient_from!r}")
    t = store.table(["patient_id", "slide_id", "label", "synthetic"])
    real = ~t["synthetic"].astype(bool)
    if patient_from in ("slide", "tcga"):
        sids = [str(s) for s in t["slide_id"][real]]
        pid = np.array([str(p) for p in t["patient_id"]], dtype=object)
        pid[real] = sids if patient_from == "slide" else tcga_patients(sids)
        store.set_column("patient_id", pid)
        t["patient_id"] = store.column("patient_id")
    elif fell_back(store):  # patient ids from the table, but some are slide ids
        raise _refusal(store)
    refuse_copies_across_patients(store, t["slide_id"][real], t["patient_id"][real])
    pids, first = np.unique(t["patient_id"][real], return_index=True)
    if not len(pids):  # else a split of nobody is written and train says "no split yet; run split"
        raise ConfigError(f"split: store {store.path} holds no patches of any slide (every slide failed or was empty?); "
                          "see the errors of `slidestream extract` and extract again")
    labels = t["label"][real][first]
    if np.any(labels < 0):
        raise ConfigError("split: some patients have no label (-1); give every slide a label in the slides CSV")
    for p in pids:  # one label per patient
        if len(set(t["label"][real][t["patient_id"][real] == p].tolist())) > 1:
            raise ConfigError(f"split: patient {p} has slides with different labels; fix the slides CSV")
    mapping = assign(pids.tolist(), labels.tolist(), ratios, seed, kfold, fold)
    split = np.array([mapping.get(p, "train") for p in t["patient_id"]], dtype=object)
    split[~real] = "train"
    store.manifest["split"] = {"ratios": list(ratios), "seed": seed, "kfold": kfold, "fold": fold,
                               "patient_from": patient_from or "table"}
    with writing(store.path):  # a full disk: one line naming the store, not a zarr traceback
        store.set_column("split", split.astype(str))
        store.save_manifest()
    summary = {}
    for name in NAMES:
        ps = [p for p in pids if mapping[p] == name]
        lab = dict(zip(pids.tolist(), labels.tolist()))
        summary[name] = {"patients": len(ps), "patches": int(np.sum((split == name) & real)),
                         "mutant": sum(lab[p] == 1 for p in ps), "wildtype": sum(lab[p] == 0 for p in ps)}
    summary["train"]["synthetic"] = int(np.sum(~real))
    return summary
