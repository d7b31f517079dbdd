"""Experiments of the paper that combine several runs. ``gan_sweep``: Liu et al. 2020, Table 2 and Fig. 3.

The classifier is retrained once per number of GAN patches added to the training split, on the store's
fixed patient split and with the same seed (initialisation, batch order, dropout), so the runs differ
only in the synthetic patches. The synthetic subsets are nested: ``engine.train.training_rows`` draws a
seeded permutation per class and takes its first ``count / 2`` patches of each class, so the run with
3,000 patches holds the 2,000 of the previous one. Each run is an ordinary ``slidestream train`` output
(``OUT/synthetic-<count>/<arch>``) and resumes after an interruption.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ConfigError
from .store import PatchStore, atomic_write_text


def gan_sweep(pipeline: dict[str, Any], store: str | Path, counts: Sequence[int], out: str | Path,
              epochs: int | None = None, device: str | None = None, seed: int | None = None,
              log: Callable[[str], None] | None = print, **overrides) -> dict[str, Any]:
    """Train one classifier per count of synthetic patches; write ``table.md``, ``table.json`` and ``roc.png``."""
    from . import train as train_mod

    bad = next((c for c in counts if isinstance(c, bool) or not float(c).is_integer()), None)
    if bad is not None:  # int(2.5) was 2, silently: a run of other patches than the table says
        raise ConfigError(f"gan-sweep: counts must be whole numbers of synthetic patches, got {bad!r}")
    counts = sorted({int(c) for c in counts})
    if not counts or counts[0] < 0:
        raise ConfigError("gan-sweep: give non-negative counts, e.g. --counts 0,1000,2000,3000")
    st = PatchStore.open(store)
    t = st.table(["split", "synthetic", "label"])
    if not np.any(t["split"] == "train"):
        raise ConfigError(f"store {store} has no split yet; run `slidestream split PIPELINE --store {store}` first")
    syn = t["synthetic"].astype(bool)
    if counts[-1] > int(syn.sum()):
        raise ConfigError(f"gan-sweep needs {counts[-1]} synthetic patches but store {store} holds {int(syn.sum())} "
                          f"({int(np.sum(syn & (t['label'] == 1)))} mutant, {int(np.sum(syn & (t['label'] == 0)))} "
                          "wildtype); add more with `slidestream gan sample GAN --n N --into STORE`")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for c in counts:
        if log:
            log(f"gan-sweep: {c} synthetic patches")
        r = train_mod.train(pipeline, store, out / f"synthetic-{c}", synthetic=c, seed=seed, epochs=epochs,
                            device=device, log=log, **overrides)
        results.append({"synthetic": c, **r})
    paths = write_table(results, out)
    return {"results": results, **paths}


def write_table(results: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """Table 2-like markdown + JSON (sens, spec, acc, AUC on val and test) and Fig. 3-like ROC curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    base = results[0]["synthetic"]
    rows, md = [], ["# Classification performance with GAN-augmented training (patient level, cf. Liu et al. 2020 Table 2)", ""]
    for split, title in (("val", "On validation set (selection set: it chose each run's best epoch; optimistic)"),
                         ("test", "On test set")):
        md += [f"## {title}", "", "| GAN samples | sensitivity | specificity | accuracy | AUC |", "|---|---|---|---|---|"]
        for r in results:
            m = r["metrics"].get(split)
            if not m:
                continue
            name = "baseline" if r["synthetic"] == 0 else f"+{r['synthetic'] / 1000:g} K"
            md.append(f"| {name} | {f(m['sensitivity'])} | {f(m['specificity'])} | {f(m['accuracy'])} | {f(m['auc'])} |")
            rows.append({"split": split, "synthetic": r["synthetic"], "arch": r["arch"], "best_epoch": r["best_epoch"],
                         **{k: m[k] for k in ("n", "sensitivity", "specificity", "accuracy", "auc")}})
        md.append("")
    md.append(f"Each run: `{results[0]['arch']}`, identical patient split and seed; the first row (+{base}) is the reference.")
    atomic_write_text(out / "table.md", "\n".join(md) + "\n")
    atomic_write_text(out / "table.json", json.dumps(rows, indent=1))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, split, title in zip(axes, ("val", "test"), ("(a) validation set", "(b) test set")):
        for r in results:
            m = r["metrics"].get(split)
            if m and m.get("roc"):
                name = "baseline" if r["synthetic"] == 0 else f"+{r['synthetic']} GAN"
                ax.plot(m["roc"]["fpr"], m["roc"]["tpr"], label=f"{name} (AUC = {m['auc']:.3f})")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set(xlabel="False positive rate", ylabel="True positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
        if ax.get_legend_handles_labels()[0]:  # no curves (one class): no legend (matplotlib warns on stderr)
            ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=120)
    plt.close(fig)
    return {"markdown": out / "table.md", "json": out / "table.json", "roc": out / "roc.png"}
