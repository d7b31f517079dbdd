"""Red team round 4 of the learning commands: an interrupted or repeated run loses nothing and mixes nothing, and
bad arguments end in one line (exit 2, no traceback, no hang). Each test fails without the fix it guards (see the
commit messages)."""
import json
import subprocess

import numpy as np
import pytest
import torch

from conftest import slidestream_cmd
from slidestream.engine import config, splits, train
from slidestream.engine.errors import ConfigError
from slidestream.engine.synthetic import make_store

PIPE = {"name": "t", "classifier": {"name": "small_cnn", "params": {"width": 8}},
        "training": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "num_workers": 1, "input_size": 32}}


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny GAN steps: thread hand-offs cost more than they gain (10 s on 2 threads, 2 s on 1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    st = make_store(tmp_path_factory.mktemp("rt4") / "s", n_patients=12, per_patient=4, patch=32)
    splits.split_store(st, (2, 1, 1), seed=0)
    return st.path


def _cli(*args, timeout=60):
    r = subprocess.run([*slidestream_cmd(), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stderr


# ---------------------------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("args, what", [
    (["train", "--epochs", "0"], "--epochs"), (["train", "--epochs", "-1"], "--epochs"),
    (["train", "--synthetic", "-5"], "--synthetic"), (["experiment", "gan-sweep", "--counts", "0", "--epochs", "0"], "--epochs"),
])
def test_bad_epochs_or_synthetic_count_is_one_line(store, tmp_path, args, what):
    """`train --epochs 0` (or -1) ran no epoch and ended in a FileNotFoundError traceback (best.safetensors, exit 1);
    `--synthetic -5` trained silently."""
    pipe = tmp_path / "p.json"
    pipe.write_text(json.dumps(PIPE))
    code, err = _cli(*args[:-2], pipe, "--store", store, "--out", tmp_path / "o", *args[-2:])
    assert code == 2 and err.count("\n") == 1 and what in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kw", [{"epochs": 0}, {"epochs": -1}, {"synthetic": -5}, {"batch_size": 0}])
def test_bad_training_overrides_from_python_are_one_line(store, tmp_path, kw):
    with pytest.raises(ConfigError, match=rf"^training setting {next(iter(kw))}: .* minimum") as e:
        train.train(config.parse(PIPE), store, tmp_path, log=None, **kw)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------- reruns, other settings
def test_rerun_with_fewer_epochs_is_refused_not_mixed(store, tmp_path):
    """`train --epochs 1` into the folder of a finished 2-epoch run resumed "after epoch 2 of 1", kept the 2-epoch
    history and best epoch, and wrote a bundle and training.json saying 1 epoch. More epochs still resume."""
    train.train(config.parse(PIPE), store, tmp_path, log=None)
    before = (tmp_path / "small_cnn" / "training.json").read_text()
    with pytest.raises(ConfigError, match=r"already trained for 2 epochs, more than the 1 asked .*ask for 2 or more"):
        train.train(config.parse(PIPE), store, tmp_path, epochs=1, log=None)
    assert (tmp_path / "small_cnn" / "training.json").read_text() == before
    logs = []
    train.train(config.parse(PIPE), store, tmp_path, epochs=3, log=logs.append)
    assert any("resuming after epoch 2 of 3" in line for line in logs)


def test_mil_rerun_with_fewer_epochs_or_less_patience_is_refused_not_mixed(tmp_path):
    """The same for `mil train`; and a rerun with a smaller mil.patience, whose run would have stopped earlier,
    wrote a bundle recording that patience over the longer run's history and best epoch."""
    from slidestream.engine import features, mil
    from test_mil import PIPE as MIL_PIPE

    from test_redteam_cli import _store

    st = _store(tmp_path / "store")
    pipe = config.parse(MIL_PIPE)  # mil.epochs 2
    features.extract_features(pipe, st.path, tmp_path / "f.zarr", progress=False, log=None)
    mil.train(pipe, tmp_path / "f.zarr", tmp_path / "m", log=None)
    before = (tmp_path / "m" / "mil.json").read_text()
    with pytest.raises(ConfigError, match=r"already trained for 2 epochs; with mil.epochs 1 .* stops after 1"):
        mil.train(pipe, tmp_path / "f.zarr", tmp_path / "m", log=None, epochs=1)
    # early stopping: patience 1 stops a run whose best epoch is its first after epoch 2 (not 5)
    pipe5 = config.parse({**MIL_PIPE, "mil": {**MIL_PIPE["mil"], "epochs": 5, "lr": 1e-12}})  # lr ~0: epoch 1 stays best
    mil.train(pipe5, tmp_path / "f.zarr", tmp_path / "m5", log=None)
    with pytest.raises(ConfigError, match=r"already trained for 5 epochs; with mil.epochs 5 .*patience 1 it stops after [2-4]"):
        mil.train(pipe5, tmp_path / "f.zarr", tmp_path / "m5", log=None, patience=1)
    assert (tmp_path / "m" / "mil.json").read_text() == before


# ---------------------------------------------------------------------------------------------- half-written outputs
def test_failed_predictions_write_keeps_the_previous_table_whole(tmp_path):
    """predictions.csv (train, mil train, predict --store) was written in place: a full disk or a kill mid-write
    left a table cut after some patients, which `evaluate` read as the whole cohort (an OSError traceback too)."""
    import numpy as np

    from slidestream.engine.store import WriteError
    from test_write_failures import file_size_limit

    def table(n):
        return {"patient_id": np.array([f"P{i:05d}" for i in range(n)]), "label": np.arange(n) % 2,
                "age": np.full(n, 50.0), "split": np.array(["test"] * n), "image_prob": np.linspace(0, 1, n)}

    path = tmp_path / "predictions.csv"
    train.write_predictions(path, table(10))
    before = path.read_bytes()
    with file_size_limit(64 * 1024), pytest.raises(WriteError, match=rf"^{path}: File too large; free space"):
        train.write_predictions(path, table(5000))  # ~200 kB
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]


@pytest.fixture(scope="module")
def bundle(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("b")
    train.train(config.parse(PIPE), store, out, epochs=1, log=None)
    return out / "small_cnn"


def test_predict_into_a_folder_is_refused_before_scoring(store, bundle, tmp_path, monkeypatch):
    """`predict --store S --out DIR` scored the whole store, then failed renaming onto DIR with
    'error: .DIR.<pid>.tmp: Is a directory' (a temporary file the user never named)."""
    from slidestream.engine import predict

    monkeypatch.setattr(predict, "store_probs", lambda *a, **k: pytest.fail("scored before checking --out"))
    with pytest.raises(ConfigError, match=rf"^--out {tmp_path} is a folder; give the CSV file to write"):
        predict.predict_store(bundle, store, tmp_path)
    (tmp_path / "f").write_text("")
    with pytest.raises(FileExistsError):  # the CLI's one line: 'f: File exists; check the path ...'
        predict.predict_store(bundle, store, tmp_path / "f" / "p.csv")


def test_gan_rerun_with_a_smaller_total_kimg_is_refused_not_relabelled(tmp_path, one_thread):
    """total_kimg may change on a resume (it does not change what is learned), but a smaller one than the GAN
    already trained for skipped the loop and marked the generator done "at 0.2 kimg" after 0.4."""
    from slidestream.plugins.augmenters import pggan

    x = np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
    cfg = {"resolution": 8, "start_resolution": 4, "fmap_base": 64, "fmap_max": 16, "training_kimg": 0.3,
           "transition_kimg": 0.3, "minibatch": {}, "minibatch_default": 8, "checkpoint_kimg": 0.2, "tick_kimg": 1,
           "swd_images": 16, "device": "cpu"}
    pggan.train(x, tmp_path / "g", progress=False, total_kimg=0.4, **cfg)
    before = (tmp_path / "g" / "pggan.json").read_text()
    with pytest.raises(ConfigError, match=r"already trained for 0.4 kimg, more than total_kimg 0.2; ask for 0.4 or more"):
        pggan.train(x, tmp_path / "g", progress=False, total_kimg=0.2, **cfg)
    assert (tmp_path / "g" / "pggan.json").read_text() == before


def test_checkpoint_write_failing_after_a_new_best_keeps_the_best_weights_consistent(store, tmp_path, monkeypatch):
    """best.safetensors was replaced before the checkpoint: when the checkpoint of that epoch then failed (a full
    disk, or a kill between the two writes) the rerun resumed from the previous checkpoint, whose best epoch's
    weights were gone, and a rerun that does not redo that epoch (here --epochs 2) bundled the unfinished
    epoch's weights under the checkpoint's best epoch. The best weights now live in the checkpoint itself."""
    from safetensors.torch import load_file

    from slidestream.engine.store import WriteError

    pipe = config.parse({**PIPE, "training": {**PIPE["training"], "lr": 1e-3}})  # val loss falls each epoch
    ref = train.train(pipe, store, tmp_path / "ref", log=None)  # 2 epochs, uninterrupted
    save = train._atomic_torch_save

    def full_at_epoch_2(obj, path):
        if obj.get("epoch") == 2:
            raise WriteError(f"{path}: No space left on device; free space and run the same command again to resume")
        save(obj, path)

    monkeypatch.setattr(train, "_atomic_torch_save", full_at_epoch_2)
    with pytest.raises(WriteError):
        train.train(pipe, store, tmp_path / "run", epochs=3, log=None)
    monkeypatch.setattr(train, "_atomic_torch_save", save)
    res = train.train(pipe, store, tmp_path / "run", log=None)  # resumes after epoch 2 of 2: nothing to train
    assert res["best_epoch"] == ref["best_epoch"]
    a, b = (load_file(str(tmp_path / d / "small_cnn" / "model.safetensors")) for d in ("ref", "run"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_huge_loader_thread_count_is_refused(store, tmp_path):
    """training.num_workers 100000 was accepted: the loader reads 2 x workers blocks ahead, one thread each, so a
    store of 10^5 blocks started 10^5 threads holding every block in memory (108 threads for 100 blocks)."""
    pipe = {**PIPE, "training": {**PIPE["training"], "num_workers": 100_000}}
    with pytest.raises(ConfigError, match=r"num_workers: 100000 is greater than the maximum of 64"):
        config.parse(pipe)
    with pytest.raises(ConfigError, match=r"^training setting num_workers: 100000 is greater than the maximum of 64"):
        train.train(config.parse(PIPE), store, tmp_path, num_workers=100_000, log=None)


def test_demo_rerun_with_other_settings_is_refused_before_touching_the_folder(tmp_path):
    """`demo --patients 20` into a 16-patient demo's folder regenerated the cohort, extracted 4 more slides and
    re-split the store, and only then train refused the folder's checkpoint; after that the first command
    (16 patients) was refused too: neither could resume. Now refused before any work; the same settings resume."""
    from slidestream.engine import demo

    kw = dict(size=(512, 384), mpp=1.0, epochs=1, bootstrap=0, heatmap=False, log=None)  # ~8 s
    demo.run(tmp_path, n_patients=16, **kw)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(ConfigError, match=r"holds a demo made with patients 16 \(now 20\); use a new --out"):
        demo.run(tmp_path, n_patients=20, **kw)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    with pytest.raises(ConfigError, match=r"holds a demo made with epochs 1 \(now 2\)"):  # in its pipeline: train refused it
        demo.run(tmp_path, n_patients=16, **{**kw, "epochs": 2})


def test_failed_evaluate_write_keeps_the_previous_metrics_whole(tmp_path):
    """evaluate wrote metrics.json, patients.csv and report.md in place: a full disk (or a kill) mid-write left the
    previous run's metrics.json cut short (invalid JSON) and patients.csv missing patients."""
    from slidestream.engine import evaluate as ev
    from slidestream.engine.store import WriteError
    from test_write_failures import file_size_limit

    rng = np.random.default_rng(0)
    n = 3000
    t = {"patient_id": [f"P{i:05d}" for i in range(n)], "label": np.arange(n) // 2 % 2, "age": rng.uniform(20, 80, n),
         "split": ["val", "test"] * (n // 2), "image_prob": rng.uniform(0, 1, n)}
    ev.write_report(ev.evaluate({k: v[:40] for k, v in t.items()}, bootstrap=0), tmp_path)
    before = {f: (tmp_path / f).read_bytes() for f in ("metrics.json", "patients.csv", "report.md")}
    big = ev.evaluate(t, bootstrap=0)
    with file_size_limit(48 * 1024), pytest.raises(WriteError, match=r"File too large; free space"):
        ev.write_report(big, tmp_path)
    assert (tmp_path / "patients.csv").read_bytes() == before["patients.csv"]  # the write that failed: kept whole
    json.loads((tmp_path / "metrics.json").read_text())  # each file old or new, never cut
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


def test_gan_resumed_for_more_kimg_and_stopped_is_not_sampled_as_done(tmp_path, monkeypatch, one_thread):
    """`gan train` rerun with a larger total_kimg on a finished generator kept manifest status "done" while it
    trained on: stopped there (a full disk here, or a kill), `gan sample` went ahead and failed in the plugin with a
    RuntimeError traceback. A refused rerun (smaller total_kimg) leaves the finished generator usable."""
    from slidestream.engine import augment
    from slidestream.engine.store import WriteError
    from slidestream.plugins.augmenters import pggan

    st = make_store(tmp_path / "store", n_patients=8, per_patient=8, patch=32)
    splits.split_store(st, (6, 1, 1), 0)
    small = {"resolution": 8, "start_resolution": 4, "fmap_base": 64, "fmap_max": 16, "training_kimg": 0.3,
             "transition_kimg": 0.3, "minibatch": {}, "minibatch_default": 8, "checkpoint_kimg": 0.1, "tick_kimg": 1,
             "swd_images": 16, "device": "cpu"}

    def pipe(kimg):
        return config.parse({"name": "g", "augmenter": {"name": "pggan", "params": {**small, "total_kimg": kimg}}})

    out = tmp_path / "gan"
    augment.train_gan(pipe(0.2), st.path, "wildtype", out, progress=False, log=None)
    with pytest.raises(ConfigError, match="already trained for 0.2 kimg"):
        augment.train_gan(pipe(0.1), st.path, "wildtype", out, progress=False, log=None)
    assert augment.read_manifest(out)["status"] == "done" and augment.read_manifest(out)["params"]["total_kimg"] == 0.2

    def full(*a, **k):
        raise WriteError(f"{out}: No space left on device; free space and run the same command again to resume")

    monkeypatch.setattr(pggan, "_save_checkpoint", full)
    with pytest.raises(WriteError):
        augment.train_gan(pipe(0.6), st.path, "wildtype", out, progress=False, log=None)
    with pytest.raises(ConfigError, match="has not finished training; rerun `slidestream gan train` to resume it"):
        augment.sample_into_store(out, 4, st.path)


@pytest.mark.parametrize("kind, what", [("dir", "is a folder"), ("fifo", r"is not a regular file \(a pipe, device or socket\)"),
                                        ("none", "not found")])
def test_pipeline_or_predictions_path_that_is_no_file_says_what_it_is(tmp_path, kind, what):
    """A folder (or a pipe) given as the pipeline of train/mil train/gan/evaluate --pipeline, or as evaluate's
    predictions, was reported as 'not found'."""
    import os

    from slidestream.engine import evaluate as ev

    p = tmp_path / "x"
    if kind == "dir":
        p.mkdir()
    elif kind == "fifo":
        os.mkfifo(p)
    with pytest.raises(ConfigError, match=rf"^pipeline file {p} {what}; give a JSON pipeline"):
        config.load(p)
    with pytest.raises(ConfigError, match=rf"^predictions file {p} {what}; give the CSV"):
        ev.load_predictions(p)


def test_damaged_checkpoint_is_one_line_not_a_torch_traceback(store, tmp_path):
    """A checkpoint cut short (a partial copy, a disk error; our own writes are atomic) gave torch's 'PytorchStreamReader
    failed reading zip archive' RuntimeError traceback on the rerun."""
    train.train(config.parse(PIPE), store, tmp_path, epochs=1, log=None)
    ckpt = tmp_path / "small_cnn" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(ConfigError, match=rf"^{ckpt} is damaged and cannot be resumed from \(.*\); delete it") as e:
        train.train(config.parse(PIPE), store, tmp_path, log=None)
    assert "\n" not in str(e.value)


def test_damaged_gan_checkpoint_is_one_line(tmp_path, one_thread):
    """A cut-short PG-GAN checkpoint gave safetensors' SafetensorError traceback on the resume."""
    from slidestream.plugins.augmenters import pggan

    x = np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
    cfg = {"resolution": 8, "start_resolution": 4, "fmap_base": 64, "fmap_max": 16, "training_kimg": 0.3,
           "transition_kimg": 0.3, "minibatch": {}, "minibatch_default": 8, "checkpoint_kimg": 0.2, "tick_kimg": 1,
           "swd_images": 16, "device": "cpu"}
    state = pggan.train(x, tmp_path / "g", progress=False, total_kimg=0.2, **cfg)
    ck = tmp_path / "g" / state["checkpoint"]
    ck.write_bytes(ck.read_bytes()[:1000])
    with pytest.raises(ConfigError, match=rf"^pggan: checkpoint {ck} is damaged \(.*\); delete") as e:
        pggan.train(x, tmp_path / "g", progress=False, total_kimg=0.4, **cfg)
    assert "\n" not in str(e.value)


def test_failed_comparison_write_keeps_the_previous_tables_whole(store, bundle, tmp_path):
    """train's comparison.md/.json (and gan-sweep's table.md/.json, mil's cv.json/.md) were written in place: a full
    disk or a kill mid-write left the previous tables cut short."""
    from slidestream.engine.store import WriteError
    from test_write_failures import file_size_limit

    summary = {**json.loads((bundle / "training.json").read_text()), "init": "scratch"}
    summary["metrics"] = {s: {**m, "roc": {"fpr": [0, 1], "tpr": [0, 1]}} for s, m in summary["metrics"].items()}
    train.compare([summary], tmp_path)
    before = {f: (tmp_path / f).read_bytes() for f in ("comparison.md", "comparison.json")}
    with file_size_limit(100), pytest.raises(WriteError, match="File too large; free space"):
        train.compare([{**summary, "arch": "x" * 300}], tmp_path)
    assert {f: (tmp_path / f).read_bytes() for f in before} == before
