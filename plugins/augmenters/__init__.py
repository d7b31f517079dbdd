"""Built-in augmenters plugins. Each module lists its plugins in its own ``slidestream_augmenters()``; this package
registers them all through the ``slidestream.plugins`` entry point (see pyproject.toml)."""
from slidestream.engine.hookspecs import hookimpl

from . import pggan

MODULES: list = [pggan]  # modules of this package that provide slidestream_augmenters()


@hookimpl
def slidestream_augmenters():
    return [p for m in MODULES for p in m.slidestream_augmenters()]
