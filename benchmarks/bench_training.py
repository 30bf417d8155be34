"""SmallCNN training steps: fastconv against an identical PyTorch model.

One step = forward, cross-entropy, backward, Adam update, on a batch of 64
28x28 mnist-5k digits (float32). Both networks start from the same weights
(copied through ``state_dict``) and see the same batches; dropout is active
in both (each with its own masks).

    pytest benchmarks/bench_training.py --benchmark-only
    python benchmarks/bench_training.py [--threads 2] [--rounds 15] [--steps 5]

The script alternates the two in one process (each round times ``--steps``
fastconv steps, then as many PyTorch steps, the order swapped every round,
so a burst of load on a shared machine hits both alike) and prints the
medians and the ratio PyTorch time / fastconv time (above 1: fastconv is
faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import pytest

import fastconv
from fastconv import nn, optim
from fastconv._threads import single_threaded_blas
from fastconv.models import SmallCNN

BATCH = 64
SEED = 20240601


def training_batches(count: int = 8):
    """``count`` (images (64, 1, 28, 28) float32, labels (64,) int64)
    batches of normalised mnist-5k training digits."""
    from fastconv.data import load_dataset

    dataset = load_dataset("mnist-5k")
    return [(dataset.train_images[i * BATCH:(i + 1) * BATCH],
             dataset.train_labels[i * BATCH:(i + 1) * BATCH])
            for i in range(count)]


def make_fastconv_step(batches):
    """A zero-argument callable running one fastconv training step (cycling
    through ``batches``), and the model."""
    nn.init.manual_seed(SEED)
    model = SmallCNN()
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    state = {"index": 0}

    def step():
        images, labels = batches[state["index"] % len(batches)]
        state["index"] += 1
        # BLAS on one thread, as `fastconv train` runs (see training.py).
        with single_threaded_blas():
            loss_fn(model(images), labels)
            optimizer.zero_grad()
            model.backward(loss_fn.backward())
            optimizer.step()

    return step, model


class TorchSmallCNN:
    """Builds the same network in PyTorch (names as SmallCNN's)."""

    @staticmethod
    def build(torch, fastconv_model):
        tnn = torch.nn
        config = fastconv_model.config
        channels = config["channels"]
        model = tnn.Sequential()
        model.add_module("conv1", tnn.Conv2d(config["in_channels"],
                                             channels[0], 3, padding=1))
        model.add_module("relu1", tnn.ReLU())
        model.add_module("pool1", tnn.MaxPool2d(2))
        model.add_module("conv2", tnn.Conv2d(channels[0], channels[1], 3,
                                             padding=1))
        model.add_module("relu2", tnn.ReLU())
        model.add_module("pool2", tnn.MaxPool2d(2))
        model.add_module("flatten", tnn.Flatten())
        model.add_module("dropout", tnn.Dropout(config["dropout"]))
        features = channels[1] * (config["image_size"] // 4) ** 2
        if config["hidden"]:
            model.add_module("fc1", tnn.Linear(features, config["hidden"]))
            model.add_module("relu3", tnn.ReLU())
            model.add_module("dropout2", tnn.Dropout(config["dropout"]))
            features = config["hidden"]
        model.add_module("fc", tnn.Linear(features, config["num_classes"]))
        model.load_state_dict({key: torch.from_numpy(value) for key, value
                               in fastconv_model.state_dict().items()})
        return model


def make_torch_step(torch, batches, fastconv_model):
    model = TorchSmallCNN.build(torch, fastconv_model)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    tensors = [(torch.from_numpy(images), torch.from_numpy(labels))
               for images, labels in batches]
    state = {"index": 0}

    def step():
        images, labels = tensors[state["index"] % len(tensors)]
        state["index"] += 1
        loss = loss_fn(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


# ------------------------------------------------------- pytest-benchmark

@pytest.fixture(scope="module")
def batches():
    return training_batches()


@pytest.mark.benchmark(group="smallcnn-train-step-b64")
def test_fastconv_train_step(benchmark, batches):
    step, _ = make_fastconv_step(batches)
    step()  # compile / warm caches
    benchmark.pedantic(step, rounds=20, iterations=1, warmup_rounds=2)


@pytest.mark.benchmark(group="smallcnn-train-step-b64")
def test_torch_train_step(benchmark, batches, torch):
    _, fastconv_model = make_fastconv_step(batches)
    step = make_torch_step(torch, batches, fastconv_model)
    step()
    benchmark.pedantic(step, rounds=20, iterations=1, warmup_rounds=2)


# ------------------------------------------------------------ script mode

def compare(threads: int, rounds: int, steps: int, log=print) -> dict:
    """Alternate fastconv and PyTorch steps; return the medians and ratio."""
    import torch

    fastconv.set_num_threads(threads)
    torch.set_num_threads(threads)
    batches = training_batches()
    fastconv_step, fastconv_model = make_fastconv_step(batches)
    torch_step = make_torch_step(torch, batches, fastconv_model)
    for _ in range(3):  # warm-up: JIT, caches, allocator
        fastconv_step()
        torch_step()
    samples = {"fastconv": [], "torch": []}
    contenders = [("fastconv", fastconv_step), ("torch", torch_step)]
    for round_index in range(rounds):
        order = contenders if round_index % 2 == 0 else contenders[::-1]
        for name, step in order:
            start = time.perf_counter()
            for _ in range(steps):
                step()
            samples[name].append((time.perf_counter() - start) / steps)
    fastconv_ms = statistics.median(samples["fastconv"]) * 1e3
    torch_ms = statistics.median(samples["torch"]) * 1e3
    result = {"threads": threads, "fastconv_ms": fastconv_ms,
              "torch_ms": torch_ms, "ratio": torch_ms / fastconv_ms,
              "fastconv_min_ms": min(samples["fastconv"]) * 1e3,
              "torch_min_ms": min(samples["torch"]) * 1e3,
              "backend": fastconv.backends.backend_name(
                  fastconv.backends.resolve("conv2d_forward")),
              "torch_version": torch.__version__}
    log(f"SmallCNN training step, batch {BATCH}x1x28x28, float32, "
        f"{threads} thread(s), fastconv backend {result['backend']}, "
        f"PyTorch {torch.__version__}; median of {rounds} rounds x {steps} "
        "steps, alternated")
    log(f"  fastconv: {fastconv_ms:8.2f} ms/step (min "
        f"{result['fastconv_min_ms']:.2f})")
    log(f"  PyTorch:  {torch_ms:8.2f} ms/step (min "
        f"{result['torch_min_ms']:.2f})")
    log(f"  ratio PyTorch time / fastconv time: {result['ratio']:.2f}x "
        f"(min/min {result['torch_min_ms'] / result['fastconv_min_ms']:.2f}x)"
        f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int,
                        default=fastconv.get_num_threads())
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--backend", default=None)
    args = parser.parse_args(argv)
    if args.backend:
        fastconv.set_backend(args.backend)
    compare(args.threads, args.rounds, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
