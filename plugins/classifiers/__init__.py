"""Built-in classifiers plugins. Each module lists its plugins in its own ``slidestream_classifiers()``; this package
registers them all through the ``slidestream.plugins`` entry point (see pyproject.toml)."""
from slidestream.engine.hookspecs import hookimpl

from . import inception_resnet_v2, nets

MODULES: list = [nets, inception_resnet_v2]  # modules of this package that provide slidestream_classifiers()


@hookimpl
def slidestream_classifiers():
    return [p for m in MODULES for p in m.slidestream_classifiers()]
