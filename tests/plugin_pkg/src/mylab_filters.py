"""A third-party tissue filter: drops very dark pixels (debris, ink) from the mask."""

from slidestream.engine.hookspecs import FilterPlugin, hookimpl


def drop_dark(rgb, mask, max_mean=40):
    return mask & (rgb.mean(axis=2) > max_mean)


@hookimpl
def slidestream_filters():
    return [FilterPlugin(name="mylab.dark", apply=drop_dark, summary="drop pixels darker than max_mean",
                         params={"max_mean": {"type": "number", "minimum": 0, "maximum": 255}})]
