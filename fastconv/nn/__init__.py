"""A small PyTorch-shaped module system with explicit backward passes.

``Module`` (``forward``/``backward``, ``parameters()``, ``state_dict()``...),
``Parameter`` (``data`` and ``grad`` NumPy arrays), the layers and the loss.
Convolution, pooling and dropout run on fastconv's kernels.
"""

from fastconv.nn import init
from fastconv.nn.layers import (
    AdaptiveAvgPool2d,
    AvgPool1d,
    AvgPool2d,
    BatchNorm2d,
    BatchNormReLU2d,
    Conv1d,
    Conv2d,
    ConvTranspose2d,
    Dropout,
    Flatten,
    Identity,
    Linear,
    MaxPool1d,
    MaxPool2d,
    ReLU,
)
from fastconv.nn.loss import CrossEntropyLoss, log_softmax, softmax
from fastconv.nn.module import IncompatibleKeys, Module, Parameter, Sequential

__all__ = [
    "Module", "Parameter", "Sequential", "IncompatibleKeys", "init",
    "Conv2d", "ConvTranspose2d", "Conv1d", "Linear", "ReLU", "Flatten",
    "Identity", "MaxPool2d", "AvgPool2d", "MaxPool1d", "AvgPool1d",
    "AdaptiveAvgPool2d", "Dropout", "BatchNorm2d", "BatchNormReLU2d",
    "CrossEntropyLoss", "log_softmax", "softmax",
]
