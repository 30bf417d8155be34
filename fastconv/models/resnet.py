"""The CIFAR-style ResNet of He et al. (2016), parameter names as torchvision's."""

from __future__ import annotations

from fastconv import nn
from fastconv.nn import init


def _conv3x3(in_planes, out_planes, stride=1, generator=None):
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1,
                     bias=False, generator=generator)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU (the sum
    and the ReLU in one pass, ``relu2(out, shortcut)``).

    torchvision's signature ``BasicBlock(inplanes, planes, stride,
    downsample)``; ``downsample`` (a 1x1 strided conv + BN in a Sequential,
    or None for the identity) maps the input to the output's shape. The
    first BN and its ReLU are one fused layer (``nn.BatchNormReLU2d``,
    torchvision's ``bn1`` and ``relu``: the same state_dict keys).
    """

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, *,
                 generator=None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, generator)
        self.bn1 = nn.BatchNormReLU2d(planes)
        self.conv2 = _conv3x3(planes, planes, 1, generator)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(out, shortcut)  # relu(out + shortcut), one pass

    def backward(self, grad_output):
        # the input's gradient is the main path's plus the shortcut's: the
        # last convolution of one adds its input gradient into the other's
        grad = self.relu2.backward(grad_output)
        grad_main = self.bn1.backward(
            self.conv2.backward(self.bn2.backward(grad)))
        if self.downsample is None:
            # grad is relu2's fresh output, which bn2 is done with
            return self.conv1.backward(grad_main, add_input_grad_to=grad)
        grad_input = self.conv1.backward(grad_main)
        shortcut = self.downsample
        if (isinstance(shortcut, nn.Sequential) and len(shortcut) == 2
                and isinstance(shortcut[0], nn.Conv2d)
                and shortcut[0].need_input_grad):
            # a strided 1x1 conv adds into a quarter of grad_input
            return shortcut[0].backward(shortcut[1].backward(grad),
                                        add_input_grad_to=grad_input)
        grad_input += shortcut.backward(grad)
        return grad_input


class ResNet(nn.Module):
    """ResNet-(6n+2) for small images: ResNet-8 (n=1), -14, -20, -32...

    3x3 stem conv (no bias) + BN + ReLU (one fused layer); three stages of
    n BasicBlocks with ``widths`` channels and strides 1, 2, 2 (a
    shape-changing shortcut is a 1x1 strided conv + BN); global average
    pooling; ``fc``. Input (N, in_channels, H, W) with H and W multiples
    of 4; output logits (N, num_classes). Convolutions are initialised as
    torchvision does (Kaiming normal, fan_out), BN to weight 1 and bias 0,
    ``fc`` as ``nn.Linear``.
    """

    def __init__(self, depth=8, in_channels=3, num_classes=10,
                 widths=(16, 32, 64), *, generator=None):
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32...), "
                f"got {depth!r}")
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"widths must be three positive ints, got "
                             f"{widths!r}")
        blocks_per_stage = (depth - 2) // 6
        self.config = dict(architecture="resnet", depth=depth,
                           in_channels=in_channels, num_classes=num_classes,
                           widths=list(widths))
        generator = init.as_generator(generator)
        self.conv1 = _conv3x3(in_channels, widths[0], 1, generator)
        self.conv1.need_input_grad = False
        self.bn1 = nn.BatchNormReLU2d(widths[0])  # BN + ReLU, fused
        inplanes = widths[0]
        for stage, (planes, stride) in enumerate(zip(widths, (1, 2, 2)), 1):
            blocks = []
            for index in range(blocks_per_stage):
                block_stride = stride if index == 0 else 1
                downsample = None
                if block_stride != 1 or inplanes != planes:
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes, 1, stride=block_stride,
                                  bias=False, generator=generator),
                        nn.BatchNorm2d(planes))
                blocks.append(BasicBlock(inplanes, planes, block_stride,
                                         downsample, generator=generator))
                inplanes = planes
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[2], num_classes, generator=generator)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.data = init.kaiming_normal(
                    module.weight.shape, module.weight.dtype, "fan_out",
                    generator)
        self._sequence = [self.conv1, self.bn1, self.layer1,
                          self.layer2, self.layer3, self.avgpool,
                          self.flatten, self.fc]

    def forward(self, x):
        for module in self._sequence:
            x = module(x)
        return x

    def backward(self, grad_output):
        for module in reversed(self._sequence):
            grad_output = module.backward(grad_output)
        return grad_output


def resnet_depth(name: str) -> int | None:
    """8 for ``'resnet8'``, None for a name that is not ``resnet<depth>``."""
    if name.startswith("resnet") and name[6:].isdigit():
        return int(name[6:])
    return None


__all__ = ["BasicBlock", "ResNet", "resnet_depth"]
