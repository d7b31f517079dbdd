"""Encoder plugins: foundation-model presets built on the meta device, local weights only, clear errors."""
import numpy as np
import pytest
import torch

from slidestream.engine import registry
from slidestream.engine.errors import ConfigError
from slidestream.plugins.encoders.timm_encoders import PRESETS, create

# Published parameter counts, with the precision they were published at: UNI (Chen et al. 2024, ViT-L/16,
# 303M), Virchow (Vorontsov et al. 2024, 632M), H-optimus-0 (Bioptimus model card, 1.1B), Prov-GigaPath tile
# encoder (Xu et al. 2024, ViT-giant, 1.1B), CLAM's resnet50_trunc (8.54M, printed by CLAM's print_network).
PUBLISHED = {"uni": (303e6, 1e6), "virchow": (632e6, 1e6), "h_optimus_0": (1.1e9, 0.1e9),
             "gigapath": (1.1e9, 0.1e9), "resnet50_trunc": (8.54e6, 0.01e6)}
TINY = {"model": "vit_tiny_patch16_224", "input_size": 32,
        "kwargs": {"img_size": 32, "depth": 2, "embed_dim": 24, "num_heads": 2}}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_count_and_dim_on_meta(name):
    model = create(name, device="meta")
    n = sum(p.numel() for p in model.parameters())
    published, unit = PUBLISHED[name]
    assert abs(n - published) <= unit, f"{name}: {n:,} parameters, published {published:,.0f}"
    assert n == PRESETS[name].params  # the exact count: any change of the timm kwargs shows here
    enc = registry.get("encoder", name)
    assert enc.dim == PRESETS[name].dim and enc.input_size == 224


def test_preset_output_dims_on_meta():
    """Virchow's features are its class token and mean patch token side by side (2 x 1280)."""
    from slidestream.plugins.encoders.timm_encoders import _Trunc, _wrap, virchow_pool

    m = create("virchow", device="meta")
    tokens = m(torch.empty(2, 3, 224, 224, device="meta"))
    assert tokens.shape == (2, 257, 1280)
    t = torch.rand(2, 257, 1280)
    emb = virchow_pool(t)
    assert emb.shape == (2, 2560) and torch.equal(emb[:, :1280], t[:, 0])
    assert torch.allclose(emb[:, 1280:], t[:, 1:].mean(1))
    r = _wrap(_Trunc(create("resnet50_trunc", device="meta")), 1024, 224)
    assert r(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, 1024)


def test_missing_weights_names_file_and_preset(tmp_path):
    with pytest.raises(ConfigError, match=r"encoder 'uni': weights file .*uni\.safetensors not found"):
        registry.get("encoder", "uni").build(weights=str(tmp_path / "uni.safetensors"))


def _tiny_weights(tmp_path, fmt):
    import timm

    torch.manual_seed(3)
    src = timm.create_model(TINY["model"], pretrained=False, num_classes=0, **TINY["kwargs"]).eval()
    sd = src.state_dict()
    path = tmp_path / f"tiny.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return src, sd, path


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_local_weights_load_exactly(tmp_path, fmt):
    src, _, path = _tiny_weights(tmp_path, fmt)
    enc = registry.get("encoder", "timm").build(**TINY, weights=str(path))
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(enc(x), src(x), atol=1e-6)
    assert enc.dim == 24 and enc.input_size == 32


def test_wrong_keys_or_shapes_name_the_first_mismatch(tmp_path):
    from safetensors.torch import save_file

    _, sd, _ = _tiny_weights(tmp_path, "pth")
    missing = {k: v for k, v in sd.items() if k != "cls_token"}
    save_file({k: v.contiguous() for k, v in missing.items()}, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ConfigError, match=r"has no tensor 'cls_token'"):
        registry.get("encoder", "timm").build(**TINY, weights=str(tmp_path / "missing.safetensors"))
    bad = dict(sd, pos_embed=torch.zeros(1, 9, 24))  # a 48 px ViT's position table in a 32 px one
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(ConfigError, match=r"'pos_embed' has shape \(1, 9, 24\), the model needs \(1, 5, 24\)"):
        registry.get("encoder", "timm").build(**TINY, weights=str(tmp_path / "shape.pth"))
    torch.save(dict(sd, extra=torch.zeros(1)), tmp_path / "extra.pth")
    with pytest.raises(ConfigError, match=r"has a tensor 'extra' the model does not have"):
        registry.get("encoder", "timm").build(**TINY, weights=str(tmp_path / "extra.pth"))


def test_resnet50_trunc_from_torchvision_weights(tmp_path):
    """A torchvision ImageNet resnet50 file initialises the truncated net (layer4 and fc are not used)."""
    from torchvision.models import resnet50

    torch.manual_seed(0)
    tv = resnet50(weights=None).eval()
    torch.save(tv.state_dict(), tmp_path / "r50.pth")
    enc = registry.get("encoder", "resnet50_trunc").build(weights=str(tmp_path / "r50.pth"))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))).mean(dim=(2, 3))
        assert torch.allclose(enc(x), ref, atol=1e-5) and enc(x).shape == (2, 1024)


def test_unknown_timm_model():
    with pytest.raises(ConfigError, match="unknown timm model 'no_such_net'"):
        registry.get("encoder", "timm").build(model="no_such_net")


def test_input_transform_resize_then_centre_crop():
    """Prov-GigaPath's transform: resize to 256, centre-crop 224 (others resize straight to their input size)."""
    from slidestream.engine.features import preprocess

    g = registry.get("encoder", "gigapath")
    assert (g.resize, g.input_size, g.interpolation) == (256, 224, "bicubic")
    assert registry.get("encoder", "uni").resize == 0
    img = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(1, 8, 8, 3)
    spec = {"input_size": 4, "resize": 8, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}
    x = preprocess(img, spec, "cpu")
    want = (torch.from_numpy(img[0, 2:6, 2:6]).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    assert x.shape == (1, 3, 4, 4) and torch.allclose(x[0], want)
    assert preprocess(img, {**spec, "resize": 0}, "cpu").shape == (1, 3, 4, 4)  # resized, not cropped
