"""Built-in classifier plugins: the paper's ResNet50, its Table 1 comparison networks, and small nets.

The networks live in ``nets.py`` and ``inception_resnet_v2.py``; they are declared here with
:class:`~slidestream.engine.hookspecs.lazy` builders, so torch is imported only when a network is built.
"""
from slidestream.engine.hookspecs import ClassifierPlugin, hookimpl, lazy

_NETS = "slidestream.plugins.classifiers.nets"


@hookimpl
def slidestream_classifiers():
    return [
        ClassifierPlugin(name="resnet50", build=lazy(f"{_NETS}:build_resnet50"), input_size=224,
                         summary="ResNet50 (He et al. 2016), the paper's classifier; dropout before fc"),
        ClassifierPlugin(name="resnet18", build=lazy(f"{_NETS}:build_resnet18"), input_size=224,
                         summary="ResNet18: a lighter ResNet for quick runs"),
        ClassifierPlugin(name="inception_v3", build=lazy(f"{_NETS}:_inception_v3"), input_size=299,
                         summary="Inception-v3 (Szegedy et al. 2016), Table 1 comparison; input >= 75 px"),
        ClassifierPlugin(name="inception_resnet_v2", build=lazy("slidestream.plugins.classifiers.inception_resnet_v2:build"),
                         input_size=299, summary="Inception-ResNet-v2 (Szegedy et al. 2017), Table 1 comparison; input >= 75 px"),
        ClassifierPlugin(name="vgg19", build=lazy(f"{_NETS}:_vgg19"), input_size=224,
                         summary="VGG19 (Simonyan & Zisserman 2015), Table 1 comparison"),
        ClassifierPlugin(name="small_cnn", build=lazy(f"{_NETS}:_small_cnn"), input_size=64,
                         params={"width": {"type": "integer", "minimum": 1, "description": "channels of the first block"}},
                         summary="4-block CNN for tests, the demo and CPU-only runs"),
    ]
