"""ONNX models on fastconv against onnxruntime and PyTorch.

resnet18 and mobilenet_v2 (torchvision's layouts, rebuilt as torch modules
in tests/test_onnx_models.py, random weights and batch-norm statistics) at
224x224, exported once with ``torch.onnx.export(..., dynamo=False)`` to a
temporary folder. Latency at batch 1 and throughput at batch 16:

- fastconv: ``fastconv.onnx.load(path)`` then ``model(x)`` (defaults);
- onnxruntime: ``InferenceSession(path)`` on the CPU provider;
- PyTorch: the torch module itself under ``torch.inference_mode()``;

each with the same thread count (``--threads``, default 2) set through the
library's own API, each in its own fresh process (so no library's thread
pool or allocator state disturbs another's), taking turns round by round;
per measurement a process warms up, then times ``--runs`` calls. The
figures are medians over all rounds; the load average is printed next to
them. A final fastconv process profiles each model (``model.profile``) to
show which operators dominate.

    flock /tmp/fastconv-heavy.lock python benchmarks/bench_onnx.py
    python benchmarks/bench_onnx.py --models resnet18 --rounds 3 --runs 5
    python benchmarks/bench_onnx.py --libraries fastconv fastconv-unfused
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LIBRARIES = ("fastconv", "onnxruntime", "pytorch")
#: Not run by default: fastconv without BatchNormalization folding and
#: Conv+activation fusion (``load(path, fuse=False)``), to measure them.
VARIANTS = ("fastconv-unfused",)
MODELS = ("resnet18", "mobilenet_v2")
SIZE = 224
SEED = 20240601


def _architectures():
    sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))
    import test_onnx_models

    return test_onnx_models


def build_torch_model(name):
    import torch

    arch = _architectures()
    torch.manual_seed(SEED)
    model = arch.ResNet18() if name == "resnet18" else arch.MobileNetV2()
    return arch.randomize_batch_norm(model, seed=SEED)


def export_models(folder, names):
    """Write NAME.onnx and NAME.pt (the state dict) for each model."""
    import warnings

    import torch

    arch = _architectures()
    for name in names:
        model = build_torch_model(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = arch.export_to_bytes(model, (1, 3, SIZE, SIZE))
        with open(os.path.join(folder, f"{name}.onnx"), "wb") as handle:
            handle.write(data)
        torch.save(model.state_dict(), os.path.join(folder, f"{name}.pt"))


# ------------------------------------------------------------------ workers

def _runner(library, folder, name, threads):
    """A zero-argument callable per batch: ``make(x)`` -> callable."""
    path = os.path.join(folder, f"{name}.onnx")
    if library in ("fastconv", "fastconv-unfused"):
        import fastconv
        import fastconv.onnx

        fastconv.set_num_threads(threads)
        model = fastconv.onnx.load(path, fuse=library == "fastconv")
        return lambda x: (lambda: model(x))
    if library == "onnxruntime":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            path, options, providers=["CPUExecutionProvider"])
        return lambda x: (lambda: session.run(None, {"input": x}))
    import torch

    torch.set_num_threads(threads)
    model = build_torch_model(name)
    model.load_state_dict(torch.load(os.path.join(folder, f"{name}.pt")))
    model.eval()

    def make(x):
        tensor = torch.from_numpy(x)

        def call():
            with torch.inference_mode():
                return model(tensor)
        return call
    return make


def worker(args):
    import numpy as np

    make = _runner(args.library, args.folder, args.model, args.threads)
    x = np.random.default_rng(0).standard_normal(
        (args.batch, 3, SIZE, SIZE)).astype(np.float32)
    call = make(x)
    for _ in range(args.warmup):
        call()
    times = []
    for _ in range(args.runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    print(json.dumps({"times": times, "load": os.getloadavg()[0]}))


def profile_worker(args):
    import numpy as np

    import fastconv
    import fastconv.onnx

    fastconv.set_num_threads(args.threads)
    model = fastconv.onnx.load(os.path.join(args.folder, f"{args.model}.onnx"))
    x = np.random.default_rng(0).standard_normal(
        (args.batch, 3, SIZE, SIZE)).astype(np.float32)
    timings = model.profile({"input": x}, repeat=args.runs)
    by_type = {}
    for timing in timings:
        key = "+".join((timing.op_type,) + timing.fused)
        if timing.kind:
            key += f" ({timing.kind})"
        by_type[key] = by_type.get(key, 0.0) + timing.seconds
    print(json.dumps(by_type))


# ------------------------------------------------------------------- driver

def _spawn(args, extra):
    command = [sys.executable, os.path.abspath(__file__)] + extra + [
        "--folder", args.folder, "--threads", str(args.threads),
        "--runs", str(args.runs), "--warmup", str(args.warmup)]
    result = subprocess.run(command, capture_output=True, text=True,
                            check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(extra)} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def drive(args):
    with tempfile.TemporaryDirectory() as folder:
        args.folder = folder
        export_models(folder, args.models)
        samples = {}
        loads = []
        for round_index in range(args.rounds):
            libraries = list(args.libraries)
            if round_index % 2:
                libraries.reverse()  # alternate who goes first
            for name in args.models:
                for batch in args.batches:
                    for library in libraries:
                        result = _spawn(args, ["--worker", library, "--model",
                                               name, "--batch", str(batch)])
                        samples.setdefault((name, batch, library), []).extend(
                            result["times"])
                        loads.append(result["load"])
        profiles = {name: _spawn(args, ["--profile", "--model", name,
                                        "--batch", str(args.batches[-1])])
                    for name in args.models}
    report(args, samples, loads, profiles)


def report(args, samples, loads, profiles):
    print(f"# ONNX models: {' vs '.join(args.libraries)} "
          f"({args.threads} threads, {SIZE}x{SIZE})\n")
    print(f"command: python benchmarks/bench_onnx.py --rounds {args.rounds} "
          f"--runs {args.runs} --threads {args.threads} --libraries "
          f"{' '.join(args.libraries)}; load average "
          f"(1 min) {min(loads):.2f}-{max(loads):.2f} during the runs\n")
    print("| model | batch | library | median ms / batch | images/s | "
          "fastconv speed vs this |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        for batch in args.batches:
            ours = statistics.median(samples[(name, batch, "fastconv")])
            for library in args.libraries:
                median = statistics.median(samples[(name, batch, library)])
                ratio = median / ours
                print(f"| {name} | {batch} | {library} | {median * 1e3:.1f} "
                      f"| {batch / median:.1f} | "
                      f"{'-' if library == 'fastconv' else f'{ratio:.2f}x'} "
                      f"|")
    print("\n(fastconv speed vs this = the other library's time / "
          "fastconv's: above 1, fastconv is faster.)\n")
    for name, by_type in profiles.items():
        total = sum(by_type.values())
        top = sorted(by_type.items(), key=lambda item: -item[1])[:6]
        print(f"fastconv profile, {name} batch {args.batches[-1]}: "
              + ", ".join(f"{key} {seconds / total:.0%}"
                          for key, seconds in top))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS,
                        default=list(MODELS))
    parser.add_argument("--libraries", nargs="+",
                        choices=LIBRARIES + VARIANTS, default=list(LIBRARIES),
                        help="fastconv must be one of them (the ratios are "
                             "to it); fastconv-unfused measures the fusion")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--worker", choices=LIBRARIES + VARIANTS,
                        help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true",
                        help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--library", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.worker and not args.profile and \
            "fastconv" not in args.libraries:
        parser.error("--libraries must include fastconv")
    if args.worker:
        args.library = args.worker
        worker(args)
    elif args.profile:
        profile_worker(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
