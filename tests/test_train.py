"""Training: paper defaults, model selection, synthetic rows, checkpoints and resume after SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.torch import load_file

from slidestream.engine import config, splits, train
from slidestream.engine.errors import ConfigError
from slidestream.engine.synthetic import make_store

PIPE = {"name": "t", "classifier": {"name": "small_cnn", "params": {"width": 8}}, "fusion": {"name": "age_gda"},
        "training": {"epochs": 3, "batch_size": 16, "lr": 3e-3, "num_workers": 1, "augment": True}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    st = make_store(tmp_path_factory.mktemp("train") / "s", n_patients=16, per_patient=12, patch=32)
    splits.split_store(st, (2, 1, 1), seed=0)
    return st.path


def test_paper_defaults_in_example_pipeline():
    t = train.settings(config.load(config.example("liu2020")))
    assert (t["epochs"], t["batch_size"], t["lr"], t["weight_decay"], t["betas"][0]) == (100, 16, 1e-5, 1e-6, 0.9)
    assert t["split"]["ratios"] == [6, 1, 1] and t["aggregation"]["method"] == "mean"


def test_training_schema_is_closed():
    errs = config.validation_errors({"training": {"epochs": 0, "learning_rate": 1}})
    assert any("epochs" in e for e in errs) and any("learning_rate" in e for e in errs)


def test_train_learns_and_writes_bundle(store, tmp_path):
    r = train.train_many(config.parse(PIPE), store, tmp_path, log=None)["results"][0]
    out = tmp_path / "small_cnn"
    assert r["init"] == "scratch" and "FROM SCRATCH" in (out / "train.log").read_text()
    assert r["metrics"]["test"]["auc"] >= 0.75  # the synthetic classes differ in nuclear texture
    hist = json.loads((out / "history.json").read_text())
    assert len(hist) == 3 and r["best_epoch"] == max(hist, key=lambda m: (m["val_auc"], -m["val_loss"]))["epoch"]
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["fusion"]["name"] == "age_gda" and meta["init"]["kind"] == "scratch"
    assert (tmp_path / "comparison.md").is_file() and (tmp_path / "roc.png").is_file()
    assert (out / "predictions.csv").read_text().splitlines()[0] == "patient_id,label,age,split,image_prob"


def test_synthetic_rows_added_balanced(store):
    from slidestream.engine.store import PatchStore

    tab = PatchStore.open(store).table()
    tab = {k: np.concatenate([v, v[:10]]) for k, v in tab.items()}
    tab["synthetic"][-10:] = True
    tab["label"][-10:] = [1] * 5 + [0] * 5
    rows = train.training_rows(tab, 4, seed=0)
    syn = rows[tab["synthetic"][rows]]
    assert len(syn) == 4 and tab["label"][syn].sum() == 2
    assert np.array_equal(rows, train.training_rows(tab, 4, seed=0))
    with pytest.raises(ConfigError, match="synthetic"):
        train.training_rows(tab, 20, seed=0)


SCRIPT = """
import sys
from slidestream.engine import config, train
pipe = config.parse({pipe!r})
train.train(pipe, {store!r}, {out!r}, log=None)
"""


def test_resume_after_sigkill_matches_uninterrupted_run(store, tmp_path):
    pipe = {**PIPE, "training": {**PIPE["training"], "epochs": 4, "augment": False}}
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(pipe=pipe, store=str(store), out=str(killed))])
    ckpt = killed / "small_cnn" / "checkpoint.pt"
    t0 = time.time()
    while not ckpt.exists() and proc.poll() is None and time.time() - t0 < 120:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (killed / "small_cnn" / "bundle.json").exists()
    subprocess.run([sys.executable, "-c", SCRIPT.format(pipe=pipe, store=str(store), out=str(killed))], check=True)
    assert "resuming after epoch" in (killed / "small_cnn" / "train.log").read_text()  # the same command resumes
    hist = json.loads((killed / "small_cnn" / "history.json").read_text())
    assert [m["epoch"] for m in (hist["history"] if isinstance(hist, dict) else hist)] == [0, 1, 2, 3]
    # the reference runs in a fresh process too: same torch thread settings as the killed run
    subprocess.run([sys.executable, "-c", SCRIPT.format(pipe=pipe, store=str(store), out=str(ref))], check=True)
    a, b = load_file(str(killed / "small_cnn" / "model.safetensors")), load_file(str(ref / "small_cnn" / "model.safetensors"))
    assert all(np.allclose(a[k].numpy(), b[k].numpy(), atol=1e-5) for k in a)


def test_other_run_in_same_out_refused(store, tmp_path):
    pipe = {**PIPE, "training": {**PIPE["training"], "epochs": 1}}
    train.train(config.parse(pipe), store, tmp_path, log=None)
    pipe2 = {**PIPE, "training": {**PIPE["training"], "epochs": 1, "lr": 1e-4}}
    with pytest.raises(ConfigError, match="different training run"):
        train.train(config.parse(pipe2), store, tmp_path, log=None)
