"""Built-in augmenter plugins: ``pggan``, the paper's progressive-growing GAN (one per IDH class).

The GAN lives in ``pggan.py``/``pggan_nets.py`` (torch); it is declared here with lazy callables so that
torch is imported only when a GAN trains or samples.
"""
from slidestream.engine.hookspecs import AugmenterPlugin, hookimpl, lazy

from .pggan_params import PARAMS, RUNTIME_KEYS

_PGGAN = "slidestream.plugins.augmenters.pggan"


@hookimpl
def slidestream_augmenters():
    return [AugmenterPlugin(
        name="pggan", params=PARAMS, runtime_params=RUNTIME_KEYS,
        train=lazy(f"{_PGGAN}:train"), sample=lazy(f"{_PGGAN}:sample"), stages=lazy(f"{_PGGAN}:stages"),
        summary="progressive-growing GAN (Karras et al. 2018), one per class, as in Liu et al. 2020")]
