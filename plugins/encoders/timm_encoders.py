"""timm encoders: CLAM's truncated ResNet50 and pathology foundation-model presets.

Each preset is the timm architecture and input transform its model card gives; ``pretrained=False``
always: the weights come from the local file named by the ``weights`` param (safetensors, or a torch state
dict loaded with ``weights_only=True``). Parameter counts (checked by tests/test_encoders.py on the meta
device) match the published figures.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class Preset:
    model: str  # timm model name
    kwargs: dict[str, Any]  # timm.create_model kwargs (besides pretrained=False)
    dim: int
    params: int  # published parameter count (of what is built)
    summary: str
    input_size: int = 224
    mean: tuple = IMAGENET[0]
    std: tuple = IMAGENET[1]
    resize: int = 0  # resize to this side, then centre-crop input_size (0: straight to input_size)
    interpolation: str = "bilinear"
    ignore: tuple = ()  # key prefixes of the weights file not used by the encoder
    extra: dict[str, Any] = field(default_factory=dict)  # kwargs needing torch/timm objects, filled lazily


PRESETS: dict[str, Preset] = {
    "resnet50_trunc": Preset(
        "resnet50", {"num_classes": 0}, 1024, 8_543_296, ignore=("layer4.", "fc."),
        summary="ImageNet ResNet50 cut after layer3 + average pool, 1024-d (CLAM's baseline); "
                "weights: a torchvision/timm resnet50 state dict"),
    "uni": Preset(
        "vit_large_patch16_224", {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0,
                                  "dynamic_img_size": True}, 1024, 303_350_784,
        summary="UNI (Chen et al. 2024), ViT-L/16, 1024-d; weights: UNI's pytorch_model.bin"),
    "virchow": Preset(
        "vit_huge_patch14_224", {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "mlp_ratio": 5.3375,
                                 "global_pool": "", "dynamic_img_size": True}, 2560, 631_229_184, interpolation="bicubic",
        extra={"mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"},
        summary="Virchow (Vorontsov et al. 2024), ViT-H/14 SwiGLU; class token + mean patch token, 2560-d"),
    "h_optimus_0": Preset(
        "vit_giant_patch14_reg4_dinov2", {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False,
                                          "num_classes": 0}, 1536, 1_134_774_272,
        mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517),
        summary="H-optimus-0 (Bioptimus 2024), ViT-g/14 with 4 registers, 1536-d"),
    "gigapath": Preset(
        "vit_giant_patch14_dinov2", {"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536,
                                     "depth": 40, "num_heads": 24, "init_values": 1e-5, "mlp_ratio": 5.33334,
                                     "num_classes": 0}, 1536, 1_134_953_984, resize=256, interpolation="bicubic",
        summary="Prov-GigaPath tile encoder (Xu et al. 2024), ViT-g/14 layout with 16 px patches, 1536-d"),
}


def _extra(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from timm import layers

    names = {"SwiGLUPacked": layers.SwiGLUPacked, "SiLU": torch.nn.SiLU}
    return {k: names[v] for k, v in spec.items()}


def create(name: str, device: str | None = None):
    """The preset's bare timm model (random init), on ``device`` (``"meta"`` for counting parameters)."""
    import timm
    import torch

    p = PRESETS[name]
    with torch.device(device or "cpu"):
        m = timm.create_model(p.model, pretrained=False, **p.kwargs, **_extra(p.extra))
    if name == "resnet50_trunc":
        del m.layer4  # cut after layer3 (see _Trunc)
    return m


def read_weights(path: str | Path, preset: str) -> dict:
    """A state dict from a local file; a one-line ConfigError naming the file and the preset otherwise."""
    import torch

    from slidestream.engine.errors import ConfigError

    p = Path(path)
    if not p.is_file() or not p.stat().st_size:
        why = "is empty (0 bytes)" if p.is_file() else "is a folder" if p.is_dir() else "not found"
        raise ConfigError(f"encoder {preset!r}: weights file {p} {why}; download the model's weights yourself "
                          "and give their local path in encoder.params.weights (nothing is downloaded)")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one user-facing error
        raise ConfigError(f"encoder {preset!r}: cannot read weights file {p} ({type(e).__name__}: {next(iter(str(e).splitlines()), '')[:120]}); "
                          "give a .safetensors file or a torch state dict") from None
    for key in ("state_dict", "model", "teacher"):  # common checkpoint wrappers
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ConfigError(f"encoder {preset!r}: weights file {p} holds a {type(sd).__name__}, not a state dict")
    return sd


def load_state(model, sd: dict, path: str | Path, preset: str, ignore: tuple = ()) -> None:
    """Load a state dict strictly: a one-line error names the first missing, unexpected or mis-shaped key."""
    from slidestream.engine.errors import ConfigError

    sd = {k: v for k, v in sd.items() if not k.startswith(ignore)}
    own = model.state_dict()
    for k, v in own.items():
        if k not in sd:
            raise ConfigError(f"encoder {preset!r}: weights file {path} has no tensor {k!r} "
                              f"({len(sd)} tensors, e.g. {next(iter(sd), 'none')!r}); is it the {preset} checkpoint?")
        if tuple(sd[k].shape) != tuple(v.shape):
            raise ConfigError(f"encoder {preset!r}: weights file {path}: {k!r} has shape {tuple(sd[k].shape)}, "
                              f"the model needs {tuple(v.shape)}; is it the {preset} checkpoint?")
    for k in sd:
        if k not in own:
            raise ConfigError(f"encoder {preset!r}: weights file {path} has a tensor {k!r} the model does not have; "
                              f"is it the {preset} checkpoint?")
    model.load_state_dict(sd, strict=True)


def _wrap(model, dim: int, input_size: int, pool: Callable | None = None):
    import torch
    from torch import nn

    class TimmEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.dim, self.input_size = dim, input_size

        @torch.inference_mode()
        def forward(self, x):
            out = self.model(x)
            return pool(out) if pool else out

    return TimmEncoder().eval()


def _preset(name: str, weights: str | None = None):
    p = PRESETS[name]
    sd = read_weights(weights, name) if weights is not None else None  # a missing file fails before building
    m = create(name)
    if sd is not None:
        load_state(m, sd, weights, name, p.ignore)
    if name == "resnet50_trunc":
        return _wrap(_Trunc(m), p.dim, p.input_size)
    return _wrap(m, p.dim, p.input_size, virchow_pool if name == "virchow" else None)


def virchow_pool(tokens):
    """Virchow's embedding (model card): its class token and the mean of its patch tokens, side by side."""
    import torch

    return torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=-1)


def _Trunc(m):
    """ResNet50 stem + layer1..3, then global average pooling (CLAM's ``resnet50_trunc``)."""
    from torch import nn

    class Trunc(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = m

        def forward(self, x):
            n = self.net
            x = n.maxpool(n.act1(n.bn1(n.conv1(x))))
            return n.layer3(n.layer2(n.layer1(x))).mean(dim=(2, 3))

    return Trunc()


def build_resnet50_trunc(weights: str | None = None):
    return _preset("resnet50_trunc", weights)


def build_uni(weights: str | None = None):
    return _preset("uni", weights)


def build_virchow(weights: str | None = None):
    return _preset("virchow", weights)


def build_h_optimus_0(weights: str | None = None):
    return _preset("h_optimus_0", weights)


def build_gigapath(weights: str | None = None):
    return _preset("gigapath", weights)


def build_timm(model: str, kwargs: dict | None = None, weights: str | None = None, input_size: int = 224,
               mean: list | None = None, std: list | None = None):
    """Any timm model by name, with ``num_classes=0`` (pooled features), from a local weights file."""
    import timm

    from slidestream.engine.errors import ConfigError

    if model not in timm.list_models():
        raise ConfigError(f"encoder 'timm': unknown timm model {model!r}; see timm.list_models()")
    try:
        m = timm.create_model(model, pretrained=False, **{"num_classes": 0, **(kwargs or {})})
    except TypeError as e:
        raise ConfigError(f"encoder 'timm': {model} does not take these kwargs: {e}") from None
    if weights is not None:
        load_state(m, read_weights(weights, "timm"), weights, "timm")
    enc = _wrap(m, int(m.num_features), input_size)
    if mean is not None:
        enc.mean = tuple(mean)
    if std is not None:
        enc.std = tuple(std)
    return enc
