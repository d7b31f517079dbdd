"""Built-in filters plugins. Each module lists its plugins in its own ``slidestream_filters()``; this package
registers them all through the ``slidestream.plugins`` entry point (see pyproject.toml)."""
from slidestream.engine.hookspecs import hookimpl

from . import dpw, otsu

MODULES: list = [dpw, otsu]  # modules of this package that provide slidestream_filters()


@hookimpl
def slidestream_filters():
    return [p for m in MODULES for p in m.slidestream_filters()]
