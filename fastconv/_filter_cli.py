"""The ``fastconv filter`` subcommand: classic kernels on PNG/JPEG files.

``fastconv.cli`` registers it with ``add_filter_parser(subparsers)``; the
parsed arguments' ``func(args)`` runs it and returns the exit code. Errors
are raised as ValueError (bad arguments, unknown kernel) or OSError
(unreadable or unwritable file) with one line of message, which
``fastconv.cli.main`` prints before exiting non-zero.

Examples::

    fastconv filter photo.jpg -k sharpen -o sharp.png
    fastconv filter photo.jpg -k gaussian:7,1.5 -k sharpen --stride 2 -o small.png
    fastconv filter photo.jpg -k sobel_x --normalize -o edges.png
    fastconv filter photo.jpg --gallery gallery.png
    fastconv filter --list-kernels
"""

from __future__ import annotations

import argparse
import contextlib
import os
import warnings

import numpy as np

from fastconv import kernels as _kernels
from fastconv.filters import BOUNDARIES, filter2d

#: Percentile of |response| that becomes white under --normalize.
NORMALIZE_PERCENTILE = 99.5
#: Longest side of one gallery tile, in pixels.
GALLERY_TILE = 320
GALLERY_COLUMNS = 4

_EPILOG = """\
kernels (NAME or NAME:P1,P2,... as for fastconv.kernels.get):
  {listing}

The kernels are applied in order; --stride applies once, with the last one.
Results are clipped to 0..255 and rounded, or with --normalize shown as edge
maps (|response| scaled so the brightest {percentile}% saturate). Alpha is
dropped; palette and 16-bit images are converted to 8-bit RGB/grayscale.
"""


def _kernel_listing() -> str:
    width = max(len(name) for name in _kernels.names())
    return "\n  ".join(f"{name:<{width}}  {_kernels.describe(name)}"
                       for name in _kernels.names())


def add_filter_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``filter`` subcommand to an argparse ``subparsers`` object."""
    parser = subparsers.add_parser(
        "filter",
        help="apply image-filtering kernels (sharpen, blur, edges) to a "
             "PNG/JPEG",
        description="Filter an image with classic kernels on fastconv's "
                    "convolution kernels.",
        epilog=_EPILOG.format(listing=_kernel_listing(),
                              percentile=100 - NORMALIZE_PERCENTILE),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", nargs="?", metavar="INPUT",
                        help="image to read (PNG, JPEG, anything Pillow "
                             "reads)")
    parser.add_argument("-k", "--kernel", action="append", dest="kernels",
                        metavar="NAME[:PARAMS]", default=None,
                        help="a kernel to apply; repeat to chain them")
    parser.add_argument("-o", "--output", metavar="OUTPUT",
                        help="where to write the result (format from the "
                             "extension)")
    parser.add_argument("--stride", type=int, default=1,
                        help="keep every STRIDE-th row and column of the "
                             "result (default 1)")
    parser.add_argument("--boundary", choices=list(BOUNDARIES),
                        default="reflect",
                        help="what lies outside the image (default "
                             "%(default)s)")
    parser.add_argument("--padding", choices=["same", "valid"],
                        default="same",
                        help="'same' keeps the size, 'valid' drops the border"
                             " (default %(default)s)")
    parser.add_argument("--normalize", action="store_true",
                        help="show the result as an edge map: |response| "
                             "stretched to 0..255")
    parser.add_argument("--gray", action="store_true",
                        help="convert the input to grayscale first")
    parser.add_argument("--gallery", metavar="OUT.png",
                        help="write one picture with the input and each "
                             "kernel's result (every named kernel when no -k)"
                             ", labelled")
    parser.add_argument("--list-kernels", action="store_true",
                        help="list the kernel names and exit")
    parser.add_argument("--backend", default=None,
                        help="fastconv backend (default: auto)")
    parser.set_defaults(func=run_filter)
    return parser


# ------------------------------------------------------------------- IO

def read_image(path: str, gray: bool = False) -> np.ndarray:
    """uint8 (H, W) for grayscale files (or ``gray``), (H, W, 3) otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with _refusing_bombs(), Image.open(path) as image:
            image.load()
            single_band = image.mode in ("1", "L", "LA", "I", "I;16", "F")
            if image.mode in ("I", "I;16", "F"):
                # 16-bit and float images: scale to 8 bits
                image = Image.fromarray(_scaled_to_uint8(np.asarray(image)))
            converted = image.convert("L" if (gray or single_band) else "RGB")
            return np.asarray(converted, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise OSError(f"cannot read {path!r}: no such file") from None
    except IsADirectoryError:
        raise OSError(f"cannot read {path!r}: it is a directory") from None
    except UnidentifiedImageError:
        raise OSError(
            f"cannot read {path!r}: not an image format Pillow knows") from None
    except (Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise OSError(f"cannot read {path!r}: {_bomb_message(exc)}"
                      ) from None
    except OSError as exc:
        raise OSError(f"cannot read {path!r}: {exc}") from None


def _scaled_to_uint8(values: np.ndarray) -> np.ndarray:
    """16-bit (or int32, float32) pixels as uint8: / 257 when any value
    passes 255, else as they are; rounded and clipped, a block of rows at a
    time (a float64 copy of a 89-megapixel image would be 700 MiB)."""
    top = values.max() if values.size else 0
    scale = np.float32(255.0 / (65535.0 if top > 255 else 255.0))
    pixels = np.empty(values.shape, np.uint8)
    for row in range(0, values.shape[0], 256):
        block = values[row:row + 256].astype(np.float32) * scale
        pixels[row:row + 256] = np.clip(np.rint(block), 0, 255)
    return pixels


@contextlib.contextmanager
def _refusing_bombs():
    """Pillow's DecompressionBombWarning (an image of more than
    ``PIL.Image.MAX_IMAGE_PIXELS`` pixels) raised as an error, as its
    DecompressionBombError (twice that) is: the command refuses both."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _bomb_message(exc) -> str:
    from PIL import Image

    return (f"{str(exc).split(', could be')[0]} (a decompression bomb? "
            f"PIL.Image.MAX_IMAGE_PIXELS is {Image.MAX_IMAGE_PIXELS})")


def check_output_path(path: str, option: str) -> None:
    """Refuse an output that is a folder or whose extension Pillow does not
    write, before any work is done."""
    from PIL import Image

    if os.path.isdir(path):
        raise ValueError(f"{option} {path!r} is a directory; give a file name"
                         " such as out.png")
    extension = os.path.splitext(path)[1].lower()
    if extension not in Image.registered_extensions():
        raise ValueError(
            f"{option} {path!r}: "
            + (f"unknown image extension {extension!r}" if extension else
               "the name has no extension")
            + " (use .png, .jpg, .bmp, .tif, ...)")


def write_image(path: str, pixels: np.ndarray) -> None:
    """Write uint8 (H, W) or (H, W, 3) pixels; the format follows the name."""
    from PIL import Image

    try:
        Image.fromarray(pixels).save(path)
    except ValueError as exc:  # Pillow: "unknown file extension"
        raise ValueError(f"cannot write {path!r}: {exc}") from None
    except OSError as exc:
        raise OSError(f"cannot write {path!r}: {exc}") from None


# ------------------------------------------------------------ conversion

def to_uint8(values: np.ndarray, normalize: bool = False) -> np.ndarray:
    """Filtered float values as displayable uint8 pixels.

    Plain: clipped to 0..255 and rounded. ``normalize``: an edge map, the
    absolute response scaled so that its ``NORMALIZE_PERCENTILE``-th
    percentile is 255 (a few outliers do not darken the rest).
    """
    if normalize:
        magnitude = np.abs(values.astype(np.float64))
        top = float(np.percentile(magnitude, NORMALIZE_PERCENTILE)) if \
            magnitude.size else 0.0
        values = magnitude * (255.0 / top) if top > 0 else magnitude * 0.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def apply_kernels(image, specs, stride, padding, boundary, backend):
    """The image filtered by each kernel in turn; the stride comes last."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"--stride must be a positive integer, got {stride}")
    kernels = [(_kernels.get(spec)) for spec in specs]
    result = image
    for index, kernel in enumerate(kernels):
        last = index == len(kernels) - 1
        result = filter2d(result, kernel, stride=stride if last else 1,
                          padding=padding, boundary=boundary, backend=backend)
    return result


# ---------------------------------------------------------------- gallery

def _is_edge_kernel(kernel) -> bool:
    """Kernels that sum to zero respond to change, not to brightness."""
    return abs(float(np.sum(kernel))) < 1e-9


def _thumbnail(pixels: np.ndarray, longest: int) -> np.ndarray:
    from PIL import Image

    image = Image.fromarray(pixels)
    if max(image.size) > longest:
        image.thumbnail((longest, longest), Image.Resampling.LANCZOS)
    return np.asarray(image)


def _font(size):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def make_gallery(image, specs, stride=1, padding="same", boundary="reflect",
                 backend=None, title=None, tile=GALLERY_TILE,
                 columns=GALLERY_COLUMNS):
    """One RGB picture (uint8 (H, W, 3)): the input and each kernel's result.

    The input is first shrunk so its longest side is ``tile`` pixels; each
    kernel filters that (not chained). Kernels that sum to zero (edge
    detectors) are shown as edge maps (see ``to_uint8``), the others clipped.
    """
    from PIL import Image, ImageDraw

    small = _thumbnail(image, tile)
    panels = [("input", small)]
    for spec in specs:
        kernel = _kernels.get(spec)
        result = filter2d(small, kernel, stride=stride, padding=padding,
                          boundary=boundary, backend=backend)
        edge = _is_edge_kernel(kernel)
        label = f"{spec.split(':')[0]}  {kernel.shape[0]}x{kernel.shape[1]}" \
            + ("  (edge map)" if edge else "")
        panels.append((label, to_uint8(result, normalize=edge)))

    tile_height, tile_width = small.shape[:2]
    gap, label_height, title_height = 14, 30, 46 if title else 0
    columns = max(1, min(columns, len(panels)))
    rows = -(-len(panels) // columns)
    width = columns * tile_width + (columns + 1) * gap
    height = (title_height + rows * (tile_height + label_height + gap) + gap)
    canvas = Image.new("RGB", (width, height), (246, 246, 243))
    draw = ImageDraw.Draw(canvas)
    label_font, title_font = _font(17), _font(22)
    if title:
        draw.text((gap, gap), title, fill=(30, 30, 30), font=title_font)
    for index, (label, pixels) in enumerate(panels):
        row, column = divmod(index, columns)
        x = gap + column * (tile_width + gap)
        y = title_height + gap + row * (tile_height + label_height + gap)
        panel = Image.fromarray(pixels).convert("RGB")
        if panel.size != (tile_width, tile_height):
            # strided or 'valid' results are smaller: show them at tile size
            panel = panel.resize((tile_width, tile_height),
                                 Image.Resampling.NEAREST)
        canvas.paste(panel, (x, y))
        draw.rectangle([x - 1, y - 1, x + tile_width, y + tile_height],
                       outline=(200, 200, 196))
        text_width = draw.textlength(label, font=label_font)
        draw.text((x + (tile_width - text_width) / 2, y + tile_height + 6),
                  label, fill=(40, 40, 40), font=label_font)
    return np.asarray(canvas)


def default_gallery_kernels() -> list[str]:
    """Every named kernel but identity (which shows the input again)."""
    return [name for name in _kernels.names() if name != "identity"]


# -------------------------------------------------------------------- run

def run_filter(args) -> int:
    """Run ``fastconv filter`` for parsed ``args``; returns the exit code."""
    if args.list_kernels:
        print(_kernel_listing())
        return 0
    if not args.input:
        raise ValueError("fastconv filter needs an INPUT image (or "
                         "--list-kernels)")
    if not args.output and not args.gallery:
        raise ValueError("fastconv filter needs -o OUTPUT and/or --gallery "
                         "OUT.png")
    if args.output and not args.kernels:
        raise ValueError("fastconv filter -o needs at least one -k KERNEL "
                         f"(one of {', '.join(_kernels.names())})")
    if args.stride < 1:
        raise ValueError(
            f"--stride must be a positive integer, got {args.stride}")
    specs = args.kernels or []
    for spec in specs:  # every name checked before any work
        _kernels.get(spec)
    if args.output:
        check_output_path(args.output, "-o")
    if args.gallery:
        check_output_path(args.gallery, "--gallery")
    image = read_image(args.input, gray=args.gray)
    if args.output:
        result = apply_kernels(image, specs, args.stride, args.padding,
                               args.boundary, args.backend)
        pixels = to_uint8(result, normalize=args.normalize)
        write_image(args.output, pixels)
        print(f"wrote {args.output} ({pixels.shape[1]}x{pixels.shape[0]}, "
              f"{' -> '.join(specs)})")
    if args.gallery:
        title = (f"{os.path.basename(args.input)}  ·  boundary={args.boundary}"
                 + (f", stride={args.stride}" if args.stride > 1 else ""))
        gallery = make_gallery(image, specs or default_gallery_kernels(),
                               stride=args.stride, padding=args.padding,
                               boundary=args.boundary, backend=args.backend,
                               title=title)
        write_image(args.gallery, gallery)
        print(f"wrote {args.gallery} ({gallery.shape[1]}x{gallery.shape[0]})")
    return 0
