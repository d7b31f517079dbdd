"""Built-in readers plugins. Each module lists its plugins in its own ``slidestream_readers()``; this package
registers them all through the ``slidestream.plugins`` entry point (see pyproject.toml)."""
from slidestream.engine.hookspecs import hookimpl

from . import cucim, dali, dicom, image, openslide, tifffile

MODULES: list = [cucim, openslide, dicom, tifffile, image, dali]  # modules that provide slidestream_readers()


@hookimpl
def slidestream_readers():
    return [p for m in MODULES for p in m.slidestream_readers()]
