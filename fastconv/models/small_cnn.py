"""SmallCNN: conv-relu-maxpool twice, dropout, dense."""

from __future__ import annotations

from fastconv import nn
from fastconv.nn import init


class SmallCNN(nn.Module):
    """Two 3x3 'same' conv-ReLU-2x2 maxpool stages, dropout, one or two dense
    layers.

    Input (N, in_channels, image_size, image_size) with image_size a multiple
    of 4; output logits (N, num_classes). ``hidden=0`` puts a single dense
    layer after the features; ``hidden > 0`` adds a hidden dense layer with
    ReLU (and dropout before each dense layer). Parameter names: ``conv1``,
    ``conv2``, ``fc1`` (when hidden > 0), ``fc``.

    The first convolution skips its input gradient (nothing upstream needs
    it); set ``model.conv1.need_input_grad = True`` to get it.
    """

    def __init__(self, in_channels=1, num_classes=10, image_size=28,
                 channels=(32, 64), hidden=0, dropout=0.25, *,
                 generator=None):
        super().__init__()
        if image_size % 4:
            raise ValueError(
                f"SmallCNN needs image_size divisible by 4, got {image_size}")
        channels = tuple(int(c) for c in channels)
        # One stream for all layers (a seed given to each layer would make
        # them draw the same numbers).
        generator = init.as_generator(generator)
        if len(channels) != 2:
            raise ValueError(f"channels must be a pair, got {channels!r}")
        self.config = dict(
            architecture="small-cnn", in_channels=in_channels,
            num_classes=num_classes, image_size=image_size,
            channels=list(channels), hidden=hidden, dropout=dropout)
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, padding=1,
                               generator=generator)
        self.conv1.need_input_grad = False
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 3, padding=1,
                               generator=generator)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        features = channels[1] * (image_size // 4) ** 2
        self.dropout = nn.Dropout(dropout, generator=generator)
        if hidden:
            self.fc1 = nn.Linear(features, hidden, generator=generator)
            self.relu3 = nn.ReLU()
            self.dropout2 = nn.Dropout(dropout, generator=generator)
            features = hidden
        self.fc = nn.Linear(features, num_classes, generator=generator)
        # max-pooling commutes with ReLU (both are monotone), so pooling
        # first gives the same output and the same gradients while ReLU
        # touches a quarter of the values.
        self._sequence = [self.conv1, self.pool1, self.relu1, self.conv2,
                          self.pool2, self.relu2, self.flatten, self.dropout]
        if hidden:
            self._sequence += [self.fc1, self.relu3, self.dropout2]
        self._sequence.append(self.fc)

    def forward(self, x):
        for module in self._sequence:
            x = module(x)
        return x

    def backward(self, grad_output):
        for module in reversed(self._sequence):
            grad_output = module.backward(grad_output)
        return grad_output
