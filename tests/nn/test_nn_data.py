"""Datasets and parsers: IDX and CIFAR files written here (good and
corrupt), the fixed mnist-5k / digits splits, batching, augmentation and
image loading."""

import gzip
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest

from fastconv.data import (Normalization, batches, load_cifar10, load_dataset,
                           load_image, load_mnist_idx, random_shift,
                           read_cifar_batch, read_idx, stratified_split,
                           write_idx)

# ----------------------------------------------------------------------- IDX


def idx_bytes(array, type_code=0x08):
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("dtype, code", [
    (np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C),
    (np.float32, 0x0D), (np.float64, 0x0E)])
def test_idx_reads_every_type(tmp_path, dtype, code):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "a.idx"
    path.write_bytes(idx_bytes(array, code))
    result = read_idx(path)
    assert result.dtype == np.dtype(dtype)
    assert result.dtype.isnative
    np.testing.assert_array_equal(result, array)


def test_idx_gzip_and_write_round_trip(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(
        np.uint8)
    write_idx(tmp_path / "a.gz", array)
    assert (tmp_path / "a.gz").read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    write_idx(tmp_path / "b", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "b"), array)


@pytest.mark.parametrize("content, message", [
    (b"", "too short"),
    (b"\x00\x00", "too short"),
    (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "not an IDX file"),
    (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "not an IDX file"),
    (b"\x00\x00\x08\x00", "not an IDX file"),
    (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "truncated IDX header"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 10) + b"\x00" * 9,
     "truncated IDX data"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 2) + b"\x00" * 3,
     "unexpected bytes"),
    (b"\x1f\x8b\x08\x00garbage", "corrupt or truncated gzip"),
], ids=["empty", "short", "bad-zero-byte", "bad-type", "zero-dims",
        "short-header", "short-data", "trailing", "bad-gzip"])
def test_idx_rejects_corrupt_files(tmp_path, content, message):
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_idx(path)


def test_idx_truncated_gzip(tmp_path):
    payload = gzip.compress(idx_bytes(np.zeros((100, 4), np.uint8)))
    path = tmp_path / "cut.gz"
    path.write_bytes(payload[:len(payload) - 10])
    with pytest.raises(ValueError, match=str(path).replace("\\", "\\\\")):
        read_idx(path)


def write_mnist(folder, train=7, test=3, gz=True, dotted=False):
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, test),
    }
    for name, array in arrays.items():
        if dotted:
            name = name.replace("-idx", ".idx")
        write_idx(folder / (name + (".gz" if gz else "")),
                  array.astype(np.uint8))
    return arrays


@pytest.mark.parametrize("gz, dotted", [(True, False), (False, True)])
def test_mnist_idx_loader(tmp_path, gz, dotted):
    arrays = write_mnist(tmp_path, gz=gz, dotted=dotted)
    train_x, train_y, test_x, test_y = load_mnist_idx(tmp_path)
    assert train_x.shape == (7, 1, 28, 28) and train_x.dtype == np.uint8
    np.testing.assert_array_equal(train_x[:, 0],
                                  arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(test_y, arrays["t10k-labels-idx1-ubyte"])
    assert train_y.dtype == np.int64
    dataset = load_dataset("mnist", tmp_path)
    assert dataset.train_images.shape == (7, 1, 28, 28)
    assert dataset.train_images.dtype == np.float32


def test_mnist_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="needs --data-dir"):
        load_dataset("mnist")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist_idx(tmp_path)
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz",
              np.zeros(6, np.uint8))  # 7 images, 6 labels
    with pytest.raises(ValueError, match="7 images but 6 labels"):
        load_mnist_idx(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz",
              np.zeros((7, 2), np.uint8))
    with pytest.raises(ValueError, match="expected a 1-D unsigned-byte"):
        load_mnist_idx(tmp_path)


# ---------------------------------------------------------------------- CIFAR

def cifar_batch(count, seed, key_type=bytes):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (count, 3072)).astype(np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, count)]
    key = (lambda k: k.encode()) if key_type is bytes else (lambda k: k)
    return {key("batch_label"): key("batch"), key("labels"): labels,
            key("data"): data,
            key("filenames"): [key(f"{i}.png") for i in range(count)]}


def write_cifar(folder, protocol=2, key_type=bytes):
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for seed, name in enumerate(names):
        with open(folder / name, "wb") as handle:
            pickle.dump(cifar_batch(4, seed, key_type), handle,
                        protocol=protocol)
    return names


@pytest.mark.parametrize("protocol, key_type", [(2, bytes), (5, str)])
def test_cifar_batches_in_folder(tmp_path, protocol, key_type):
    write_cifar(tmp_path / "cifar-10-batches-py", protocol, key_type)
    images, labels = read_cifar_batch(
        tmp_path / "cifar-10-batches-py" / "test_batch")
    expected = cifar_batch(4, 5)
    assert images.shape == (4, 3, 32, 32) and images.dtype == np.uint8
    np.testing.assert_array_equal(images.reshape(4, -1), expected[b"data"])
    np.testing.assert_array_equal(labels, expected[b"labels"])
    # red plane first: the first 1024 values are channel 0
    np.testing.assert_array_equal(images[1, 0].ravel(),
                                  expected[b"data"][1, :1024])
    train_x, train_y, test_x, test_y = load_cifar10(tmp_path)
    assert train_x.shape == (20, 3, 32, 32) and test_x.shape == (4, 3, 32, 32)
    dataset = load_dataset("cifar10", tmp_path)
    assert dataset.class_names[0] == "airplane"
    assert len(dataset.normalization.mean) == 3


def test_cifar_directly_in_data_dir_and_in_tarball(tmp_path):
    names = write_cifar(tmp_path / "flat")
    np.testing.assert_array_equal(load_cifar10(tmp_path / "flat")[3],
                                  cifar_batch(4, 5)[b"labels"])
    archive = tmp_path / "tar" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        for name in names:
            tar.add(tmp_path / "flat" / name,
                    arcname=f"cifar-10-batches-py/{name}")
    result = load_cifar10(archive.parent)
    np.testing.assert_array_equal(result[0], load_cifar10(tmp_path / "flat")[0])


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("content, message", [
    (b"", "not a readable CIFAR batch"),
    (pickle.dumps(cifar_batch(3, 0))[:200], "not a readable CIFAR batch"),
    (pickle.dumps([1, 2, 3]), "must be a pickled dict"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}),
     "needs 'data' and 'labels'"),
    (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}),
     r"\(N, 3072\) uint8"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.float32),
                   b"labels": [0, 1]}), r"\(N, 3072\) uint8"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}),
     "1 labels for 2 images"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8),
                   b"labels": [0, 10]}), r"labels must lie in \[0, 10\)"),
    (pickle.dumps({b"data": Exploit(), b"labels": [0]}), "refusing to load"),
], ids=["empty", "truncated", "list", "no-labels", "wrong-width",
        "wrong-dtype", "count-mismatch", "label-range", "code-execution"])
def test_cifar_rejects_corrupt_batches(tmp_path, content, message):
    path = tmp_path / "test_batch"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_cifar_batch(path)


def test_cifar_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 python batches"):
        load_cifar10(tmp_path)
    write_cifar(tmp_path)
    os.remove(tmp_path / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(tmp_path)
    bad_tar = tmp_path / "t" / "cifar-10-python.tar.gz"
    bad_tar.parent.mkdir()
    bad_tar.write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match="unreadable archive"):
        load_cifar10(bad_tar.parent)


# ------------------------------------------------------------ bundled datasets

def test_mnist_5k_split_is_fixed_stratified_and_normalised():
    first = load_dataset("mnist-5k")
    second = load_dataset("mnist-5k")
    assert first.train_images.shape == (4000, 1, 28, 28)
    assert first.test_images.shape == (1000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(first.test_labels),
                                  [100] * 10)
    np.testing.assert_array_equal(first.test_images, second.test_images)
    np.testing.assert_array_equal(first.train_labels, second.train_labels)
    assert abs(float(first.train_images.mean())) < 1e-4
    assert abs(float(first.train_images.std()) - 1) < 1e-3
    assert 0.1 < first.normalization.mean[0] < 0.16  # MNIST's ~0.13
    # no test image is also a training image
    train_rows = {row.tobytes() for row in first.train_images}
    assert not any(row.tobytes() in train_rows for row in first.test_images)


def test_digits_dataset():
    dataset = load_dataset("digits")
    assert dataset.train_images.shape[1:] == (1, 8, 8)
    assert len(dataset.train_labels) + len(dataset.test_labels) == 1797
    assert dataset.normalization.scale == 16.0
    assert dataset.num_classes == 10


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")


def test_stratified_split_is_seeded():
    labels = np.repeat(np.arange(3), 10)
    train, test = stratified_split(labels, 0.3, seed=4)
    assert len(test) == 9 and len(train) == 21
    np.testing.assert_array_equal(np.bincount(labels[test]), [3, 3, 3])
    assert set(train).isdisjoint(test)
    again = stratified_split(labels, 0.3, seed=4)
    np.testing.assert_array_equal(again[1], test)


def test_normalization_round_trip_and_background():
    norm = Normalization.fit(np.full((2, 1, 3, 3), 51, np.uint8) * np.array(
        [0, 1]).reshape(2, 1, 1, 1).astype(np.uint8), 255.0)
    assert norm.mean == (0.1,)
    np.testing.assert_allclose(norm.apply(np.zeros((1, 1, 1, 1))),
                               norm.background().reshape(1, 1, 1, 1))
    assert Normalization.from_dict(norm.to_dict()) == norm


# ---------------------------------------------------- batching and augmenting

def test_batches_cover_everything_in_seeded_order():
    images = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    labels = np.arange(10)
    plain = list(batches(images, labels, 4))
    assert [len(y) for _, y in plain] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([y for _, y in plain]),
                                  labels)
    shuffled = list(batches(images, labels, 4, shuffle=True,
                            generator=np.random.default_rng(0)))
    order = np.concatenate([y for _, y in shuffled])
    assert sorted(order) == list(labels) and list(order) != list(labels)
    again = np.concatenate([y for _, y in batches(
        images, labels, 4, shuffle=True, generator=np.random.default_rng(0))])
    np.testing.assert_array_equal(order, again)
    for x, y in shuffled:
        np.testing.assert_array_equal(x[:, 0, 0, 0], y)
    assert [len(y) for _, y in batches(images, labels, 4,
                                       drop_last=True)] == [4, 4]
    with pytest.raises(ValueError, match="batch_size"):
        list(batches(images, labels, 0))


def test_random_shift_moves_content_and_fills_background():
    image = np.zeros((1, 2, 5, 5), np.float32)
    image[0, :, 2, 2] = [1.0, 2.0]
    shifted = random_shift(np.repeat(image, 50, axis=0), 1,
                           np.random.default_rng(0), fill=[-1.0, -2.0])
    assert shifted.shape == (50, 2, 5, 5)
    for sample in shifted:
        # the bright pixel moved by at most one in each direction
        y, x = np.argwhere(sample[0] == 1.0)[0]
        assert abs(y - 2) <= 1 and abs(x - 2) <= 1
        assert sample[1, y, x] == 2.0
    positions = {tuple(np.argwhere(s[0] == 1.0)[0]) for s in shifted}
    assert len(positions) > 4  # really random
    corner = random_shift(np.ones((20, 1, 3, 3), np.float32), 1,
                          np.random.default_rng(1), fill=-5.0)
    assert (corner == -5.0).any()  # uncovered border takes the fill
    assert random_shift(image, 0, None, 0.0) is image


# -------------------------------------------------------------- load_image

def test_load_image_grayscale_inversion_and_resize(tmp_path):
    from PIL import Image
    paper = np.full((40, 30), 255, np.uint8)
    paper[10:30, 12:18] = 0  # dark ink on white paper
    Image.fromarray(paper).save(tmp_path / "digit.png")
    pixels = load_image(tmp_path / "digit.png", 1, 28)
    assert pixels.shape == (1, 1, 28, 28) and pixels.dtype == np.float32
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert pixels[0, 0, 0, 0] < 0.05  # background became black
    assert pixels[0, 0, 14, 14] > 0.9  # ink became white
    kept = load_image(tmp_path / "digit.png", 1, 28, invert=False)
    assert kept[0, 0, 0, 0] > 0.95


def test_load_image_colour_and_alpha(tmp_path):
    from PIL import Image
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:5, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    pixels = load_image(tmp_path / "c.png", 3, 4, invert=False)
    assert pixels.shape == (1, 3, 4, 4)
    np.testing.assert_allclose(pixels[0, :, 0, 0], [1, 0, 0], atol=0.02)
    np.testing.assert_allclose(pixels[0, :, 3, 3], [1, 1, 1], atol=0.02)


def test_load_image_errors(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(tmp_path / "x.png", 1, 28)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image(tmp_path / "missing.png", 1, 28)


# ------------------------------------------------- hostile compressed files

from hostile_files import linux_only  # noqa: E402

def run_capped(code, headroom=256 * 1024**2):
    """``code`` in a subprocess whose address space is capped at what it had
    after importing fastconv.data plus ``headroom``; its last stdout line."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import resource
        import fastconv.data
        with open("/proc/self/status") as status:
            size = next(int(line.split()[1]) * 1024 for line in status
                        if line.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, (size + {headroom},) * 2)
    """) + textwrap.dedent(code)
    result = subprocess.run([sys.executable, "-c", script],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


READ_IDX = """
    try:
        fastconv.data.read_idx({path!r})
        print("read")
    except ValueError as exc:
        print(exc)
"""


@linux_only
def test_a_gzip_idx_declaring_gigabytes_is_refused_within_the_cap(tmp_path):
    from hostile_files import GIB, gzip_of, zero_filled

    count = 3 * GIB // 784
    header = b"\x00\x00\x08\x03" + struct.pack(">III", count, 28, 28)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip_of(zero_filled("", header, 16 + count * 784)))
    assert path.stat().st_size < 16 * 1024**2
    message = run_capped(READ_IDX.format(path=str(path)))
    assert message.startswith(str(path)) and "more than MAX_IDX_BYTES" in \
        message


@linux_only
def test_a_gzip_idx_holding_gigabytes_more_than_declared_is_refused(
        tmp_path):
    from hostile_files import GIB, gzip_of, zero_filled

    header = b"\x00\x00\x08\x03" + struct.pack(">III", 10, 28, 28)
    path = tmp_path / "long.gz"
    path.write_bytes(gzip_of(zero_filled("", header, 3 * GIB)))
    message = run_capped(READ_IDX.format(path=str(path)))
    assert message.startswith(str(path)) and "unexpected bytes" in message


def test_a_cifar_tarball_member_declaring_too_much_is_refused(tmp_path):
    from hostile_files import gzip_of, zero_filled

    info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    info.size = 300 * 1024**2
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(gzip_of(zero_filled(
        "", header, len(header) + info.size + 1024)))
    with pytest.raises(ValueError, match="data_batch_1 declares 314572800 "
                                         "bytes, more than a CIFAR batch"):
        load_cifar10(tmp_path)
