"""Built-in tiling plugins. Each module lists its plugins in its own ``slidestream_tiling()``; this package
registers them all through the ``slidestream.plugins`` entry point (see pyproject.toml)."""
from slidestream.engine.hookspecs import hookimpl

from . import grid

MODULES: list = [grid]  # modules that provide slidestream_tiling()


@hookimpl
def slidestream_tiling():
    return [p for m in MODULES for p in m.slidestream_tiling()]
