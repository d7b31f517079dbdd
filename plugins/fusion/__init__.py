"""Built-in fusion plugins. Each module lists its plugins in its own ``slidestream_fusion()``; this package
registers them all through the ``slidestream.plugins`` entry point (see pyproject.toml)."""
from slidestream.engine.hookspecs import hookimpl

from . import age_gda

MODULES: list = [age_gda]  # modules of this package that provide slidestream_fusion()


@hookimpl
def slidestream_fusion():
    return [p for m in MODULES for p in m.slidestream_fusion()]
