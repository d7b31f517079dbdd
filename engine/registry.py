"""The plugin registry: a pluggy PluginManager filled from the ``slidestream.plugins`` entry points.

Built-in plugins are registered through the same entry-point group as third-party packages, so
``slidestream plugins`` shows both, and a lab's package can add a filter without touching ours.
"""
from __future__ import annotations

import functools
import sys
from importlib import metadata

import pluggy

from . import hookspecs
from .errors import ConfigError, UnknownPlugin
from .hookspecs import HOOK_OF_KIND, KINDS, Plugin

ENTRY_POINT_GROUP = "slidestream.plugins"


@functools.lru_cache(maxsize=1)
def manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):  # pluggy's load_setuptools_entrypoints, one by one
        if pm.get_plugin(ep.name) or pm.is_blocked(ep.name):
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as e:  # noqa: BLE001 (a broken third-party package must not stop every command)
            _skip(ep, e)
    return pm


BROKEN: dict[str, str] = {}  # entry point name -> why its package was skipped


def _skip(ep, e: Exception) -> None:
    dist = ep.dist.name if getattr(ep, "dist", None) else ep.name
    _broken(ep.name, f"plugin package {dist!r} ({ep.name} = {ep.value}) failed to load ({type(e).__name__}: {e})")


def _broken(key: str, why: str) -> None:
    """Record (for ``broken_note``) and warn once that a plugin package is skipped."""
    if key not in BROKEN:
        BROKEN[key] = why
        print(f"warning: {why}; its plugins are skipped: reinstall or uninstall it", file=sys.stderr)


def broken_note() -> str:
    """``"; plugin package 'x' (...) failed to load (...)"`` for every package skipped, for unknown-plugin errors."""
    return "".join(f"; {why}" for why in BROKEN.values())


def register(module: object, name: str | None = None) -> None:
    """Register a plugin module at run time (tests, notebooks); clears the lookup cache."""
    manager().register(module, name=name)
    _table.cache_clear()


@functools.lru_cache(maxsize=None)
def _table(kind: str) -> dict[str, tuple[Plugin, str]]:
    pm = manager()
    hook = getattr(pm.hook, HOOK_OF_KIND[kind])
    out: dict[str, tuple[Plugin, str]] = {}
    for impl in hook.get_hookimpls():
        source = pm.get_name(impl.plugin) or repr(impl.plugin)
        try:
            declared = list(impl.function() or [])
        except Exception as e:  # noqa: BLE001 (one package's broken hook must not stop every command)
            _broken(source, f"plugin package {source!r} failed to declare its {kind} plugins ({type(e).__name__}: {e})")
            continue
        for p in declared:
            if p.kind != kind:
                raise ConfigError(f"plugin {p.name!r} from {source} is a {p.kind} but was returned by {HOOK_OF_KIND[kind]}")
            if p.name in out:
                raise ConfigError(f"two {kind} plugins are named {p.name!r} ({out[p.name][1]} and {source}); "
                                  "uninstall one or rename it")
            out[p.name] = (p, source)
    return out


def plugins(kind: str) -> dict[str, Plugin]:
    """All registered plugins of ``kind`` by name."""
    if kind not in KINDS:
        raise ConfigError(f"unknown plugin kind {kind!r}; kinds are {', '.join(KINDS)}")
    return {n: p for n, (p, _) in _table(kind).items()}


def source(kind: str, name: str) -> str:
    """Where a plugin came from (its entry point name)."""
    return _table(kind)[name][1]


def get(kind: str, name: str) -> Plugin:
    """The plugin of ``kind`` called ``name``; a one-line error lists the ones that exist."""
    table = plugins(kind)
    if name not in table:
        known = ", ".join(sorted(table)) or "none"
        raise UnknownPlugin(f"unknown {kind} plugin {name!r}; {nearest(name, table) or f'installed: {known}'} "
                            f"(install the package that provides it, or run `slidestream plugins`){broken_note()}")
    return table[name]


def nearest(name, valid) -> str | None:
    """"did you mean 'X'?" for a misspelt ``name`` among ``valid`` names, or None when none is close."""
    if not isinstance(name, str):
        return None
    import difflib

    names = [v for v in valid if isinstance(v, str)]
    same_case = [v for v in names if v.lower() == name.lower()]  # 'c' for 'C': difflib alone finds nothing
    close = same_case or difflib.get_close_matches(name, names, n=1, cutoff=0.7)
    return f"did you mean {close[0]!r}?" if close else None


def distribution_versions() -> dict[str, str]:
    """Versions of the packages that shape results, for manifests."""
    names = ["slidestream", "numpy", "zarr", "numcodecs", "dask", "scikit-image", "scikit-learn", "torch",
             "torchvision", "cucim-cu13", "nvidia-dali-cuda130", "openslide-python", "openslide-bin", "pydicom",
             "tifffile", "pillow", "pluggy"]
    global _VERSIONS
    if _VERSIONS is None:  # once per process: the installed packages do not change under a run
        out = {}
        for n in names:
            try:
                out[n] = _version(metadata.distribution(n))
            except metadata.PackageNotFoundError:
                pass
        _VERSIONS = out
    return dict(_VERSIONS)


_VERSIONS: dict[str, str] | None = None


def _version(dist) -> str:
    """``dist.version`` without parsing the whole METADATA file as e-mail headers (~5 ms a package):
    its ``Version:`` line, which the core metadata spec puts in the header block."""
    for line in (dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "").splitlines():
        if line.startswith("Version:"):
            return line[8:].strip()
        if not line:  # end of the headers
            break
    return dist.version
