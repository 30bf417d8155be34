"""The training and evaluation loops behind ``fastconv train`` / ``evaluate``.

``fit`` runs mini-batch training with per-batch learning-rate schedule,
optional random-shift augmentation and a tqdm progress bar per epoch, and
evaluates on the test set after every epoch; ``evaluate`` returns loss,
accuracy and predictions; ``confusion_matrix`` counts (true, predicted)
pairs.

BLAS is held to one thread for the whole loop: the dense layer's matrices
are small, and OpenBLAS threads that keep spinning after a call steal the
cores the next convolution kernel's threads need.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from fastconv import nn, optim
from fastconv._threads import single_threaded_blas
from fastconv.data.loader import batches, random_shift

__all__ = ["TrainConfig", "History", "fit", "evaluate", "predict_logits",
           "confusion_matrix", "make_optimizer"]

OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    augment_shift: int = 1
    seed: int = 0


@dataclasses.dataclass
class History:
    """Per-epoch lists (index = epoch - 1) and the final figures."""

    train_loss: list = dataclasses.field(default_factory=list)
    train_accuracy: list = dataclasses.field(default_factory=list)
    test_loss: list = dataclasses.field(default_factory=list)
    test_accuracy: list = dataclasses.field(default_factory=list)
    epoch_seconds: list = dataclasses.field(default_factory=list)
    learning_rate: list = dataclasses.field(default_factory=list)
    train_seconds: float = 0.0
    samples_per_second: float = 0.0


def make_optimizer(name: str, parameters, config: TrainConfig):
    parameters = list(parameters)
    if name == "adam":
        return optim.Adam(parameters, lr=config.lr,
                          weight_decay=config.weight_decay)
    if name == "adamw":
        return optim.AdamW(parameters, lr=config.lr,
                           weight_decay=config.weight_decay)
    if name == "sgd":
        return optim.SGD(parameters, lr=config.lr, momentum=config.momentum,
                         weight_decay=config.weight_decay,
                         nesterov=config.momentum > 0)
    raise ValueError(f"unknown optimizer {name!r}; choose from "
                     f"{', '.join(OPTIMIZERS)}")


def predict_logits(model, images: np.ndarray, batch_size: int = 500
                   ) -> np.ndarray:
    """Logits (N, num_classes) of ``model`` in eval mode, batch by batch."""
    was_training = model.training
    model.eval()
    try:
        with single_threaded_blas():
            outputs = [model(images[start:start + batch_size])
                       for start in range(0, images.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(outputs)


def evaluate(model, images: np.ndarray, labels: np.ndarray,
             batch_size: int = 500):
    """``(mean loss, accuracy in [0, 1], predicted labels)`` in eval mode."""
    logits = predict_logits(model, images, batch_size)
    loss = nn.CrossEntropyLoss()(logits, labels)
    predictions = logits.argmax(axis=1)
    return loss, float(np.mean(predictions == labels)), predictions


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray,
                     num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts: row = true, column =
    predicted."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def _progress(total, description, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="img", leave=True,
                disable=not enabled, dynamic_ncols=True)


def fit(model, dataset, config: TrainConfig, *, progress: bool = True,
        log=print) -> History:
    """Train ``model`` on ``dataset`` (a ``fastconv.data.Dataset``) in place.

    Each epoch: a seeded shuffle, ``batch_size`` batches (shifted by up to
    ``augment_shift`` pixels), forward, cross-entropy, backward, optimizer
    step and schedule step per batch; then the test set is evaluated.
    ``log`` receives one line per epoch. Returns the ``History``; its
    ``train_seconds`` counts the training batches only (not the per-epoch
    evaluations).
    """
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {config.batch_size}")
    generator = np.random.default_rng(config.seed)
    optimizer = make_optimizer(config.optimizer, model.parameters(), config)
    train_count = dataset.train_labels.shape[0]
    steps_per_epoch = -(-train_count // config.batch_size)
    scheduler = optim.make_scheduler(config.schedule, optimizer,
                                     config.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    background = dataset.normalization.background()
    history = History()
    for epoch in range(1, config.epochs + 1):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        history.learning_rate.append(scheduler.get_last_lr()[0])
        bar = _progress(train_count, f"epoch {epoch}/{config.epochs}",
                        progress)
        start = time.perf_counter()
        with single_threaded_blas():
            for images, labels in batches(
                    dataset.train_images, dataset.train_labels,
                    config.batch_size, shuffle=True, generator=generator):
                images = random_shift(images, config.augment_shift,
                                      generator, background)
                logits = model(images)
                loss = loss_fn(logits, labels)
                optimizer.zero_grad()
                model.backward(loss_fn.backward())
                optimizer.step()
                scheduler.step()
                count = labels.shape[0]
                loss_sum += loss * count
                correct += int(np.sum(logits.argmax(axis=1) == labels))
                seen += count
                # tqdm shows the rate (img/s) itself.
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}",
                                acc=f"{correct / seen:.4f}", refresh=False)
                bar.update(count)
        epoch_seconds = time.perf_counter() - start
        bar.close()
        history.epoch_seconds.append(epoch_seconds)
        history.train_loss.append(loss_sum / seen)
        history.train_accuracy.append(correct / seen)
        test_loss, test_accuracy, _ = evaluate(
            model, dataset.test_images, dataset.test_labels)
        history.test_loss.append(test_loss)
        history.test_accuracy.append(test_accuracy)
        log(f"epoch {epoch}/{config.epochs}: train loss {loss_sum / seen:.4f}"
            f" acc {correct / seen:.4f} | test loss {test_loss:.4f} acc "
            f"{test_accuracy:.4f} | {epoch_seconds:.1f} s, "
            f"{seen / epoch_seconds:.0f} img/s")
    history.train_seconds = float(sum(history.epoch_seconds))
    history.samples_per_second = (config.epochs * train_count
                                  / max(history.train_seconds, 1e-9))
    return history
