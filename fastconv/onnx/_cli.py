"""The ONNX parts of the ``fastconv`` command (registered by cli.py).

    fastconv predict --onnx resnet18.onnx cat.png --size 224 --labels names.txt
    fastconv profile resnet18.onnx --batch 1 --repeat 10

Errors are raised as ValueError / RuntimeError for cli.main to print as one
line.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

#: torchvision's ImageNet normalisation, the default for 3-channel models.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _floats(value: str) -> tuple:
    try:
        numbers = tuple(float(part) for part in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {value!r}") from None
    if not all(math.isfinite(number) for number in numbers):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got "
                                         f"{value!r}")
    return numbers


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= 4096:
        raise argparse.ArgumentTypeError(
            f"expected an integer in [1, 4096], got {value!r}")
    return number


def add_predict_options(predict) -> None:
    """The options ``fastconv predict --onnx`` adds to the predict parser
    (``--onnx`` itself is in cli.py's --checkpoint/--onnx group)."""
    group = predict.add_argument_group("with --onnx")
    group.add_argument("--size", type=_count, default=None,
                       help="resize images to SIZE x SIZE (default: the "
                            "model's declared input size)")
    group.add_argument("--mean", type=_floats, default=None,
                       help="per-channel mean subtracted from [0, 1] pixels "
                            "(default: ImageNet's for 3 channels, 0 "
                            "otherwise)")
    group.add_argument("--std", type=_floats, default=None,
                       help="per-channel divisor after the mean (default: "
                            "ImageNet's for 3 channels, 1 otherwise)")
    group.add_argument("--labels", default=None,
                       help="text file with one class name per line")


def add_profile_parser(subparsers, add_runtime_options, command) -> None:
    """Register ``fastconv profile``; ``command`` (cli.py's, which applies
    --backend/--threads) runs it."""
    profile = subparsers.add_parser(
        "profile", help="per-node time of an ONNX model on fastconv",
        description="Run an ONNX model on random input and report the time "
                    "of each step (a convolution with its fused activation "
                    "is one step) and of each operator type.")
    profile.add_argument("model", metavar="MODEL.onnx")
    profile.add_argument("--batch", type=_count, default=1,
                         help="batch size for a free batch dim (default 1)")
    profile.add_argument("--size", type=_count, default=None,
                         help="height and width for free spatial dims")
    profile.add_argument("--repeat", type=_count, default=10,
                         help="timed runs; each step's median is reported "
                              "(default 10)")
    profile.add_argument("--top", type=_count, default=15,
                         help="how many of the slowest steps to list "
                              "(default 15)")
    add_runtime_options(profile)
    profile.set_defaults(func=command)


def _load(path):
    try:
        from fastconv import onnx as fastconv_onnx

        return fastconv_onnx.load(path)
    except ImportError as exc:
        raise RuntimeError(str(exc)) from None


def _single_input(model):
    if len(model.input_names) != 1:
        raise ValueError(f"the model has {len(model.input_names)} inputs "
                         f"({model.input_names}); these commands take "
                         f"single-input models")
    name = model.input_names[0]
    dims = model.input_shapes[name]
    if dims is None or len(dims) != 4:
        raise ValueError(f"the model's input {name!r} is not 4-D (N, C, H, "
                         f"W) or (N, H, W, C): {dims}")
    return name, dims


def _layout(dims):
    """'nchw' or 'nhwc' from a declared 4-D input shape."""
    channels_first = dims[1] in (1, 3)
    channels_last = dims[3] in (1, 3)
    if channels_last and not channels_first:
        return "nhwc"
    return "nchw"


def _spatial(dims, layout, size, what="--size"):
    height, width = (dims[2], dims[3]) if layout == "nchw" else (dims[1],
                                                                 dims[2])
    if size is not None:
        for declared in (height, width):
            if isinstance(declared, int) and declared != size:
                raise ValueError(f"{what} {size}: the model's input is "
                                 f"fixed at {height}x{width}")
        return size, size
    if not (isinstance(height, int) and isinstance(width, int)):
        raise ValueError(f"the model's input size is free ({height}x"
                         f"{width}); give {what}")
    return height, width


def _per_channel(values, channels, default, what):
    values = default if values is None else values
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"{what} needs 1 or {channels} values, got "
                         f"{len(values)}")
    return np.asarray(values, np.float32).reshape(1, channels, 1, 1)


def _read_labels(path, count):
    if path is None:
        return [str(index) for index in range(count)]
    try:
        with open(path, encoding="utf-8") as handle:
            labels = [line.strip() for line in handle.read(2**24).splitlines()
                      if line.strip()]
    except UnicodeDecodeError:
        raise ValueError(f"--labels {path}: not a UTF-8 text file") from None
    if len(labels) != count:
        raise ValueError(f"--labels {path} has {len(labels)} names; the "
                         f"model has {count} classes")
    return labels


def _probabilities(scores):
    """Softmax of logits; outputs that already are probabilities (each row
    non-negative, summing to 1) pass as they are."""
    from fastconv.nn import softmax

    scores = scores.astype(np.float64)
    if np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1, atol=1e-4):
        return scores
    return softmax(scores, axis=1)


def predict(args) -> int:
    """``fastconv predict --onnx MODEL IMAGE...``."""
    from fastconv.cli import print_ranked
    from fastconv.data import load_image

    model = _load(args.onnx)
    name, dims = _single_input(model)
    layout = _layout(dims)
    channels = dims[1] if layout == "nchw" else dims[3]
    if channels not in (1, 3):
        raise ValueError(f"the model's input has {channels} channels; "
                         f"images give 1 or 3")
    height, width = _spatial(dims, layout, args.size)
    if height != width:
        raise ValueError(f"the model's input is {height}x{width}; images "
                         f"are resized to squares")
    three = channels == 3
    mean = _per_channel(args.mean, channels,
                        IMAGENET_MEAN if three else (0.0,), "--mean")
    std = _per_channel(args.std, channels,
                       IMAGENET_STD if three else (1.0,), "--std")
    if np.any(std == 0):
        raise ValueError("--std must not be 0")
    dtype = model.input_dtypes[name]
    labels = None
    for path in args.images:
        pixels = load_image(path, channels, height, invert=False)
        batch = (pixels - mean) / std
        if layout == "nhwc":
            batch = batch.transpose(0, 2, 3, 1)
        scores = model.run({name: np.ascontiguousarray(batch, dtype)})
        scores = scores[model.output_names[0]]
        if scores.ndim != 2 or scores.shape[0] != 1:
            scores = scores.reshape(1, -1)
        probabilities = _probabilities(scores)[0]
        if labels is None:
            labels = _read_labels(args.labels, probabilities.size)
        print_ranked(path, probabilities, labels, args.top)
    return 0


def profile(args) -> int:
    """``fastconv profile MODEL``: a per-step and per-operator table."""
    model = _load(args.model)
    feeds = {}
    for name in model.input_names:
        dims = model.input_shapes[name]
        if dims is None:
            raise ValueError(f"input {name!r} has no declared shape")
        if len(dims) == 4:
            layout = _layout(dims)
            height, width = _spatial(dims, layout, args.size)
            channels = dims[1] if layout == "nchw" else dims[3]
            batch = dims[0] if isinstance(dims[0], int) else args.batch
            shape = [batch, channels, height, width] if layout == "nchw" \
                else [batch, height, width, channels]
        else:
            shape = [args.batch if index == 0 and not isinstance(dim, int)
                     else dim for index, dim in enumerate(dims)]
        if not all(isinstance(dim, int) for dim in shape):
            raise ValueError(f"input {name!r} has free dims {dims}")
        feeds[name] = np.random.default_rng(0).standard_normal(
            shape).astype(model.input_dtypes[name])
    timings = model.profile(feeds, repeat=args.repeat)
    total = sum(timing.seconds for timing in timings)
    shapes = ", ".join(f"{name} {tuple(value.shape)}"
                       for name, value in feeds.items())
    print(f"{args.model}: {len(timings)} steps, input {shapes}; sum of "
          f"per-step medians {total * 1e3:.2f} ms over {args.repeat} runs")
    by_type = {}
    for timing in timings:
        key = "+".join((timing.op_type,) + timing.fused)
        if timing.kind:
            key += f" {timing.kind}"
        count, seconds = by_type.get(key, (0, 0.0))
        by_type[key] = (count + 1, seconds + timing.seconds)
    print(f"{'operator':<32}{'steps':>6}{'ms':>10}{'share':>8}")
    for key, (count, seconds) in sorted(by_type.items(),
                                        key=lambda item: -item[1][1]):
        print(f"{key:<32}{count:>6}{seconds * 1e3:>10.3f}"
              f"{seconds / total:>8.1%}")
    print(f"slowest {min(args.top, len(timings))} steps:")
    for timing in sorted(timings, key=lambda t: -t.seconds)[:args.top]:
        key = "+".join((timing.op_type,) + timing.fused)
        label = timing.name or "(unnamed)"
        print(f"  {label[:40]:<40} {key:<22}{timing.seconds * 1e3:>9.3f} ms"
              f"{timing.seconds / total:>7.1%}")
    return 0
