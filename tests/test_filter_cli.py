"""``fastconv filter`` end to end on PNG/JPEG files the tests write.

The subcommand is driven through its own argparse parser
(``add_filter_parser``), so these tests do not depend on ``fastconv.cli``;
one more test runs it through ``fastconv.cli.main`` once that registers it.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from fastconv import kernels
from fastconv._filter_cli import add_filter_parser, default_gallery_kernels
from fastconv.filters import filter2d

Image = pytest.importorskip("PIL.Image")


def run(argv):
    """Parse ``fastconv filter ...`` arguments and run; returns the code."""
    parser = argparse.ArgumentParser(prog="fastconv")
    add_filter_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["filter"] + [str(a) for a in argv])
    return args.func(args)


@pytest.fixture(scope="module")
def photo_pixels():
    """A 60 x 80 colour crop of scikit-learn's china.jpg (uint8)."""
    datasets = pytest.importorskip("sklearn.datasets")
    return np.ascontiguousarray(
        datasets.load_sample_image("china.jpg")[90:150, 280:360])


@pytest.fixture
def photo_png(tmp_path, photo_pixels):
    path = tmp_path / "photo.png"
    Image.fromarray(photo_pixels).save(path)
    return path


def read(path):
    with Image.open(path) as image:
        return image.mode, np.asarray(image).copy()


def expected_pixels(pixels, specs, stride=1, boundary="reflect"):
    result = pixels
    for index, spec in enumerate(specs):
        last = index == len(specs) - 1
        result = filter2d(result, kernels.get(spec), boundary=boundary,
                          stride=stride if last else 1)
    return np.clip(np.rint(result), 0, 255).astype(np.uint8)


def test_one_kernel_end_to_end(tmp_path, photo_png, photo_pixels, capsys):
    out = tmp_path / "sharp.png"
    assert run([photo_png, "-k", "sharpen", "-o", out]) == 0
    mode, pixels = read(out)
    assert mode == "RGB" and pixels.shape == photo_pixels.shape
    np.testing.assert_array_equal(pixels,
                                  expected_pixels(photo_pixels, ["sharpen"]))
    assert "wrote" in capsys.readouterr().out


def test_chained_kernels_stride_and_boundary(tmp_path, photo_png,
                                             photo_pixels):
    out = tmp_path / "small.png"
    specs = ["gaussian:7,1.5", "sharpen"]
    assert run([photo_png, "-k", specs[0], "-k", specs[1], "--stride", 2,
                "--boundary", "symmetric", "-o", out]) == 0
    _, pixels = read(out)
    assert pixels.shape == (30, 40, 3)
    expected = expected_pixels(photo_pixels, specs, stride=2,
                               boundary="symmetric")
    # rounding of values that land on .5 may differ by one level
    assert np.abs(pixels.astype(int) - expected).max() <= 1


def test_normalize_makes_an_edge_map(tmp_path, photo_png, photo_pixels):
    out = tmp_path / "edges.png"
    assert run([photo_png, "-k", "sobel_x", "--normalize", "-o", out]) == 0
    _, pixels = read(out)
    response = np.abs(filter2d(photo_pixels, kernels.sobel_x(),
                               boundary="reflect").astype(np.float64))
    top = np.percentile(response, 99.5)
    expected = np.clip(np.rint(response * 255 / top), 0, 255)
    assert np.abs(pixels.astype(int) - expected).max() <= 1
    assert pixels.max() == 255 and pixels.min() == 0


def test_grayscale_input_and_jpeg(tmp_path, photo_pixels):
    source = tmp_path / "gray.jpg"
    Image.fromarray(photo_pixels).convert("L").save(source, quality=95)
    out = tmp_path / "blur.png"
    assert run([source, "-k", "box_blur:5", "--padding", "valid",
                "-o", out]) == 0
    mode, pixels = read(out)
    _, gray = read(source)
    assert mode == "L" and pixels.shape == (56, 76)
    np.testing.assert_array_equal(
        pixels, np.clip(np.rint(filter2d(gray, kernels.box_blur(5),
                                         padding="valid")), 0, 255))


def test_gray_flag_converts_colour(tmp_path, photo_png):
    out = tmp_path / "g.png"
    assert run([photo_png, "--gray", "-k", "identity", "-o", out]) == 0
    mode, pixels = read(out)
    assert mode == "L" and pixels.ndim == 2


def test_list_kernels(capsys):
    assert run(["--list-kernels"]) == 0
    listing = capsys.readouterr().out
    for name in kernels.names():
        assert name in listing


def test_gallery(tmp_path, photo_png, photo_pixels):
    out = tmp_path / "gallery.png"
    assert run([photo_png, "--gallery", out]) == 0
    mode, pixels = read(out)
    assert mode == "RGB"
    panels = 1 + len(default_gallery_kernels())
    height, width = photo_pixels.shape[:2]
    # four columns of tiles, labelled rows below a title
    assert pixels.shape[1] >= 4 * width
    assert pixels.shape[0] >= -(-panels // 4) * height
    # the input tile is in the picture unchanged
    found = any(np.array_equal(pixels[y:y + height, x:x + width],
                               photo_pixels)
                for y in range(pixels.shape[0] - height)
                for x in range(0, 40))
    assert found


def test_gallery_with_chosen_kernels_and_output_together(tmp_path, photo_png):
    gallery, out = tmp_path / "g.png", tmp_path / "o.png"
    assert run([photo_png, "-k", "emboss", "-k", "laplacian", "--stride", 3,
                "-o", out, "--gallery", gallery]) == 0
    assert read(out)[1].shape == (20, 27, 3)
    _, pixels = read(gallery)
    assert pixels.shape[1] < 4 * 80 + 100  # three panels, one row


@pytest.mark.parametrize("argv, error, message", [
    (["{missing}", "-k", "sharpen", "-o", "{out}"], OSError,
     "cannot read .*: no such file"),
    (["{text}", "-k", "sharpen", "-o", "{out}"], OSError,
     "cannot read .*: not an image"),
    (["{png}", "-k", "blurr", "-o", "{out}"], ValueError,
     "unknown kernel 'blurr'"),
    (["{png}", "-k", "gaussian:x", "-o", "{out}"], ValueError,
     "is not a number"),
    (["{png}", "-k", "sharpen", "--stride", "0", "-o", "{out}"], ValueError,
     "--stride must be a positive integer, got 0"),
    (["{png}", "-k", "sharpen"], ValueError, "needs -o OUTPUT"),
    (["{png}", "-o", "{out}"], ValueError, "needs at least one -k"),
    ([], ValueError, "needs an INPUT image"),
    (["{png}", "-k", "sharpen", "-o", "{badext}"], ValueError,
     "-o .*: unknown image extension '.unknownext'"),
    (["{png}", "-k", "sharpen", "-o", "{nodir}"], OSError, "cannot write"),
    (["{png}", "-k", "gaussian:99", "--padding", "valid", "-o", "{out}"],
     ValueError, "output would be empty"),
])
def test_errors_are_one_clear_line(tmp_path, photo_png, argv, error, message):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    names = {"missing": tmp_path / "nope.png", "out": tmp_path / "out.png",
             "text": text, "png": photo_png,
             "badext": tmp_path / "out.unknownext",
             "nodir": tmp_path / "no" / "such" / "dir.png"}
    argv = [a.format(**names) for a in argv]
    with pytest.raises(error, match=message) as caught:
        run(argv)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out.png").exists()


def test_through_fastconv_cli_main(tmp_path, photo_png, capsys):
    cli = pytest.importorskip("fastconv.cli")
    if not hasattr(cli, "main"):
        pytest.skip("fastconv.cli has no main yet")
    out = tmp_path / "x.png"
    try:
        code = cli.main(["filter", str(photo_png), "-k", "sharpen", "-o",
                         str(out)])
    except SystemExit as exc:  # argparse: 'filter' not registered yet
        if "invalid choice" in capsys.readouterr().err:
            pytest.skip("fastconv.cli does not register 'filter' yet")
        code = exc.code
    assert code in (0, None) and out.exists()
    try:
        code = cli.main(["filter", str(tmp_path / "missing.png"), "-k",
                         "sharpen", "-o", str(out)])
    except SystemExit as exc:
        code = exc.code
    assert code not in (0, None)
    assert "cannot read" in capsys.readouterr().err


def test_16_bit_images_are_scaled_to_8_bits(tmp_path):
    from fastconv._filter_cli import read_image

    values = (np.arange(40 * 30, dtype=np.uint32) * 54 % 65536).astype(
        np.uint16).reshape(40, 30)
    Image.fromarray(values).save(tmp_path / "deep.png")
    pixels = read_image(str(tmp_path / "deep.png"))
    assert pixels.dtype == np.uint8 and pixels.shape == (40, 30)
    np.testing.assert_array_equal(pixels, np.rint(values / 257.0))
