"""Batching, seeded shuffling, light augmentation and single-image loading."""

from __future__ import annotations

import os
import warnings

import numpy as np

__all__ = ["batches", "random_shift", "load_image"]


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int, *,
            shuffle: bool = False, generator: np.random.Generator | None = None,
            drop_last: bool = False):
    """Yield ``(images[i], labels[i])`` batches of ``batch_size`` (the last
    one smaller unless ``drop_last``), in a ``generator``-seeded random order
    when ``shuffle``. Batches are contiguous copies."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    count = labels.shape[0]
    if shuffle:
        if generator is None:
            raise ValueError("shuffle=True needs a numpy Generator")
        order = generator.permutation(count)
    else:
        order = np.arange(count)
    stop = count - count % batch_size if drop_last else count
    for start in range(0, stop, batch_size):
        chosen = order[start:start + batch_size]
        if not shuffle:
            chosen = slice(start, min(start + batch_size, count))
        yield images[chosen], labels[chosen]


def random_shift(images: np.ndarray, max_shift: int,
                 generator: np.random.Generator, fill) -> np.ndarray:
    """Each image moved by its own random (dy, dx) in [-max_shift,
    max_shift]^2; uncovered pixels take ``fill`` (a scalar or (C,) per
    channel, usually the normalised background). images: (N, C, H, W);
    returns a new array of the same shape and dtype."""
    if max_shift <= 0:
        return images
    count, channels, height, width = images.shape
    padded = np.empty((count, channels, height + 2 * max_shift,
                       width + 2 * max_shift), dtype=images.dtype)
    padded[...] = np.asarray(fill, dtype=images.dtype).reshape(-1, 1, 1) \
        if np.ndim(fill) else fill
    padded[:, :, max_shift:max_shift + height,
           max_shift:max_shift + width] = images
    windows = np.lib.stride_tricks.sliding_window_view(
        padded, (height, width), axis=(2, 3))
    offset_y = generator.integers(0, 2 * max_shift + 1, size=count)
    offset_x = generator.integers(0, 2 * max_shift + 1, size=count)
    # windows[n, c, oy, ox] is the image seen from offset (oy, ox).
    return np.ascontiguousarray(
        windows[np.arange(count), :, offset_y, offset_x])


def load_image(path, in_channels: int, image_size: int, invert="auto"
               ) -> np.ndarray:
    """A picture file as pixels (1, C, image_size, image_size) float32 in
    [0, 1] (multiply by a ``Normalization.scale`` before ``apply``).

    Any size and mode Pillow reads: converted to grayscale ("L",
    ITU-R 601 luma) for 1-channel models or to RGB for 3-channel ones
    (transparency composited on white), then resized to image_size x
    image_size with Lanczos filtering (the aspect ratio is not kept).
    MNIST digits are light ink on black: ``invert='auto'`` inverts a
    grayscale picture whose border is mostly light (dark ink on paper);
    ``True`` / ``False`` force it.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # more than PIL.Image.MAX_IMAGE_PIXELS: refused, as twice that is
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.load()
                picture = opened
    except FileNotFoundError:
        raise FileNotFoundError(f"image {os.fspath(path)} does not exist"
                                ) from None
    except (UnidentifiedImageError, OSError, SyntaxError,
            Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise ValueError(f"{os.fspath(path)}: not a readable image ({exc})"
                         ) from None
    if picture.mode in ("RGBA", "LA", "PA") or (
            picture.mode == "P" and "transparency" in picture.info):
        rgba = picture.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        picture = Image.alpha_composite(white, rgba)
    if in_channels == 1:
        picture = picture.convert("L")
    elif in_channels == 3:
        picture = picture.convert("RGB")
    else:
        raise ValueError(f"cannot make a {in_channels}-channel image from "
                         "a picture (1 or 3 channels)")
    picture = picture.resize((image_size, image_size), Image.LANCZOS)
    pixels = np.asarray(picture, dtype=np.float32)
    pixels = pixels[None, None] if in_channels == 1 else \
        pixels.transpose(2, 0, 1)[None]
    if invert == "auto":
        invert = in_channels == 1 and _border_mean(pixels) > 127.5
    if invert:
        pixels = 255.0 - pixels
    return np.ascontiguousarray(pixels / np.float32(255.0))


def _border_mean(pixels: np.ndarray) -> float:
    plane = pixels[0, 0]
    border = np.concatenate([plane[0], plane[-1], plane[:, 0], plane[:, -1]])
    return float(border.mean())
