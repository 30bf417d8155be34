"""The bundled networks and their checkpoints.

``SmallCNN`` (conv-relu-maxpool twice, dropout, dense) and the CIFAR-style
``ResNet`` (depth 6n+2), with torchvision's parameter names;
``save_checkpoint`` / ``load_checkpoint`` read and write ``.npz`` files.
"""

from fastconv.models.checkpoint import (
    build_model,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from fastconv.models.resnet import BasicBlock, ResNet, resnet_depth
from fastconv.models.small_cnn import SmallCNN

__all__ = ["SmallCNN", "ResNet", "BasicBlock", "resnet_depth", "build_model",
           "save_checkpoint", "load_checkpoint", "read_checkpoint"]
