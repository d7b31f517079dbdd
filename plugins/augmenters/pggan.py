"""Augmenter ``pggan``: a progressive-growing GAN (Karras et al. 2018) trained on one class's patches.

Re-implemented from ``shared/reference/pggan.md`` (the original code is CC BY-NC and is not used).
Liu et al. 2020 trained one PG-GAN per IDH class on 12,000 histogram-normalized 256x256 RGB patches with
the official defaults; :data:`DEFAULTS` are those defaults (``v2-1gpu`` preset, 4x4 -> 256x256).

Training follows the spec:

* WGAN-GP loss with drift: D ``D(fake) - D(real) + 10 (||grad D(x_hat)|| - 1)^2 + 0.001 D(real)^2``, G ``-D(G(z))``;
* Adam(lr 0.001, betas (0, 0.99), eps 1e-8), reset whenever ``floor(lod)`` or ``ceil(lod)`` changes;
* one D step per G step; generator EMA (``Gs``, beta 0.999) updated every step;
* the schedule (lod, minibatch) is re-evaluated every ``minibatch_repeats`` = 4 minibatches;
* per resolution ``training_kimg`` of stabilization then ``transition_kimg`` of fade-in; reals faded to
  match, ``lerp(x, up(avgpool2(x)), frac(lod))``; pixels [0, 255] -> [-1, 1]; optional mirror augment.

The model directory (``out_dir``) is self-contained::

    pggan.json                     config, trainer state (kimg, RNG, phase), snapshots, SWD, status
    checkpoint-<nimg>.safetensors  G, D, Gs and both Adam states (latest only; no pickle anywhere)
    snapshots/res-<r>.safetensors  Gs when resolution r finished training (for the coarse-to-fine sheet)
    Gs.safetensors                 the final generator (present once ``status`` is ``done``)
    log.jsonl                      one line per tick: kimg, resolution, alpha, losses, images/s

A kill at any moment loses at most the work since the last checkpoint: weights are written to a new file
first, then ``pggan.json`` is replaced atomically to point at it. ``train`` on an existing directory resumes.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from .pggan_nets import Discriminator, Generator, downscale2d, upscale2d
from .pggan_params import DEFAULTS, FORMAT, PARAMS, RESOLUTIONS, RUNTIME_KEYS  # noqa: F401


def resolve(params: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown pggan parameter(s): {', '.join(sorted(unknown))}")
    cfg = {**copy.deepcopy(DEFAULTS), **copy.deepcopy(params)}
    if cfg["start_resolution"] > cfg["resolution"]:  # the schema cannot compare two params: a traceback before
        from slidestream.engine.errors import ConfigError

        raise ConfigError(f"pggan: start_resolution {cfg['start_resolution']} is larger than resolution "
                          f"{cfg['resolution']}; lower augmenter.params.start_resolution")
    return cfg


def pick_device(name: str = "auto") -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("pggan: device 'cuda' requested but no CUDA device is available; use device 'auto' or 'cpu'")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    return torch.device("cuda")


# ----------------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class Phase:
    lod: float
    resolution: int  # resolution of the networks' output now (2**(R - floor(lod)))
    alpha: float  # fade-in weight of that resolution, 1 - frac(lod)
    minibatch: int


def schedule(nimg: int, cfg: dict[str, Any]) -> Phase:
    """Level of detail and minibatch after ``nimg`` real images (spec "Growing" and "Schedule").

    Each resolution is trained for ``training_kimg`` and then the next one is faded in over
    ``transition_kimg``; ``lod`` starts at ``log2(resolution / start_resolution)`` and ends at 0.
    """
    R = int(math.log2(cfg["resolution"]))
    lod = R - math.log2(cfg["start_resolution"])
    kimg = nimg / 1000.0
    phase_dur = cfg["training_kimg"] + cfg["transition_kimg"]
    phase = math.floor(kimg / phase_dur) if phase_dur > 0 else lod
    lod -= phase
    if cfg["transition_kimg"] > 0 and phase_dur > 0:
        lod -= max(kimg - phase * phase_dur - cfg["training_kimg"], 0.0) / cfg["transition_kimg"]
    lod = max(lod, 0.0)
    res = 2 ** (R - int(math.floor(lod)))
    mb = int(cfg["minibatch"].get(str(res), cfg["minibatch_default"]))
    return Phase(lod, res, 1.0 - (lod - math.floor(lod)), mb)


# ----------------------------------------------------------------------------------- data
def as_array(patches: Any) -> np.ndarray:
    """The patches as one uint8 (n, h, w, 3) array: an array-like (numpy, zarr, memmap) or an iterable of batches."""
    if hasattr(patches, "shape") and len(patches.shape) == 4:
        return np.asarray(patches, dtype=np.uint8)
    batches = [np.asarray(b, dtype=np.uint8) for b in patches]
    if not batches:
        raise ValueError("pggan: no training patches")
    return np.concatenate(batches)


def fingerprint(x: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(str(x.shape).encode())
    h.update(np.ascontiguousarray(x).data)
    return h.hexdigest()


def to_tensor(patches: np.ndarray, resolution: int, device: torch.device) -> torch.Tensor:
    """uint8 (n, 3, res, res) tensor; larger patches are box-filtered down (the spec's 2x2 mipmap)."""
    out = []
    for i in range(0, len(patches), 256):
        t = torch.from_numpy(np.ascontiguousarray(patches[i:i + 256])).permute(0, 3, 1, 2)
        if t.shape[-1] != resolution:
            f = t.shape[-1] // resolution
            if t.shape[-1] != f * resolution or f & (f - 1):
                raise ValueError(f"pggan: patch side {t.shape[-1]} is not a power-of-two multiple of resolution {resolution}")
            t = F.avg_pool2d(t.float(), f).round().clamp(0, 255).to(torch.uint8)
        out.append(t)
    t = torch.cat(out)
    return t.to(device) if device.type == "cuda" else t


def real_batch(data: torch.Tensor, idx: np.ndarray, flips: np.ndarray, phase: Phase, device: torch.device) -> torch.Tensor:
    """Reals for the current phase: [-1, 1], mirrored, box-filtered to its resolution, faded (spec)."""
    x = data[torch.from_numpy(idx).to(data.device)].to(device, non_blocking=True).float() / 127.5 - 1.0
    if flips.any():
        f = torch.from_numpy(flips).to(device)
        x = torch.where(f[:, None, None, None], x.flip(3), x)
    x = downscale2d(x, data.shape[-1] // phase.resolution)
    frac = 1.0 - phase.alpha
    if frac > 0:
        x = torch.lerp(x, upscale2d(downscale2d(x)), frac)
    return x


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[-1, 1] (n, 3, h, w) -> uint8 (n, h, w, 3)."""
    x = ((img.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


# ----------------------------------------------------------------------------------- files
def _atomic_json(path: Path, obj: Any) -> None:
    from slidestream.engine.store import atomic_write_text  # a full disk: one-line WriteError, old file kept

    atomic_write_text(path, json.dumps(obj, indent=1))


def _atomic_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    from slidestream.engine.store import atomic_write_bytes

    atomic_write_bytes(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))


def _prefixed(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in sd.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def _opt_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def _load_opt(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        i, name = k.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def build_generator(cfg: dict[str, Any]) -> Generator:
    return Generator(cfg["resolution"], cfg["fmap_base"], cfg["fmap_decay"], cfg["fmap_max"], cfg["latent_size"])


def build_discriminator(cfg: dict[str, Any]) -> Discriminator:
    return Discriminator(cfg["resolution"], cfg["fmap_base"], cfg["fmap_decay"], cfg["fmap_max"])


# ----------------------------------------------------------------------------------- trainer
class Trainer:
    """G, D, Gs and their optimizers, one training step at a time."""

    def __init__(self, cfg: dict[str, Any], device: torch.device):
        self.cfg, self.device = cfg, device
        torch.manual_seed(cfg["seed"])
        self.G = build_generator(cfg).to(device)
        self.D = build_discriminator(cfg).to(device)
        self.Gs = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.amp = bool(cfg["amp"]) and device.type == "cuda"
        self.synth = torch.compile(self.G.synthesize) if cfg["compile"] and device.type == "cuda" else self.G.synthesize
        self.opt_key: tuple[int, int] | None = None
        self.reset_optimizers()

    def reset_optimizers(self) -> None:
        """Fresh Adam states (spec: reset whenever floor(lod) or ceil(lod) changes)."""
        kw = dict(lr=self.cfg["lr"], betas=tuple(self.cfg["betas"]), eps=1e-8)
        self.opt_G = torch.optim.Adam(self.G.parameters(), **kw)
        self.opt_D = torch.optim.Adam(self.D.parameters(), **kw)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def generate(self, z: torch.Tensor, lod: float) -> torch.Tensor:
        level, alpha = _split(self.G, lod)
        return self.synth(z, level, torch.tensor(alpha, device=z.device))

    def step(self, reals: torch.Tensor, phase: Phase) -> tuple[float, float]:
        """One D step then one G step on a minibatch of reals; returns (loss_D, loss_G) tensors."""
        cfg, n, lod = self.cfg, reals.shape[0], phase.lod
        key = (math.floor(lod), math.ceil(lod))
        if key != self.opt_key:
            if self.opt_key is not None:
                self.reset_optimizers()
            self.opt_key = key
        z = torch.randn(n, self.G.latent_size, device=self.device)
        # ---- D: D(fake) - D(real) + lambda (|grad| - target)^2 / target^2 + drift D(real)^2
        self.D.requires_grad_(True)
        with torch.no_grad(), self.autocast():
            fake = self.generate(z, lod)
        fake = fake.float()
        with self.autocast():
            d_real = self.D(reals, lod).float()
            d_fake = self.D(fake, lod).float()
            u = torch.rand(n, 1, 1, 1, device=self.device)
            x_hat = torch.lerp(reals, fake, u).requires_grad_(True)
            d_hat = self.D(x_hat, lod).float()
        (grad,) = torch.autograd.grad(d_hat.sum(), x_hat, create_graph=True)
        gp = (grad.float().flatten(1).norm(dim=1) - cfg["gp_target"]).pow(2) * (cfg["gp_lambda"] / cfg["gp_target"] ** 2)
        loss_d = (d_fake - d_real + gp + cfg["drift"] * d_real.pow(2)).mean()
        self.opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_D.step()
        # ---- G: -D(G(z))
        self.D.requires_grad_(False)
        z = torch.randn(n, self.G.latent_size, device=self.device)
        with self.autocast():
            loss_g = -self.D(self.generate(z, lod), lod).float().mean()
        self.opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_G.step()
        # ---- Gs: exponential moving average of G
        with torch.no_grad():
            for p_s, p in zip(self.Gs.parameters(), self.G.parameters()):
                p_s.lerp_(p, 1.0 - cfg["ema_beta"])
        return loss_d.detach(), loss_g.detach()

    # -- checkpoints
    def tensors(self) -> dict[str, torch.Tensor]:
        t = {**_prefixed("G", self.G.state_dict()), **_prefixed("D", self.D.state_dict()),
             **_prefixed("Gs", self.Gs.state_dict()), **_prefixed("optG", _opt_tensors(self.opt_G)),
             **_prefixed("optD", _opt_tensors(self.opt_D)), "rng.cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            t["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        return t

    def load(self, tensors: dict[str, torch.Tensor], opt_key: list[int] | None) -> None:
        for name in ("G", "D", "Gs"):
            getattr(self, name).load_state_dict(_unprefixed(name, tensors))
        self.reset_optimizers()
        _load_opt(self.opt_G, _unprefixed("optG", tensors))
        _load_opt(self.opt_D, _unprefixed("optD", tensors))
        self.opt_key = tuple(opt_key) if opt_key else None
        torch.set_rng_state(tensors["rng.cpu"])
        if self.device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)


def _split(G: Generator, lod: float) -> tuple[int, float]:
    from .pggan_nets import split_lod

    return split_lod(G.R, lod)


class _Progress:
    """A rich progress bar with kimg, resolution, fade alpha and losses (or nothing when disabled)."""

    def __init__(self, enabled: bool, total_kimg: float, done_kimg: float, title: str):
        self.bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                            TextColumn("{task.completed:.1f}/{task.total:g} kimg"),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=Console(stderr=True), refresh_per_second=2)
        self.task = self.bar.add_task(title, total=total_kimg, completed=done_kimg, info="")
        self.bar.start()

    def update(self, kimg: float, phase: Phase, loss_d: float, loss_g: float, ips: float) -> None:
        if self.bar is not None:
            info = (f"{phase.resolution}x{phase.resolution} a={phase.alpha:.2f} D={loss_d:+.3f} G={loss_g:+.3f} "
                    f"{ips:.0f} img/s")
            self.bar.update(self.task, completed=kimg, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _save_checkpoint(out: Path, state: dict[str, Any], trainer: Trainer, nimg: int) -> None:
    name = f"checkpoint-{nimg:012d}.safetensors"
    _atomic_tensors(out / name, trainer.tensors())
    old = state.get("checkpoint")
    state.update(checkpoint=name, nimg=nimg, opt_key=list(trainer.opt_key) if trainer.opt_key else None)
    _atomic_json(out / "pggan.json", state)
    if old and old != name and (out / old).exists():
        (out / old).unlink()


def _save_snapshot(out: Path, state: dict[str, Any], trainer: Trainer, res: int) -> None:
    (out / "snapshots").mkdir(exist_ok=True)
    name = f"snapshots/res-{res:04d}.safetensors"
    _atomic_tensors(out / name, trainer.Gs.state_dict())
    state.setdefault("snapshots", {})[str(res)] = name


def train(patches: Any, out_dir: str | Path, progress: bool | None = None, **params: Any) -> dict[str, Any]:
    """Train (or resume) a PG-GAN on ``patches`` (uint8 (n, h, w, 3), or an iterable of such batches) into
    ``out_dir``; returns the final ``pggan.json`` state. ``progress`` shows a rich bar (default: on a terminal).
    Patches larger than ``resolution`` are box-filtered down; more than ``n_train`` are subsampled (seeded)."""
    cfg = resolve(params)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x = as_array(patches)
    if len(x) > cfg["n_train"]:
        keep = np.sort(np.random.default_rng(cfg["seed"]).choice(len(x), cfg["n_train"], replace=False))
        x = x[keep]
    if len(x) < 2:
        raise ValueError(f"pggan: needs at least 2 training patches, got {len(x)}")
    fp = fingerprint(x)
    device = pick_device(cfg["device"])
    trainer = Trainer(cfg, device)
    state_path = out / "pggan.json"
    learned = {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS}
    if state_path.exists():
        state = json.loads(state_path.read_text())
        old = {k: v for k, v in state["config"].items() if k not in RUNTIME_KEYS}
        if old != learned or state["data"]["fingerprint"] != fp:
            what = "parameters" if old != learned else "training patches"
            raise ValueError(f"pggan: {out} holds a GAN trained with other {what}; use a new output directory")
        if state["status"] == "done" and state["config"]["total_kimg"] == cfg["total_kimg"]:
            return state
        if state["nimg"] > round(cfg["total_kimg"] * 1000):  # it was marked done at total_kimg, trained for more
            from slidestream.engine.errors import ConfigError

            raise ConfigError(f"pggan: {out} holds a GAN already trained for {state['nimg'] / 1000:g} kimg, more than "
                              f"total_kimg {cfg['total_kimg']:g}; ask for {state['nimg'] / 1000:g} or more to resume "
                              "it, or use a new output directory")
        state["config"] = cfg
        state["status"] = "training"
        if state.get("checkpoint"):
            try:
                tensors = load_file(str(out / state["checkpoint"]), device=str(device))
            except Exception as e:  # cut short or corrupted (safetensors' own error type): a traceback before
                from slidestream.engine.errors import ConfigError

                raise ConfigError(f"pggan: checkpoint {out / state['checkpoint']} is damaged ({str(e)[:80]}); delete "
                                  f"{out} to train from the start, or use a new output directory") from None
            trainer.load(tensors, state.get("opt_key"))
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        state.setdefault("runs", []).append({"resumed_at_kimg": state["nimg"] / 1000, "time": time.time()})
    else:
        rng = np.random.default_rng(cfg["seed"])
        state = {"format": FORMAT, "plugin": "pggan", "config": cfg, "status": "training", "nimg": 0, "step": 0,
                 "rng": rng.bit_generator.state, "checkpoint": None, "opt_key": None, "snapshots": {},
                 "resolution_now": None, "data": {"n": int(len(x)), "shape": list(x.shape[1:]), "fingerprint": fp},
                 "runs": [{"resumed_at_kimg": 0.0, "time": time.time()}]}
        _atomic_json(state_path, state)
    data = to_tensor(x, cfg["resolution"], device)
    del x
    total = int(round(cfg["total_kimg"] * 1000))
    nimg, step = int(state["nimg"]), int(state["step"])
    bar = _Progress(progress if progress is not None else os.isatty(2), cfg["total_kimg"], nimg / 1000, f"pggan {out.name}")
    last_ckpt, last_tick, t_tick, n_tick = nimg, nimg, time.time(), 0
    phase = schedule(int(state.get("phase_nimg", nimg)), cfg)  # as the interrupted run had it
    ld = lg = torch.zeros(())
    try:
        with open(out / "log.jsonl", "a") as log:
            while nimg < total:
                if step % cfg["minibatch_repeats"] == 0:
                    phase = schedule(nimg, cfg)
                    state["phase_nimg"] = nimg
                    prev = state.get("resolution_now")
                    if prev is not None and phase.resolution != prev:
                        _save_snapshot(out, state, trainer, prev)  # prev finished: row of the sheet
                    state["resolution_now"] = phase.resolution
                idx = rng.integers(0, len(data), phase.minibatch)
                flips = rng.random(phase.minibatch) < 0.5 if cfg["mirror"] else np.zeros(phase.minibatch, bool)
                ld, lg = trainer.step(real_batch(data, idx, flips, phase, device), phase)
                nimg += phase.minibatch
                step += 1
                n_tick += phase.minibatch
                if step % cfg["minibatch_repeats"] == 0 or nimg >= total:
                    dt = max(time.time() - t_tick, 1e-9)
                    bar.update(nimg / 1000, phase, float(ld), float(lg), n_tick / dt)
                if nimg - last_tick >= cfg["tick_kimg"] * 1000 or nimg >= total:
                    dt = max(time.time() - t_tick, 1e-9)
                    log.write(json.dumps({"kimg": nimg / 1000, "resolution": phase.resolution, "lod": phase.lod,
                                          "alpha": phase.alpha, "minibatch": phase.minibatch, "loss_d": float(ld),
                                          "loss_g": float(lg), "images_per_s": n_tick / dt}) + "\n")
                    log.flush()
                    last_tick, t_tick, n_tick = nimg, time.time(), 0
                due = nimg - last_ckpt >= cfg["checkpoint_kimg"] * 1000 and step % cfg["minibatch_repeats"] == 0
                if due or nimg >= total:
                    state.update(step=step, rng=rng.bit_generator.state)
                    _save_checkpoint(out, state, trainer, nimg)
                    last_ckpt = nimg
    finally:
        bar.close()
    # the final resolution's snapshot, the final generator, and the end-of-training SWD
    _save_snapshot(out, state, trainer, state["resolution_now"] or phase.resolution)
    _atomic_tensors(out / "Gs.safetensors", trainer.Gs.state_dict())
    state.update(status="done", nimg=nimg, step=step, final_lod=phase.lod)
    _atomic_json(state_path, state)
    if phase.lod == 0:
        from .swd import swd as swd_fn

        n = min(cfg["swd_images"], len(data))
        gen = torch.Generator().manual_seed(cfg["seed"] + 1)
        pick = torch.randperm(len(data), generator=gen)[:n]
        reals = data[pick.to(data.device)].permute(0, 2, 3, 1).cpu().numpy()
        fakes = sample(out, n, seed=cfg["seed"] + 1)
        state["swd"] = swd_fn(reals, fakes, seed=cfg["seed"], device=device)
        _atomic_json(state_path, state)
    return state


# ----------------------------------------------------------------------------------- sampling
def load_state(model_dir: str | Path) -> dict[str, Any]:
    p = Path(model_dir) / "pggan.json"
    if not p.is_file():
        raise FileNotFoundError(f"{model_dir} is not a pggan model directory (no pggan.json)")
    return json.loads(p.read_text())


def _load_generator(model_dir: Path, weights: str, cfg: dict[str, Any], device: torch.device) -> Generator:
    G = build_generator(cfg)
    G.load_state_dict(load_file(str(model_dir / weights)))
    return G.to(device).eval().requires_grad_(False)


@torch.no_grad()
def _run(G: Generator, n: int, seed: int, lod: float, device: torch.device, batch: int = 64) -> np.ndarray:
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn(n, G.latent_size, generator=gen)
    out = []
    for i in range(0, n, batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(to_uint8(G(z[i:i + batch].to(device), lod)))
    return np.concatenate(out) if out else np.zeros((0, 2 ** (G.R - int(lod)),) * 2 + (3,), np.uint8)


def sample(model_dir: str | Path, n: int, seed: int = 0, device: str = "auto") -> np.ndarray:
    """``n`` synthetic uint8 (n, res, res, 3) patches from the trained generator Gs (same seed, same patches)."""
    model_dir = Path(model_dir)
    state = load_state(model_dir)
    if state["status"] != "done" or not (model_dir / "Gs.safetensors").exists():
        raise RuntimeError(f"pggan: {model_dir} has not finished training ({state['nimg'] / 1000:.1f} of "
                           f"{state['config']['total_kimg']} kimg); rerun the training to resume it")
    dev = pick_device(device)
    G = _load_generator(model_dir, "Gs.safetensors", state["config"], dev)
    return _run(G, int(n), seed, 0.0, dev)


def stages(model_dir: str | Path, n: int, seed: int = 0, device: str = "auto") -> list[tuple[str, np.ndarray]]:
    """Coarse to fine: for each finished resolution, ``n`` patches of its snapshot of Gs, with the same
    latents in every row (the paper's Fig. 1)."""
    model_dir = Path(model_dir)
    state = load_state(model_dir)
    dev = pick_device(device)
    rows = []
    R = int(math.log2(state["config"]["resolution"]))
    for res, weights in sorted(state.get("snapshots", {}).items(), key=lambda kv: int(kv[0])):
        G = _load_generator(model_dir, weights, state["config"], dev)
        rows.append((f"{res}x{res}", _run(G, n, seed, R - math.log2(int(res)), dev)))
    return rows
