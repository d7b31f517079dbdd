"""GAN augmentation: PG-GAN building blocks, a tiny GAN trained end to end on a synthetic store (train ->
sample into the store -> sheet -> SWD eval -> sweep), and the SWD metric. CPU-sized (about a minute)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slidestream.engine import config, registry, splits
from slidestream.engine import augment
from slidestream.engine.errors import ConfigError
from slidestream.engine.store import PatchStore
from slidestream.engine.synthetic import make_store
from slidestream.plugins.augmenters import pggan
from slidestream.plugins.augmenters.pggan_nets import EqConv, minibatch_stddev
from slidestream.plugins.augmenters.swd import swd

# final 32x32, 3 levels (8 -> 16 -> 32), small feature maps: ~30 s on one CPU core
TINY = {"resolution": 32, "start_resolution": 8, "fmap_base": 256, "fmap_max": 64, "total_kimg": 8,
        "training_kimg": 1, "transition_kimg": 1, "minibatch": {}, "minibatch_default": 16, "lr": 0.003,
        "ema_beta": 0.99, "checkpoint_kimg": 2, "tick_kimg": 1, "swd_images": 256, "device": "cpu"}
PIPE = {"name": "gan-test", "seed": 0, "normalization": {"gan": {"name": "rgb_histogram"}},
        "augmenter": {"name": "pggan", "params": TINY},
        "classifier": {"name": "small_cnn", "params": {"width": 8}},
        "training": {"epochs": 1, "batch_size": 16, "lr": 3e-3, "num_workers": 1}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small convolutions run fastest single-threaded (and CI cores are shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("gan") / "store"
    st = make_store(path, n_patients=16, per_patient=36, patch=32)
    splits.split_store(st, (6, 1, 1), 0)
    return path


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("gan") / "mutant"
    manifest = augment.train_gan(config.parse(PIPE), store, "mutant", out, progress=False, log=None)
    return out, manifest


# ----------------------------------------------------------------------------------- building blocks
def test_fused_up_and_down_convs_equal_their_two_step_definitions():
    torch.manual_seed(0)
    up, down = EqConv(5, 7, mode="up"), EqConv(5, 7, mode="down")
    x = torch.randn(2, 5, 6, 6)
    ref = F.conv2d(F.interpolate(x, scale_factor=2), up.weight * up.scale, up.bias, padding=1)
    assert torch.allclose(up(x), ref, atol=1e-5)
    ref = F.avg_pool2d(F.conv2d(x, down.weight * down.scale, down.bias, padding=1), 2)
    assert torch.allclose(down(x), ref, atol=1e-5)


def test_minibatch_stddev_groups_samples_i_mod_n_over_g():
    x = torch.zeros(8, 2, 4, 4)
    x[0::2] = 1.0  # groups are {i, i+2, i+4, i+6}: group of even i is all ones -> std 0
    y = minibatch_stddev(x, 4)
    assert y.shape == (8, 3, 4, 4)
    assert torch.allclose(y[:, 2], torch.full((8, 4, 4), 1e-4), atol=1e-6)
    x[0], x[2] = 3.0, -1.0  # the group of sample 0 now varies; the other group not
    y = minibatch_stddev(x, 4)
    assert y[0, 2, 0, 0] > 0.5 and y[2, 2, 0, 0] == y[0, 2, 0, 0] and y[1, 2, 0, 0] < 1e-3


def test_schedule_follows_the_spec():
    cfg = pggan.resolve({})
    p = pggan.schedule(0, cfg)
    assert (p.lod, p.resolution, p.alpha, p.minibatch) == (6.0, 4, 1.0, 128)
    p = pggan.schedule(900_000, cfg)  # half-way through the 8x8 fade-in
    assert (p.lod, p.resolution, p.alpha) == (5.5, 8, 0.5)
    assert pggan.schedule(1_200_000, cfg).lod == 5.0
    p = pggan.schedule(7_200_000, cfg)  # 256 fully faded in at 7200 kimg
    assert (p.lod, p.resolution, p.minibatch) == (0.0, 256, 8)
    assert pggan.schedule(12_000_000, cfg).lod == 0.0
    assert pggan.schedule(0, pggan.resolve({"start_resolution": 8})).lod == 5.0  # 6 levels, 8 -> 256


def test_plugin_registered_and_params_validated():
    assert registry.get("augmenter", "pggan").params["resolution"]["default"] == 256
    assert not config.validation_errors(PIPE)
    errs = config.validation_errors({**PIPE, "augmenter": {"name": "pggan", "params": {"fmap": 3}}})
    assert any("fmap" in e for e in errs)


def test_checkpoint_round_trip_restores_adam_and_rng(tmp_path):
    cfg = pggan.resolve({**TINY, "resolution": 8, "start_resolution": 4})
    tr = pggan.Trainer(cfg, torch.device("cpu"))
    reals = torch.rand(8, 3, 4, 4) * 2 - 1
    tr.step(reals, pggan.schedule(0, cfg))
    pggan._atomic_tensors(tmp_path / "c.safetensors", tr.tensors())
    from safetensors.torch import load_file

    a = tr.step(reals, pggan.schedule(0, cfg))  # the uninterrupted run's next step
    tr2 = pggan.Trainer(cfg, torch.device("cpu"))  # a fresh process: new nets, global RNG reseeded
    tr2.load(load_file(str(tmp_path / "c.safetensors")), list(tr.opt_key))
    b = tr2.step(reals, pggan.schedule(0, cfg))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ----------------------------------------------------------------------------------- SWD
def test_swd_real_vs_heldout_far_below_real_vs_noise(store):
    st = PatchStore.open(store)
    chain, _ = augment.gan_chain(PIPE)
    tr = augment.normalized_rows(st, augment.class_rows(st, 1)[:72], chain)
    held = augment.normalized_rows(st, augment.class_rows(st, 1, ("val", "test"))[:72], chain)
    noise = np.random.default_rng(0).integers(0, 256, tr.shape, dtype=np.uint8)
    real = swd(tr, held, seed=0)
    fake = swd(tr, noise, seed=0)
    assert set(real["levels"]) == {"32", "16"}
    assert real["mean"] * 3 < fake["mean"], (real, fake)


# ----------------------------------------------------------------------------------- end to end
def test_train_writes_manifest_checkpoint_snapshots_and_log(trained):
    out, m = trained
    assert m["status"] == "done" and m["generator_id"].startswith("pggan-mutant-")
    state = json.loads((out / "pggan.json").read_text())
    assert state["status"] == "done" and state["nimg"] >= 8000
    assert sorted(state["snapshots"], key=int) == ["8", "16", "32"]
    assert (out / "Gs.safetensors").exists() and (out / state["checkpoint"]).exists()
    assert not list(out.glob("*.pt")) and not list(out.glob("*.pkl"))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {r["resolution"] for r in log} == {8, 16, 32} and any(r["alpha"] < 1 for r in log)
    # only training-split patients of the class were used
    st = PatchStore.open(m["store"])
    assert m["rows"] == len(augment.class_rows(st, 1))


def test_trained_gan_beats_its_initialization(trained, store):
    out, m = trained
    st = PatchStore.open(store)
    chain, _ = augment.gan_chain(PIPE)
    reals = augment.normalized_rows(st, augment.class_rows(st, 1), chain)[:200]
    cfg = pggan.resolve(TINY)
    torch.manual_seed(cfg["seed"])
    G0 = pggan.build_generator(cfg).eval()  # the trainer's initial generator (same seed)
    with torch.no_grad():
        init = pggan.to_uint8(G0(torch.randn(200, G0.latent_size, generator=torch.Generator().manual_seed(1))))
    after = pggan.sample(out, 200, seed=1)
    s_init, s_after = swd(reals, init, seed=0)["mean"], swd(reals, after, seed=0)["mean"]
    assert s_after < 0.8 * s_init, (s_init, s_after)
    assert m["swd_training"]["mean"] > 0


def test_sample_into_store_appends_flagged_rows(trained, store, tmp_path):
    out, m = trained
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    n0 = len(PatchStore.open(copy))
    r = augment.sample_into_store(out, 40, copy, seed=3)
    st = PatchStore.open(copy)
    assert len(st) == n0 + 40 and r["rows"] == [n0, n0 + 40]
    t = st.table()
    new = slice(n0, n0 + 40)
    assert t["synthetic"][new].all() and (t["label"][new] == 1).all() and (t["split"][new] == "train").all()
    assert set(t["generator"][new]) == {m["generator_id"]} and not t["synthetic"][:n0].any()
    assert np.array_equal(st.patches[n0:n0 + 5], pggan.sample(out, 5, seed=3))  # same seed, same patches
    with pytest.raises(ConfigError, match="another --seed"):
        augment.sample_into_store(out, 40, copy, seed=3)


def test_grid_sheet_has_a_row_per_resolution(trained, tmp_path, cli):
    out, _ = trained
    code, stdout, err = cli("gan", "grid", out, "--out", tmp_path / "sheet.png", "--n", "4")
    assert code == 0, err
    from PIL import Image

    im = Image.open(tmp_path / "sheet.png")
    assert im.size == (80 + 4 * 36, 3 * 36)


def test_eval_prints_swd_and_writes_manifest(trained, store, cli):
    out, _ = trained
    code, stdout, err = cli("gan", "eval", out, "--store", store, "--n", "128")
    assert code == 0, err
    assert "fake_vs_train" in stdout and "heldout_vs_train" in stdout
    m = augment.read_manifest(out)
    assert m["swd"]["fake_vs_train"]["n_images"] == 128 and "32" in m["swd"]["fake_vs_train"]["levels"]


def test_train_refuses_store_without_split(tmp_path):
    make_store(tmp_path / "s", n_patients=4, per_patient=4, patch=32)
    with pytest.raises(ConfigError, match="slidestream split"):
        augment.train_gan(config.parse(PIPE), tmp_path / "s", "mutant", tmp_path / "g", log=None)


def test_other_settings_in_same_gan_dir_refused(trained, store):
    out, _ = trained
    pipe = {**PIPE, "augmenter": {"name": "pggan", "params": {**TINY, "lr": 0.001}}}
    with pytest.raises(ConfigError, match="new --out"):
        augment.train_gan(config.parse(pipe), store, "mutant", out, log=None)


def test_gan_sweep_writes_table_and_roc(trained, store, tmp_path):
    from slidestream.engine import experiment

    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    augment.sample_into_store(trained[0], 24, copy, seed=0)
    r = experiment.gan_sweep(config.parse(PIPE), copy, [0, 16], tmp_path / "sweep", log=None)
    rows = json.loads((tmp_path / "sweep" / "table.json").read_text())
    assert {(x["split"], x["synthetic"]) for x in rows} == {("val", 0), ("val", 16), ("test", 0), ("test", 16)}
    md = (tmp_path / "sweep" / "table.md").read_text()
    assert "baseline" in md and "+0.016 K" in md and (tmp_path / "sweep" / "roc.png").stat().st_size > 1000
    assert r["results"][1]["metrics"]["test"]["n"] == r["results"][0]["metrics"]["test"]["n"]
    with pytest.raises(ConfigError, match="gan sample"):
        experiment.gan_sweep(config.parse(PIPE), copy, [0, 100], tmp_path / "sweep2", log=None)


# ----------------------------------------------------------------------------------- leakage
def test_resplit_keeps_generators_of_val_and_test_patients_out_of_training(trained, store, tmp_path):
    """gan train + gan sample, then `split` with another seed: a generator that learned from a patient who is now
    in val or test must not put a single patch into training (warning, or refusal with strict); a generator whose
    patients all stayed in train still contributes."""
    import shutil

    from slidestream.engine import train

    out, m = trained
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    st = PatchStore.open(copy)
    t0 = st.table(["patient_id", "label", "split", "synthetic"])
    learned = {lab: set(t0["patient_id"][(t0["split"] == "train") & (t0["label"] == v)].tolist())
               for lab, v in augment.LABELS.items()}  # ground truth: the patients the generators were shown
    assert m["patients"] == sorted(learned["mutant"]) and m["patients_digest"] == config.digest(sorted(learned["mutant"]))
    wt_pipe = {**PIPE, "augmenter": {"name": "pggan", "params": {**TINY, "resolution": 16, "total_kimg": 2}}}
    wt = augment.train_gan(config.parse(wt_pipe), copy, "wildtype", tmp_path / "wildtype", progress=False, log=None)
    assert wt["patients"] == sorted(learned["wildtype"])
    augment.sample_into_store(out, 24, copy, seed=0)
    augment.sample_into_store(tmp_path / "wildtype", 24, copy, seed=0)
    recs = PatchStore.open(copy).records("synthetic")
    assert sorted(r["patients_digest"] for r in recs.values()) == sorted([m["patients_digest"], wt["patients_digest"]])

    # a re-split (another seed) that keeps the mutant generator's patients in train but moves wildtype ones out
    pids, first = np.unique(t0["patient_id"], return_index=True)
    labels = t0["label"][first]
    seed = next(s for s in range(1, 500) if (lambda a: {p for p, v in a.items() if v == "train"} >= learned["mutant"]
                                              and not {p for p, v in a.items() if v == "train"} >= learned["wildtype"])
                (splits.assign(pids.tolist(), labels.tolist(), (6, 1, 1), s)))
    splits.split_store(PatchStore.open(copy, mode="r+"), (6, 1, 1), seed)
    st = PatchStore.open(copy)
    tab = st.table()
    held_out = set(tab["patient_id"][np.isin(tab["split"], ["val", "test"]) & ~tab["synthetic"]].tolist())
    leaky = {g for g, pts in ((m["generator_id"], learned["mutant"]), (wt["generator_id"], learned["wildtype"]))
             if pts & held_out}
    assert leaky == {wt["generator_id"]}

    logs: list[str] = []
    r = train.train(config.parse(PIPE), copy, tmp_path / "run", synthetic=20, log=logs.append)
    used = train.training_rows(tab, 20, 0, train.synthetic_pool(st))
    assert r["train_rows"]["digest"] == config.digest(used.tolist())  # the rows training recorded it used
    gens = set(tab["generator"][used][tab["synthetic"][used]].tolist())
    assert gens == {m["generator_id"]} and r["train_rows"]["synthetic"] == 20  # no leak; the clean generator helps
    assert sum("warning" in line and wt["generator_id"] in line for line in logs) == 1
    with pytest.raises(ConfigError, match="outside the current train split"):
        train.train(config.parse(PIPE), copy, tmp_path / "strict", synthetic=20, strict=True, log=None)


def test_sample_refuses_generator_without_patient_record(trained, store, tmp_path):
    import shutil

    out, _ = trained
    old = tmp_path / "old"
    shutil.copytree(out, old)
    m = augment.read_manifest(old)
    del m["patients"]
    augment.write_manifest(old, m)
    with pytest.raises(ConfigError, match="retrain"):
        augment.sample_into_store(old, 4, store, seed=9)


def test_fade_ins_mix_dtypes_as_cuda_autocast_does(monkeypatch):
    """Under CUDA autocast the nearest upscale and the box downscale run in float32 while the convolutions
    give bfloat16; the fade-in lerps failed there ('expected dtype float for `end`', seen on an H200). CPU
    autocast keeps the pooling in bfloat16, so the float32 results are imitated here."""
    from slidestream.plugins.augmenters import pggan_nets as nets

    up, down = nets.upscale2d, nets.downscale2d
    monkeypatch.setattr(nets, "upscale2d", lambda x, factor=2: up(x, factor).float())
    monkeypatch.setattr(nets, "downscale2d", lambda x, factor=2: down(x, factor).float())
    g = nets.Generator(resolution=16, fmap_base=64, fmap_max=16)
    d = nets.Discriminator(resolution=16, fmap_base=64, fmap_max=16)
    z = torch.randn(4, g.latent_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img = g.synthesize(z, 2, torch.tensor(0.5))
        score = d(img, 0.5)
    assert img.shape == (4, 3, 16, 16) and score.shape == (4,)
