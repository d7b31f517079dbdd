"""Built-in encoder plugins: frozen patch encoders built with timm (weights only from a local file), and one
without weights.

``morphometry`` (``morphometry.py``) is weight-free handcrafted nuclear morphometry, stain and texture
features (numpy/scikit-image on the CPU). ``resnet50_trunc`` is CLAM's baseline; the others are presets of
public pathology foundation models (the exact timm architecture and input transform of each model card);
``timm`` builds any timm model by name.
The networks are declared with :class:`~slidestream.engine.hookspecs.lazy` builders (``timm_encoders.py``),
so torch and timm are imported only when an encoder is built.
"""
from slidestream.engine.hookspecs import EncoderPlugin, hookimpl, lazy

from .timm_encoders import PRESETS

_WEIGHTS = {"weights": {"type": ["string", "null"],
                        "description": "local weights file (.safetensors, or a torch state dict .pth/.pt/.bin); "
                                       "null = random init (tests only)"}}
_TIMM = {
    **_WEIGHTS,
    "model": {"type": "string", "description": "a timm model name, e.g. vit_small_patch16_224"},
    "kwargs": {"type": "object", "description": "keyword arguments for timm.create_model (pretrained is always False)"},
    "input_size": {"type": "integer", "minimum": 8, "description": "side the patches are resized to (default 224)"},
    "mean": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
    "std": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 3, "maxItems": 3},
}

_MORPHOMETRY = {
    "input_size": {"type": "integer", "minimum": 16, "description": "side the patches are resized to; give the "
                   "patch size (default 224) so nuclei are measured unresampled (lengths are in its pixels)"},
    "min_h": {"type": "number", "minimum": 0, "description": "lowest hematoxylin optical density counted as "
              "nucleus (the per-patch Otsu threshold is used when higher; default 0.03)"},
    "min_area": {"type": "integer", "minimum": 1, "description": "smallest nucleus in pixels (default 8)"},
}


@hookimpl
def slidestream_encoders():
    out = [EncoderPlugin(name=name, build=lazy(f"slidestream.plugins.encoders.timm_encoders:build_{name}"),
                         params=dict(_WEIGHTS), input_size=p.input_size, mean=p.mean, std=p.std, dim=p.dim,
                         resize=p.resize, interpolation=p.interpolation,
                         summary=p.summary) for name, p in PRESETS.items()]
    out.append(EncoderPlugin(name="timm", build=lazy("slidestream.plugins.encoders.timm_encoders:build_timm"),
                             params=_TIMM, required=("model",), input_size=0, dim=0,
                             summary="any timm model by name (num_classes=0), local weights"))
    out.append(EncoderPlugin(
        name="morphometry", build=lazy("slidestream.plugins.encoders.morphometry:build"), params=_MORPHOMETRY,
        input_size=0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), dim=81,
        summary="weight-free nuclear morphometry (colour deconvolution, Otsu nuclei, shape statistics and shape "
                "histograms), stain and GLCM texture, 81-d, CPU"))
    return out
