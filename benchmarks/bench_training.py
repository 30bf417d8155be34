"""Training steps as a user writes them: fastconv against the same PyTorch
network, each library in its own process.

One step = forward, cross-entropy, backward, Adam update, on a batch of 64
float32 images: SmallCNN on 28x28 mnist-5k digits, ResNet-8 on 32x32x3
random images (CIFAR-10's shape). The fastconv step is the plain loop of the
README (no context managers, library defaults); the PyTorch network is built
by hand with the same layers and starts from the same weights (copied
through ``state_dict``).

    python benchmarks/bench_training.py [--model small-cnn,resnet8]
        [--rounds 7] [--steps 10] [--threads N]
    pytest benchmarks/bench_training.py --benchmark-only

Each round starts one fresh process per contender, in turn (the order
rotated every round, so that a burst of load on a shared machine hits all
alike): ``fastconv``, ``torch``, ``fastconv+torch`` (fastconv's step with
torch imported in the same process, as in a notebook that has both) and
``fastconv-as-train`` (the same step inside the private
``single_threaded_blas()`` context that ``fastconv train`` runs its epochs
in: the hand-written step should be as fast). A
process warms up, times ``--steps`` steps five times and reports its
median; the table shows the median over rounds, the ratio PyTorch time /
fastconv time (above 1: fastconv is faster) and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest

BATCH = 64
SEED = 20240601
MODELS = ("small-cnn", "resnet8")
CONTENDERS = ("fastconv", "torch", "fastconv+torch", "fastconv-as-train")


def training_batches(model_name: str, count: int = 8):
    """``count`` (images float32, labels int64) batches of 64: mnist-5k
    digits for SmallCNN, seeded random 3x32x32 images for ResNet-8."""
    if model_name == "small-cnn":
        from fastconv.data import load_dataset

        dataset = load_dataset("mnist-5k")
        return [(dataset.train_images[i * BATCH:(i + 1) * BATCH],
                 dataset.train_labels[i * BATCH:(i + 1) * BATCH])
                for i in range(count)]
    rng = np.random.default_rng(SEED)
    return [(rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32),
             rng.integers(0, 10, BATCH)) for _ in range(count)]


def build_fastconv_model(model_name: str):
    from fastconv import nn
    from fastconv.models import ResNet, SmallCNN

    nn.init.manual_seed(SEED)
    return SmallCNN() if model_name == "small-cnn" else ResNet(depth=8)


def make_fastconv_step(model_name: str, batches):
    """A zero-argument callable running one fastconv training step (cycling
    through ``batches``), written as the README shows; and the model."""
    from fastconv import nn, optim

    model = build_fastconv_model(model_name)
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    state = {"index": 0}

    def step():
        images, labels = batches[state["index"] % len(batches)]
        state["index"] += 1
        loss_fn(model(images), labels)
        optimizer.zero_grad()
        model.backward(loss_fn.backward())
        optimizer.step()

    return step, model


def torch_small_cnn(torch, config):
    """SmallCNN's layers in PyTorch, under SmallCNN's parameter names."""
    tnn = torch.nn
    channels = config["channels"]
    layers = [("conv1", tnn.Conv2d(config["in_channels"], channels[0], 3,
                                   padding=1)),
              ("relu1", tnn.ReLU()), ("pool1", tnn.MaxPool2d(2)),
              ("conv2", tnn.Conv2d(channels[0], channels[1], 3, padding=1)),
              ("relu2", tnn.ReLU()), ("pool2", tnn.MaxPool2d(2)),
              ("flatten", tnn.Flatten()),
              ("dropout", tnn.Dropout(config["dropout"]))]
    features = channels[1] * (config["image_size"] // 4) ** 2
    if config["hidden"]:
        layers += [("fc1", tnn.Linear(features, config["hidden"])),
                   ("relu3", tnn.ReLU()),
                   ("dropout2", tnn.Dropout(config["dropout"]))]
        features = config["hidden"]
    layers.append(("fc", tnn.Linear(features, config["num_classes"])))
    model = tnn.Sequential()
    for name, layer in layers:
        model.add_module(name, layer)
    return model


def torch_resnet(torch, config):
    """fastconv's ResNet (CIFAR-style, BasicBlocks) in PyTorch, under the
    same parameter names."""
    tnn = torch.nn

    class Block(tnn.Module):
        def __init__(self, inplanes, planes, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1,
                                    bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or inplanes != planes:
                self.downsample = tnn.Sequential(
                    tnn.Conv2d(inplanes, planes, 1, stride, bias=False),
                    tnn.BatchNorm2d(planes))

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            shortcut = x if self.downsample is None else self.downsample(x)
            return torch.relu(out + shortcut)

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            widths = config["widths"]
            blocks = (config["depth"] - 2) // 6
            self.conv1 = tnn.Conv2d(config["in_channels"], widths[0], 3, 1, 1,
                                    bias=False)
            self.bn1 = tnn.BatchNorm2d(widths[0])
            inplanes = widths[0]
            for stage, (planes, stride) in enumerate(zip(widths, (1, 2, 2)),
                                                     1):
                stage_blocks = []
                for index in range(blocks):
                    stage_blocks.append(Block(inplanes, planes,
                                              stride if index == 0 else 1))
                    inplanes = planes
                setattr(self, f"layer{stage}", tnn.Sequential(*stage_blocks))
            self.fc = tnn.Linear(widths[2], config["num_classes"])

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(torch.flatten(x.mean((2, 3), keepdim=True), 1))

    return Net()


def make_torch_step(torch, model_name: str, batches, fastconv_model):
    build = torch_small_cnn if model_name == "small-cnn" else torch_resnet
    model = build(torch, fastconv_model.config)
    weights = {key: torch.from_numpy(np.array(value)) for key, value
               in fastconv_model.state_dict().items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any(not key.endswith("num_batches_tracked")
                         for key in missing):
        raise RuntimeError(f"state_dict mismatch: missing {missing}, "
                           f"unexpected {unexpected}")
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


# ------------------------------------------------------------ one process

def child(contender: str, model_name: str, threads: int, steps: int) -> dict:
    """Time one contender in this (fresh) process: median over 5 samples
    of ``steps`` steps, in ms per step."""
    import fastconv

    torch = None
    if contender in ("torch", "fastconv+torch"):
        import torch

        torch.set_num_threads(threads)
    fastconv.set_num_threads(threads)
    batches = training_batches(model_name)
    step, model = make_fastconv_step(model_name, batches)
    if contender == "torch":
        step = make_torch_step(torch, model_name, batches, model)
    elif contender == "fastconv-as-train":
        from fastconv._threads import single_threaded_blas

        plain_step = step

        def step():
            with single_threaded_blas():
                plain_step()
    for _ in range(3):  # warm-up: first calls, caches, allocator
        step()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        samples.append((time.perf_counter() - start) / steps * 1e3)
    return {"ms": statistics.median(samples), "min_ms": min(samples)}


def run_child(contender, model_name, threads, steps):
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", contender,
         "--model", model_name, "--threads", str(threads), "--steps",
         str(steps)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare(model_name: str, threads: int, rounds: int, steps: int,
            log=print) -> dict:
    """Rounds of one fresh process per contender, taking turns; medians."""
    import torch

    samples = {name: [] for name in CONTENDERS}
    load_before = os.getloadavg()[0]
    for round_index in range(rounds):
        shift = round_index % len(CONTENDERS)
        for name in CONTENDERS[shift:] + CONTENDERS[:shift]:
            samples[name].append(run_child(name, model_name, threads,
                                           steps)["ms"])
    result = {name: statistics.median(values)
              for name, values in samples.items()}
    result.update(model=model_name, threads=threads,
                  ratio=result["torch"] / result["fastconv"],
                  same_process_loss=result["fastconv+torch"]
                  / result["fastconv"] - 1,
                  against_train=result["fastconv"]
                  / result["fastconv-as-train"] - 1,
                  load=(load_before, os.getloadavg()[0]))
    log(f"{model_name} training step, batch {BATCH}, float32, {threads} "
        f"thread(s), PyTorch {torch.__version__}; median of {rounds} rounds "
        f"of fresh processes x 5 samples x {steps} steps; load average "
        f"{load_before:.2f} -> {os.getloadavg()[0]:.2f} on "
        f"{os.cpu_count()} cores")
    for name in CONTENDERS:
        log(f"  {name:15s} {result[name]:8.2f} ms/step  (rounds: "
            + ", ".join(f"{value:.1f}" for value in samples[name]) + ")")
    log(f"  PyTorch time / fastconv time: {result['ratio']:.2f}x; fastconv "
        f"with torch imported: {100 * result['same_process_loss']:+.1f}%; "
        f"hand-written against as in `fastconv train`: "
        f"{100 * result['against_train']:+.1f}%")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=",".join(MODELS),
                        help=f"comma-separated, from {MODELS}")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both libraries (default: "
                             "fastconv's default)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--child", choices=CONTENDERS, default=None,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads is None:
        from fastconv import get_num_threads

        args.threads = get_num_threads()
    models = args.model.split(",")
    for name in models:
        if name not in MODELS:
            parser.error(f"--model: unknown model {name!r}; choose from "
                         f"{MODELS}")
    if args.child:
        print(json.dumps(child(args.child, models[0], args.threads,
                               args.steps)))
        return 0
    for name in models:
        compare(name, args.threads, args.rounds, args.steps)
    return 0


# ------------------------------------------------------- pytest-benchmark
# (one process for both libraries: a quick look; the script's figures are
# the ones to quote)

@pytest.fixture(scope="module", params=MODELS)
def model_name(request):
    return request.param


def test_fastconv_train_step(benchmark, model_name):
    step, _ = make_fastconv_step(model_name, training_batches(model_name))
    step()
    benchmark.pedantic(step, rounds=20, iterations=1, warmup_rounds=2)


def test_torch_train_step(benchmark, model_name, torch):
    batches = training_batches(model_name)
    _, fastconv_model = make_fastconv_step(model_name, batches)
    step = make_torch_step(torch, model_name, batches, fastconv_model)
    step()
    benchmark.pedantic(step, rounds=20, iterations=1, warmup_rounds=2)


if __name__ == "__main__":
    sys.exit(main())
