"""Datasets (mnist-5k, digits, MNIST IDX files, CIFAR-10 batches), their
normalisation, batching and augmentation."""

from fastconv.data.cifar import load_cifar10, parse_cifar_batch, read_cifar_batch
from fastconv.data.datasets import (
    DATASETS,
    Dataset,
    Normalization,
    load_dataset,
    load_mnist_idx,
    stratified_split,
)
from fastconv.data.idx import read_idx, write_idx
from fastconv.data.loader import batches, load_image, random_shift

__all__ = [
    "DATASETS", "Dataset", "Normalization", "load_dataset", "load_mnist_idx",
    "stratified_split", "read_idx", "write_idx", "read_cifar_batch",
    "parse_cifar_batch", "load_cifar10", "batches", "random_shift",
    "load_image",
]
