"""A third-party encoder and aggregator: colour statistics as patch features, and max pooling per patient."""
import numpy as np

from slidestream.engine.hookspecs import AggregatorPlugin, EncoderPlugin, hookimpl


def build_meanrgb():
    import torch

    class MeanRGB(torch.nn.Module):
        def forward(self, x):  # (n, 3, s, s) normalized -> (n, 6): per-channel mean and std
            return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)

    return MeanRGB().eval()


def max_prob(probs):
    return float(np.max(probs)), None


@hookimpl
def slidestream_encoders():
    return [EncoderPlugin(name="mylab.meanrgb", build=build_meanrgb, input_size=16, mean=(0, 0, 0), std=(1, 1, 1),
                          dim=6, summary="per-channel mean and std of the patch")]


@hookimpl
def slidestream_aggregators():
    return [AggregatorPlugin(name="mylab.max", aggregate=max_prob, summary="the highest patch probability")]
