"""Built-in aggregator plugins: a patient's bag of patches -> one patient probability.

* ``mean`` (Liu et al. 2020), ``median``, ``topk``: fixed rules over patch probabilities (``pooling.py``).
* ``abmil`` (gated attention, Ilse et al. 2018) and ``clam_sb`` (CLAM single-branch, Lu et al. 2021):
  attention-MIL models trained on bags of encoder features (``attention.py``; ``slidestream mil train``).
"""
from slidestream.engine.hookspecs import AggregatorPlugin, hookimpl, lazy

from .pooling import mean, median, topk

_ATT = "slidestream.plugins.aggregators.attention"
_MIL = {
    "hidden": {"type": "integer", "minimum": 1, "description": "width of the first layer (default 256)"},
    "attention": {"type": "integer", "minimum": 1, "description": "width of the gated attention (default 128)"},
    "dropout": {"type": "number", "minimum": 0, "maximum": 1, "description": "dropout after the first layer (default 0.25)"},
}


@hookimpl
def slidestream_aggregators():
    return [
        AggregatorPlugin(name="mean", aggregate=mean, summary="mean of the patch probabilities (the paper's)"),
        AggregatorPlugin(name="median", aggregate=median, summary="median of the patch probabilities"),
        AggregatorPlugin(name="topk", aggregate=topk,
                         params={"k_frac": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                                            "description": "fraction of the highest patch probabilities averaged (default 0.2)"}},
                         summary="mean of the highest k_frac of the patch probabilities"),
        AggregatorPlugin(name="abmil", input="features", build=lazy(f"{_ATT}:build_abmil"), params=dict(_MIL),
                         summary="gated-attention MIL over encoder features (Ilse et al. 2018)"),
        AggregatorPlugin(name="clam_sb", input="features", build=lazy(f"{_ATT}:build_clam_sb"),
                         params={**_MIL, "k_sample": {"type": "integer", "minimum": 1,
                                                      "description": "top/bottom-attended patches for the instance loss (default 8)"},
                                 "bag_weight": {"type": "number", "minimum": 0, "maximum": 1,
                                                "description": "weight of the bag loss vs the instance loss (default 0.7)"}},
                         summary="CLAM single-branch: gated attention + instance clustering loss (Lu et al. 2021)"),
    ]
