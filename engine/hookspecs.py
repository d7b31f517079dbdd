"""The plugin contract of slidestream: read this file and one example plugin, and you can write one.

A plugin is a Python module (or object) that implements one or more of the hooks below, each
returning a list of small dataclasses that describe what it provides. Register it through the
entry-point group ``slidestream.plugins`` in your package's ``pyproject.toml``::

    [project.entry-points."slidestream.plugins"]
    mylab = "mylab_filters"            # a module with @hookimpl functions

    # mylab_filters.py
    import numpy as np
    from slidestream.engine.hookspecs import hookimpl, FilterPlugin

    def _dark(rgb, mask, max_mean=40):
        return mask & (rgb.mean(axis=2) > max_mean)

    @hookimpl
    def slidestream_filters():
        return [FilterPlugin(name="mylab.dark", apply=_dark,
                             params={"max_mean": {"type": "number", "minimum": 0, "maximum": 255}})]

The built-in plugins in ``plugins/`` register exactly this way (see ``plugins/filters/otsu.py`` for a
short one); each kind's class below names one built-in example (``Example:``), and ``tests/plugin_pkg/``
is a third-party package with a filter, an encoder and an aggregator. A pipeline file then names the plugin, ``{"name": "mylab.dark", "params": {"max_mean": 30}}``,
and ``slidestream validate`` checks the params against the fragment you declared before any slide is read.

Rules every kind follows:

* ``name`` is unique per kind; dotted names (``lab.thing``) keep third-party plugins apart.
* ``params`` is a JSON-Schema (draft 2020-12) ``properties`` mapping for the keyword arguments of the
  callable; ``required`` lists the ones without default. Unknown keys are refused.
* Plugins take and return plain arrays (numpy on CPU; CuPy/torch on a GPU) and these dataclasses.
  They never touch the patch store or the scheduler: the engine does.
* Callables must be importable top-level functions (they are sent to dask workers by reference).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import pluggy

PROJECT = "slidestream"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

KINDS = ("reader", "filter", "tiling", "normalization", "augmenter", "classifier", "fusion", "encoder", "aggregator")


class lazy:
    """A callable standing for ``"package.module:function"``, imported on first call.

    Declare a plugin without importing its heavy libraries (torch, CuPy, ...), so that listing
    plugins and validating pipelines stays fast: ``build=lazy("mylab.nets:build_net")``.
    It pickles by name, so it also travels to dask workers.
    """

    def __init__(self, target: str):
        self.target = target
        self._fn: Callable | None = None

    def __call__(self, *args, **kwargs):
        if self._fn is None:
            import importlib

            module, _, attr = self.target.partition(":")
            self._fn = getattr(importlib.import_module(module), attr)
        return self._fn(*args, **kwargs)

    def __reduce__(self):
        return (lazy, (self.target,))

    def __repr__(self) -> str:
        return f"lazy({self.target!r})"


# --------------------------------------------------------------------------------------------
# What a plugin declares
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plugin:
    """Fields common to every kind: a unique name, a parameter schema, and a one-line summary."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)  # JSON-Schema "properties"
    required: Sequence[str] = ()
    summary: str = ""
    kind: str = ""  # set by each subclass

    def param_schema(self) -> dict[str, Any]:
        """The JSON-Schema object for this plugin's ``params`` (closed: unknown keys are errors)."""
        return {"type": "object", "properties": dict(self.params), "required": list(self.required),
                "additionalProperties": False}


class SlideReader(Protocol):
    """An open slide. Level 0 is the full resolution; coordinates are level-0 pixels (x, y)."""

    path: str
    level_dimensions: Sequence[tuple[int, int]]  # (width, height) per level
    level_downsamples: Sequence[float]
    mpp: float | None  # micrometres per level-0 pixel (its width), None when the file does not say
    # optional ``mpp_y``: its height, when the file says another (non-square pixels are refused: patches would be stretched)
    # optional ``mpp_problem``: why the file's resolution metadata cannot be trusted ('' when it can; the slide is refused)
    objective_power: float | None  # scanner objective (e.g. 40), None when unknown

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 array (h, w, 3) of ``size`` pixels at ``level``, top-left at level-0 ``location``.
        Areas outside the slide or transparent come back white (255)."""

    def close(self) -> None: ...

    # Optional. ``read_regions(requests) -> list`` (``requests``: ``[(location, level, size), ...]``): several
    # regions in one call; the engine then reads a batch of tiles at once (the DALI reader). ``decode_device``
    # (``"cpu"``/``"cuda"``): which device decoded the pixels, recorded per slide (default ``"cpu"``).
    # Damaged data: raise ``slidestream.engine.errors.BrokenFile`` (from ``open`` or a read) with the cause in
    # plain words; any other exception of a read (RuntimeError, ValueError, OSError) is reported as
    # "cannot decode the image data: <its words>".


@dataclass(frozen=True)
class ReaderPlugin(Plugin):
    """Opens slide files. ``open(path, device="cpu") -> SlideReader`` raises on a file it cannot read;
    the engine then tries the next reader, in ascending ``priority`` (the pipeline's ``reader.order``
    overrides). ``device`` is ``"cpu"`` or ``"cuda"``: a reader that can decode on the GPU does so
    (regions still come back as numpy arrays); others ignore it. ``suffixes`` lists the file endings
    it is meant for (lower case, with dot; empty = any). A ``BrokenFile`` from ``open`` ends the search (no
    other reader is tried). Example: ``plugins/readers/image.py``."""

    open: Callable[..., SlideReader] | None = None
    priority: int = 100
    suffixes: Sequence[str] = ()
    kind: str = "reader"


@dataclass(frozen=True)
class FilterPlugin(Plugin):
    """One tissue-segmentation step on the low-resolution thumbnail.

    ``apply(rgb, mask, **params) -> mask``: ``rgb`` is the (h, w, 3) uint8 thumbnail, ``mask`` the bool
    (h, w) mask so far (True = tissue, all True before the first filter). Return the new mask: a colour
    filter usually returns ``mask & keep(rgb)``; a clean-up filter (small objects) works on ``mask``.
    Filters run in the order the pipeline lists them. Example: ``plugins/filters/otsu.py``.
    """

    apply: Callable[..., np.ndarray] | None = None
    kind: str = "filter"


@dataclass(frozen=True)
class Tile:
    """A tile chosen for patch extraction, in level-0 pixels (``w``/``h`` are its level-0 extent)."""

    x: int
    y: int
    w: int
    h: int
    row: int
    col: int
    tissue: float  # fraction of the tile's footprint that is tissue in the mask, 0..1
    score: float  # what tiles were ranked by


@dataclass(frozen=True)
class Geometry:
    """What tiling needs to know about a slide: its level-0 size, the thumbnail's scale, and the
    level-0 size of one output pixel at the pipeline's magnification (``factor``; 4.0 for a 40x slide
    tiled at 10x)."""

    width: int
    height: int
    thumb_scale: float  # level-0 pixels per thumbnail pixel
    factor: float  # level-0 pixels per output pixel


@dataclass(frozen=True)
class TilingPlugin(Plugin):
    """Chooses tiles. ``select(mask, rgb, geometry, **params) -> list[Tile]``: ``mask`` is the bool tissue
    mask of the thumbnail, ``rgb`` the thumbnail (uint8, masked pixels kept as they are), ``geometry`` a
    :class:`Geometry`. Tiles are returned best first; the engine reads them in that order.
    Example: ``plugins/tiling/grid.py``."""

    select: Callable[..., list[Tile]] | None = None
    kind: str = "tiling"


@dataclass(frozen=True)
class NormalizationPlugin(Plugin):
    """Normalizes a batch of patches. ``apply(batch, **params) -> batch``: ``batch`` is (n, h, w, 3)
    uint8 (numpy, or a CuPy array on the GPU path); it returns (n, h, w, c) uint8 with ``c`` = 3 or 1.
    ``channels`` tells the classifier which ``c`` to expect. Optional ``freeze(params) -> params``: the same
    normalization with no file behind it (a ``target`` image replaced by the statistics fitted to it), what a
    model bundle records so that prediction normalizes as training did wherever the bundle is copied (called
    only when the step has params). Example: ``plugins/normalization/stain.py`` (``reinhard``, with ``freeze``)."""

    apply: Callable[..., Any] | None = None
    channels: int = 3
    freeze: Callable[..., Any] | None = None
    kind: str = "normalization"


@dataclass(frozen=True)
class AugmenterPlugin(Plugin):
    """A generative model of one class's patches (e.g. a GAN or a diffusion model).

    ``train(patches, out_dir, progress=True, **params) -> dict``: ``patches`` is a uint8 (n, h, w, 3)
    array-like (numpy, memmap or zarr) of one class's real, already normalized training patches; it
    writes a self-contained model directory ``out_dir``, resumes when ``out_dir`` holds a checkpoint,
    shows a progress bar when ``progress`` is true, and returns a JSON-able summary (e.g. a quality
    score such as ``{"swd": ...}``) that the engine records in the model's manifest.
    ``sample(model_dir, n, seed) -> np.ndarray``: n synthetic uint8 (n, h, w, 3) patches, deterministic
    for a seed. Optional ``stages(model_dir, n, seed) -> [(label, patches)]``: samples from coarse to
    fine training stages, for ``slidestream gan grid``. ``runtime_params`` names the params that do not
    change what is learned (device, checkpoint interval, ...): a resumed training may change them.
    Example: ``plugins/augmenters/__init__.py`` (declaration) and ``pggan.py``.
    """

    train: Callable[..., Any] | None = None
    sample: Callable[..., np.ndarray] | None = None
    stages: Callable[..., list] | None = None
    runtime_params: Sequence[str] = ()
    kind: str = "augmenter"


@dataclass(frozen=True)
class ClassifierPlugin(Plugin):
    """A patch classifier architecture. ``build(num_classes, in_channels, dropout, **params) ->
    torch.nn.Module`` returns a network mapping (n, in_channels, s, s) float tensors to (n, num_classes)
    logits, with a dropout layer before its output layer; ``params`` are the pipeline's ``classifier.params``.
    ``input_size`` is its native patch size (patches are resized to it unless ``training.input_size`` is set).
    ``training.weights`` (a local ImageNet state dict) is loaded into the module by key name and shape; the
    first conv is summed over RGB for one-channel input. Example: ``plugins/classifiers/__init__.py``
    (declarations) and ``nets.py``."""

    build: Callable[..., Any] | None = None
    input_size: int = 224
    kind: str = "classifier"


@dataclass(frozen=True)
class FusionPlugin(Plugin):
    """Combines the patient-level image probability with clinical variables.

    ``fit(table, **params) -> state`` learns from the patients of ``training.fusion_split`` (val by default,
    out of sample; out-of-fold train+val with ``fusion_cv``), ``table`` being a dict of equal-length numpy
    columns (``patient_id``, ``label``, ``age``, ``image_prob``, ``split``); ``state`` must be a JSON-able
    dict (stored in the bundle); raise ``ConfigError`` when these patients cannot fit it (the engine names the
    split). ``predict(state, table) -> dict[str, np.ndarray]`` returns one probability column per
    predictor it defines (e.g. ``{"age": ..., "age+image": ...}``). Example: ``plugins/fusion/age_gda.py``."""

    fit: Callable[..., dict] | None = None
    predict: Callable[..., dict] | None = None
    kind: str = "fusion"


@dataclass(frozen=True)
class EncoderPlugin(Plugin):
    """A frozen patch encoder (ImageNet CNN, pathology foundation model): patches -> feature vectors.

    ``build(**params) -> torch.nn.Module`` returns a network in eval mode mapping (n, 3, s, s) float tensors
    (RGB scaled to 0..1, then ``(x - mean) / std``) to (n, dim) float features; ``s`` = ``input_size``
    (the engine resizes patches of another size: to ``resize`` then centre-cropped, or straight to ``s``). Weights come only from a local file the user names
    (a ``weights`` param); nothing is downloaded. A plugin whose size or dim depends on its params declares
    0 here and sets ``input_size`` / ``dim`` (or ``mean``, ``std``, ``resize``, ``interpolation``) attributes on
    the module it builds (they take precedence). Example: ``plugins/encoders/__init__.py`` (declarations) and
    ``morphometry.py``."""

    build: Callable[..., Any] | None = None
    input_size: int = 224
    mean: Sequence[float] = (0.485, 0.456, 0.406)  # ImageNet
    std: Sequence[float] = (0.229, 0.224, 0.225)
    dim: int = 0
    resize: int = 0  # > input_size: resize to this side, then centre-crop input_size (0: resize to input_size)
    interpolation: str = "bilinear"  # or "bicubic" (antialiased either way)
    kind: str = "encoder"


@dataclass(frozen=True)
class AggregatorPlugin(Plugin):
    """Turns a patient's bag of patches into one patient probability (of the positive class, IDH-mutant).

    ``input`` says what the bag holds:

    * ``"probs"``: ``aggregate(probs, **params) -> (prob, attention)``: ``probs`` the (n,) patch
      probabilities of one patient; ``attention`` an (n,) weight per patch, or None (mean, median, top-k).
    * ``"features"``: a trainable attention-MIL model. ``build(in_dim, **params) -> torch.nn.Module`` whose
      ``forward(bag)`` maps one (n, in_dim) float bag of patch features to ``(logit, attention)``: a scalar
      logit of the patient being positive and (n,) attention weights summing to 1. It may define
      ``instance_loss(bag, label, attention)`` (an extra loss, e.g. CLAM's instance clustering), which
      training adds.

    Only ``"probs"`` aggregators can be named in ``training.aggregation.method``; only ``"features"`` ones in
    the ``aggregator`` section (``slidestream mil train``). Example: ``plugins/aggregators/__init__.py``
    (declarations), ``pooling.py`` and ``attention.py``.
    """

    input: str = "probs"
    aggregate: Callable[..., Any] | None = None
    build: Callable[..., Any] | None = None
    kind: str = "aggregator"


# --------------------------------------------------------------------------------------------
# The hooks: one per kind. Each returns the plugins of that kind a module provides.
# --------------------------------------------------------------------------------------------
@hookspec
def slidestream_readers() -> list[ReaderPlugin]:
    """Slide readers this module provides."""


@hookspec
def slidestream_filters() -> list[FilterPlugin]:
    """Tissue filters this module provides."""


@hookspec
def slidestream_tiling() -> list[TilingPlugin]:
    """Tile selectors this module provides."""


@hookspec
def slidestream_normalization() -> list[NormalizationPlugin]:
    """Patch normalizers this module provides."""


@hookspec
def slidestream_augmenters() -> list[AugmenterPlugin]:
    """Generative augmenters this module provides."""


@hookspec
def slidestream_classifiers() -> list[ClassifierPlugin]:
    """Classifier architectures this module provides."""


@hookspec
def slidestream_fusion() -> list[FusionPlugin]:
    """Fusion models (image probability + clinical data) this module provides."""


@hookspec
def slidestream_encoders() -> list[EncoderPlugin]:
    """Patch encoders (patches -> feature vectors) this module provides."""


@hookspec
def slidestream_aggregators() -> list[AggregatorPlugin]:
    """Patient aggregators (bag of patch probabilities or features -> patient probability) this module provides."""


HOOK_OF_KIND = {
    "reader": "slidestream_readers",
    "filter": "slidestream_filters",
    "tiling": "slidestream_tiling",
    "normalization": "slidestream_normalization",
    "augmenter": "slidestream_augmenters",
    "classifier": "slidestream_classifiers",
    "fusion": "slidestream_fusion",
    "encoder": "slidestream_encoders",
    "aggregator": "slidestream_aggregators",
}
