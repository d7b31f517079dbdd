"""PG-GAN training resumes: after a SIGKILL of `slidestream gan train` it continues from the last checkpoint,
and a resumed run is bit-identical to an uninterrupted one (weights, Adam state and RNGs are checkpointed)."""
from __future__ import annotations

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

from slidestream.engine import config, splits
from slidestream.engine import augment
from slidestream.engine.synthetic import make_store
from slidestream.plugins.augmenters import pggan

SMALL = {"resolution": 16, "start_resolution": 8, "fmap_base": 128, "fmap_max": 32, "total_kimg": 6,
         "training_kimg": 1, "transition_kimg": 1, "minibatch": {}, "minibatch_default": 16,
         "checkpoint_kimg": 0.5, "tick_kimg": 0.5, "swd_images": 64, "device": "cpu"}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_sigkill_mid_training_then_rerun_continues_from_checkpoint(tmp_path):
    st = make_store(tmp_path / "store", n_patients=8, per_patient=16, patch=32)
    splits.split_store(st, (6, 1, 1), 0)
    pipe = {"name": "resume", "normalization": {"gan": {"name": "rgb_histogram"}},
            "augmenter": {"name": "pggan", "params": SMALL}}
    pfile = tmp_path / "pipe.json"
    pfile.write_text(json.dumps(pipe))
    out = tmp_path / "gan"
    cmd = [sys.executable, "-m", "slidestream.engine", "gan", "train", str(pfile), "--store", str(tmp_path / "store"),
           "--label", "wildtype", "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state_file, deadline, state = out / "pggan.json", time.time() + 120, {}
    try:
        while time.time() < deadline and proc.poll() is None:
            if state_file.exists():
                state = json.loads(state_file.read_text())
                if state.get("checkpoint") and state["nimg"] >= 1500:
                    break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)  # mid-run, no chance to clean up
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    state = json.loads(state_file.read_text())
    assert state["status"] == "training" and 1500 <= state["nimg"] < 6000
    killed_at = state["nimg"]
    assert augment.read_manifest(out)["status"] == "training"

    m = augment.train_gan(config.parse(pipe), tmp_path / "store", "wildtype", out, progress=False, log=None)
    state = json.loads(state_file.read_text())
    assert m["status"] == "done" and state["status"] == "done" and state["nimg"] >= 6000
    assert [r["resumed_at_kimg"] for r in state["runs"]] == [0.0, killed_at / 1000]
    kimgs = [json.loads(line)["kimg"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert kimgs.count(min(kimgs)) == 1 and max(kimgs) >= 6  # the rerun did not start again at 0
    assert len(list(out.glob("checkpoint-*.safetensors"))) == 1


def test_resumed_training_is_identical_to_uninterrupted(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    cfg = {"resolution": 8, "start_resolution": 4, "fmap_base": 64, "fmap_max": 16, "training_kimg": 0.3,
           "transition_kimg": 0.3, "minibatch": {}, "minibatch_default": 8, "checkpoint_kimg": 0.2, "tick_kimg": 1,
           "swd_images": 16, "device": "cpu"}
    pggan.train(x, tmp_path / "a", progress=False, total_kimg=1.2, **cfg)
    pggan.train(x, tmp_path / "b", progress=False, total_kimg=0.5, **cfg)  # stops early ...
    pggan.train(x, tmp_path / "b", progress=False, total_kimg=1.2, **cfg)  # ... and is resumed
    a, b = load_file(str(tmp_path / "a" / "Gs.safetensors")), load_file(str(tmp_path / "b" / "Gs.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
