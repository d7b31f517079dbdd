"""Parameters of the ``pggan`` augmenter: the official PG-GAN defaults at 256x256 (no torch import here,
so listing plugins and validating pipelines stays fast)."""
from __future__ import annotations

from typing import Any

FORMAT = 1
RESOLUTIONS = [4, 8, 16, 32, 64, 128, 256, 512, 1024]

# The official defaults at 256x256 (spec "Schedule for 256x256, preset v2-1gpu"), plus our own knobs.
DEFAULTS: dict[str, Any] = {
    "resolution": 256,
    "start_resolution": 4,
    "fmap_base": 8192,
    "fmap_decay": 1.0,
    "fmap_max": 512,
    "latent_size": None,
    "total_kimg": 12000,
    "training_kimg": 600,
    "transition_kimg": 600,
    "minibatch": {"4": 128, "8": 128, "16": 128, "32": 64, "64": 32, "128": 16, "256": 8},
    "minibatch_default": 16,
    "minibatch_repeats": 4,
    "lr": 0.001,
    "betas": [0.0, 0.99],
    "ema_beta": 0.999,
    "gp_lambda": 10.0,
    "gp_target": 1.0,
    "drift": 0.001,
    "mirror": True,
    "seed": 0,
    "n_train": 12000,
    "device": "auto",
    "amp": True,
    "compile": False,
    "checkpoint_kimg": 100,
    "tick_kimg": 4,
    "swd_images": 2048,
}

_int = {"type": "integer", "minimum": 1}
_res = {"type": "integer", "enum": RESOLUTIONS}
PARAMS: dict[str, Any] = {
    "resolution": {**_res, "default": 256, "description": "final image side (paper: 256)"},
    "start_resolution": {**_res, "default": 4, "description": "first trained resolution (spec: 4; 8 gives the "
                                                              "paper's '6 resolution levels' to 256)"},
    "fmap_base": {**_int, "default": 8192, "description": "feature maps nf(s) = min(fmap_base / 2^(s*decay), fmap_max)"},
    "fmap_decay": {"type": "number", "minimum": 0, "default": 1.0},
    "fmap_max": {**_int, "default": 512},
    "latent_size": {"type": ["integer", "null"], "minimum": 1, "default": None, "description": "default nf(0)"},
    "total_kimg": {"type": "number", "exclusiveMinimum": 0, "default": 12000, "description": "thousands of real images shown"},
    "training_kimg": {"type": "number", "minimum": 0, "default": 600, "description": "stabilization per resolution"},
    "transition_kimg": {"type": "number", "minimum": 0, "default": 600, "description": "fade-in per resolution"},
    "minibatch": {"type": "object", "additionalProperties": _int, "default": DEFAULTS["minibatch"],
                  "description": "minibatch per resolution, keys are resolutions as strings"},
    "minibatch_default": {**_int, "default": 16, "description": "minibatch of resolutions not in `minibatch`"},
    "minibatch_repeats": {**_int, "default": 4, "description": "minibatches between schedule updates"},
    "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.001},
    "betas": {"type": "array", "items": {"type": "number", "minimum": 0, "exclusiveMaximum": 1}, "minItems": 2,
              "maxItems": 2, "default": [0.0, 0.99], "description": "Adam betas, each in [0, 1) (torch refuses 1)"},
    "ema_beta": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.999},
    "gp_lambda": {"type": "number", "minimum": 0, "default": 10.0},
    "gp_target": {"type": "number", "exclusiveMinimum": 0, "default": 1.0},
    "drift": {"type": "number", "minimum": 0, "default": 0.001},
    "mirror": {"type": "boolean", "default": True, "description": "random horizontal flips of the reals"},
    "seed": {"type": "integer", "minimum": 0, "maximum": 2 ** 32 - 1, "default": 0},  # config.SEED_MAX
    "n_train": {**_int, "default": 12000, "description": "real patches per class (paper: 12,000)"},
    "device": {"enum": ["auto", "cpu", "cuda"], "default": "auto"},
    "amp": {"type": "boolean", "default": True, "description": "bf16 autocast on CUDA (ignored on CPU)"},
    "compile": {"type": "boolean", "default": False, "description": "torch.compile the generator on CUDA"},
    "checkpoint_kimg": {"type": "number", "exclusiveMinimum": 0, "default": 100},
    "tick_kimg": {"type": "number", "exclusiveMinimum": 0, "default": 4, "description": "kimg between log lines"},
    "swd_images": {**_int, "default": 2048, "description": "images per set for the end-of-training SWD"},
}

# Parameters that do not change what is learned; a resume may change them.
RUNTIME_KEYS = ("device", "amp", "compile", "checkpoint_kimg", "tick_kimg", "swd_images", "total_kimg")


