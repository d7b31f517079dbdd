"""Training: paper defaults, optimizer and lr decay, input size, model selection, synthetic rows, checkpoints
(every RNG) and resume after SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from slidestream.engine import config, splits, train
from slidestream.engine.errors import ConfigError
from slidestream.engine.synthetic import make_store

PIPE = {"name": "t", "classifier": {"name": "small_cnn", "params": {"width": 8}}, "fusion": {"name": "age_gda"},
        "training": {"epochs": 3, "batch_size": 16, "lr": 3e-3, "num_workers": 1, "augment": True, "input_size": 32}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    st = make_store(tmp_path_factory.mktemp("train") / "s", n_patients=16, per_patient=12, patch=32)
    splits.split_store(st, (2, 1, 1), seed=0)
    return st.path


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    """40 patients (20 per class), 8 patches of 16 px each; mutant patches are brighter (+40 gray levels, noise
    sd 30 per pixel and 10 per patient): a signal any CNN learns in a few epochs. Split 2:1:2 -> 16 test patients."""
    from slidestream.engine.store import PatchStore

    rng = np.random.default_rng(0)
    n, per, side = 40, 8, 16
    labels = np.array([1, 0] * (n // 2))
    pipe = config.with_defaults({"name": "learnable", "patches": {"size": side}, "store": {"chunk": 8}})
    st = PatchStore.create(tmp_path_factory.mktemp("learnable") / "s", side, pipe["store"],
                           {"extraction_hash": config.extraction_hash(pipe), "pipeline": pipe})
    level = 110 + 40 * labels[:, None] + rng.normal(0, 10, (n, 1))
    pix = level[:, :, None, None, None] + rng.normal(0, 30, (n, per, side, side, 3))
    meta = {"slide_id": np.repeat([f"P{i:02d}" for i in range(n)], per), "label": np.repeat(labels, per),
            "age": np.repeat(rng.normal(50, 10, n), per)}
    meta["patient_id"] = meta["slide_id"]
    st.append("all", np.clip(pix, 0, 255).astype(np.uint8).reshape(n * per, side, side, 3), meta, {"status": "done"})
    summary = splits.split_store(st, (2, 1, 2), seed=0)
    assert (summary["test"]["mutant"], summary["test"]["wildtype"]) == (8, 8)
    return st.path


def test_paper_defaults_in_example_pipeline():
    t = train.settings(config.load(config.example("liu2020")))
    assert (t["epochs"], t["batch_size"], t["lr"], t["lr_decay"], t["betas"][0]) == (100, 16, 1e-5, 1e-6, 0.9)
    assert t["weight_decay"] == 0 and train.DEFAULTS["weight_decay"] == 0 and train.DEFAULTS["lr_decay"] == 1e-6
    assert t["split"]["ratios"] == [6, 1, 1] and t["aggregation"]["method"] == "mean"


def test_keras_lr_decay_per_step_and_no_weight_decay():
    model = torch.nn.Linear(4, 2)
    cfg = {**train.DEFAULTS, "lr": 1e-3, "lr_decay": 0.5}
    opt, sched = train.optimizer(model, cfg)
    for it in range(4):  # Keras: the update after `it` updates uses lr / (1 + decay * it)
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 / (1 + 0.5 * it))
        model(torch.ones(1, 4)).sum().backward()
        opt.step()
        sched.step()
    assert opt.param_groups[0]["weight_decay"] == 0.0


def test_training_schema_is_closed():
    errs = config.validation_errors({"training": {"epochs": 0, "learning_rate": 1}})
    assert any("epochs" in e for e in errs) and any("learning_rate" in e for e in errs)


def test_train_learns_and_writes_bundle(learnable, tmp_path):
    pipe = {**PIPE, "training": {**PIPE["training"], "input_size": None, "lr_decay": 0.01}}
    r = train.train_many(config.parse(pipe), learnable, tmp_path, log=None)["results"][0]
    out = tmp_path / "small_cnn"
    log = (out / "train.log").read_text()
    assert r["init"] == "scratch" and "FROM SCRATCH" in log
    # 16 test patients, 8 per class. Hanley & McNeil (1982) standard error of the AUC under chance (A = 0.5,
    # Q1 = Q2 = 1/3): sqrt((A(1-A) + 7 (Q1 - A^2) + 7 (Q2 - A^2)) / 64) = 0.149; chance reaches
    # 0.5 + 2.326 * 0.149 = 0.846 with probability 1 % (one-sided), so 0.85 is a claim chance passes < 1 %.
    assert r["metrics"]["test"]["n"] == 16 and r["metrics"]["test"]["auc"] >= 0.85
    hist = json.loads((out / "history.json").read_text())
    hist = hist["history"] if isinstance(hist, dict) else hist
    assert len(hist) == 3 and r["best_epoch"] == max(hist, key=lambda m: (m["val_auc"], -m["val_loss"]))["epoch"]
    steps = 3 * -(-16 * 8 // 16)  # 3 epochs of 16 train patients x 8 patches in batches of 16
    assert hist[-1]["lr"] == pytest.approx(3e-3 / (1 + 0.01 * steps))  # Keras decay, once per step
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["fusion"]["name"] == "age_gda" and meta["init"]["kind"] == "scratch"
    # 16 px patches, resized on the fly to small_cnn's input size (64), at training and in the bundle
    assert meta["input_size"] == 64 and "input 3x64x64" in log
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
    assert json.loads((tmp_path / "small_cnn" / "bundle.json").read_text())["input_size"] == 32  # training.input_size wins
    pipe2 = {**PIPE, "training": {**PIPE["training"], "epochs": 1, "lr": 1e-4}}
    with pytest.raises(ConfigError, match="different training run"):
        train.train(config.parse(pipe2), store, tmp_path, log=None)


def _draws():
    import random

    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.normal(), random.random(),
            torch.cuda.FloatTensor(3).uniform_().tolist() if torch.cuda.is_available() else None)


def test_checkpoint_rng_state_restores_every_generator(store, tmp_path):
    state = train.rng_state()
    first = _draws()
    train.set_rng_state(state)
    assert _draws() == first  # torch CPU, numpy's global generator (incl. its cached gaussian), random, CUDA
    pipe = {**PIPE, "training": {**PIPE["training"], "epochs": 1}}
    train.train(config.parse(pipe), store, tmp_path, log=None)
    saved = torch.load(tmp_path / "small_cnn" / "checkpoint.pt", weights_only=True)["rng"]
    assert set(saved) == {"torch", "cuda", "numpy", "python"}
    train.set_rng_state(saved)  # what a resume does: loads back from a weights_only checkpoint
    again = _draws()
    train.set_rng_state(saved)
    assert _draws() == again


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_checkpoint_rng_state_covers_all_cuda_devices():
    state = train.rng_state()
    assert len(state["cuda"]) == torch.cuda.device_count()
    drops = [torch.nn.functional.dropout(torch.ones(64, device=f"cuda:{d}"), 0.5) for d in range(torch.cuda.device_count())]
    train.set_rng_state(state)
    again = [torch.nn.functional.dropout(torch.ones(64, device=f"cuda:{d}"), 0.5) for d in range(torch.cuda.device_count())]
    assert all(torch.equal(a, b) for a, b in zip(drops, again))
