"""Checkpoints: one ``.npz`` file with the weights and the model's config.

Layout (plain NumPy, readable with ``np.load(path)`` and no fastconv):

``config``
    a 0-d unicode array holding JSON: ``{"format": 1, "model": {...},
    "dtype": "float32", "metadata": {...}}``; ``model`` is the ``config`` dict of the model
    (``architecture`` plus its constructor arguments), ``metadata`` anything
    the caller adds (the dataset, its normalisation, class names, metrics).
``state/<key>``
    one array per ``state_dict`` entry, PyTorch's keys
    (``state/conv1.weight``, ``state/bn1.running_mean``...).

No pickles: ``np.load(..., allow_pickle=False)`` reads it all.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from fastconv.models.resnet import ResNet
from fastconv.models.small_cnn import SmallCNN

FORMAT_VERSION = 1
_STATE_PREFIX = "state/"

__all__ = ["build_model", "save_checkpoint", "load_checkpoint",
           "read_checkpoint"]


def build_model(config: dict):
    """A freshly initialised model from a ``model.config`` dict."""
    config = dict(config)
    architecture = config.pop("architecture", None)
    try:
        if architecture == "small-cnn":
            return SmallCNN(**config)
        if architecture == "resnet":
            return ResNet(**config)
    except TypeError as exc:
        raise ValueError(f"bad {architecture} config {config}: {exc}") from None
    raise ValueError(f"unknown model architecture {architecture!r} "
                     f"(expected 'small-cnn' or 'resnet')")


def save_checkpoint(path, model, metadata: dict | None = None) -> None:
    """Write ``model``'s weights and config (and ``metadata``) to ``path``.

    ``metadata`` must be JSON-serialisable. The file is written to a
    temporary name and renamed, so a crash never leaves half a checkpoint.
    """
    if not hasattr(model, "config"):
        raise TypeError(
            f"{type(model).__name__} has no 'config'; only fastconv.models "
            "networks can be saved as checkpoints")
    header = {"format": FORMAT_VERSION, "model": model.config,
              "dtype": str(model.dtype), "metadata": metadata or {}}
    arrays = {"config": np.array(json.dumps(header))}
    for key, value in model.state_dict().items():
        arrays[_STATE_PREFIX + key] = value
    path = os.fspath(path)
    temporary = path + ".tmp"
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(temporary, path)


def read_checkpoint(path):
    """``(model, metadata)`` from a checkpoint; the model is in eval mode."""
    path = os.fspath(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path} is not a fastconv checkpoint (.npz): "
                         f"{exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is a single .npy array, not a fastconv "
                         "checkpoint (.npz)")
    with archive:
        if "config" not in archive.files:
            raise ValueError(f"{path} is not a fastconv checkpoint: it has no "
                             "'config' entry")
        try:
            header = json.loads(str(archive["config"]))
            model_config = header["model"]
            version = header.get("format")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: unreadable checkpoint config: {exc}"
                             ) from None
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: checkpoint format {version!r} is not "
                             f"supported (expected {FORMAT_VERSION})")
        state = {name[len(_STATE_PREFIX):]: archive[name]
                 for name in archive.files if name.startswith(_STATE_PREFIX)}
    model = build_model(model_config)
    if header.get("dtype") == "float64":
        model.double()
    try:
        model.load_state_dict(state)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    model.eval()
    return model, header.get("metadata", {})


def load_checkpoint(path):
    """The model saved in ``path`` (eval mode, in the dtype it was saved in)."""
    return read_checkpoint(path)[0]
