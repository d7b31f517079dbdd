"""Built-in normalization plugins. Each module lists its plugins in its own ``slidestream_normalization()``; this package
registers them all through the ``slidestream.plugins`` entry point (see pyproject.toml).

Chains: a pipeline's ``normalization.gan`` / ``normalization.classifier`` may list several plugins, applied in
order. Every plugin either keeps the channel count it gets or reduces 3 to 1, so a chain's output channels are
the smallest ``channels`` among its plugins (see ``chain_channels``).
"""
from slidestream.engine.hookspecs import hookimpl

from . import grayscale, histogram, stain

MODULES: list = [histogram, grayscale, stain]  # modules of this package that provide slidestream_normalization()


@hookimpl
def slidestream_normalization():
    return [p for m in MODULES for p in m.slidestream_normalization()]


def chain_channels(plugins) -> int:
    """Channels of the batches a chain of NormalizationPlugins outputs (3 for an empty chain)."""
    return min([p.channels for p in plugins], default=3)
