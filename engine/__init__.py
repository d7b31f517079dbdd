"""slidestream engine: the plugin contract, registry, pipeline files, slide geometry, patch store,
dask runner and CLI. No algorithms live here: those are plugins (``slidestream.plugins``)."""
__version__ = "0.1.0"
