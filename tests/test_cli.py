"""The ``fastconv`` command on hostile arguments and files.

Every failure must be one line on stderr, ``fastconv: error: ...``, and a
non-zero exit, never a traceback; files that declare gigabytes (checkpoints,
PNG decompression bombs) are refused by a subprocess whose address space is
capped at what it had after importing fastconv plus ``HEADROOM``.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

from fastconv import cli
from fastconv.cli import main
from fastconv.models import SmallCNN, save_checkpoint
from hostile_files import huge_unexpected_member, linux_only

pytest.importorskip("PIL.Image")

HEADROOM = 384 * 1024**2
TIMEOUT = 120


def one_error_line(capsys, code, expected_code=1):
    captured = capsys.readouterr()
    assert code == expected_code, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("fastconv: error: ")
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def run_capped(argv, cwd):
    """``fastconv ARGV`` in a subprocess with a capped address space:
    (exit code, stderr)."""
    script = textwrap.dedent(f"""
        import resource, sys
        from fastconv.cli import main
        import PIL.Image, PIL.PngImagePlugin, fastconv.models
        with open("/proc/self/status") as status:
            size = next(int(line.split()[1]) * 1024 for line in status
                        if line.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, (size + {HEADROOM},) * 2)
        sys.exit(main({argv!r}))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=cwd,
                            capture_output=True, text=True, timeout=TIMEOUT)
    return result.returncode, result.stderr


def png_header_only(path, width, height):
    """A grayscale PNG that declares width x height (a few hundred bytes)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def small_png(tmp_path):
    from PIL import Image

    path = tmp_path / "small.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(path)
    return path


def metadata(**changes):
    dataset = {"name": "digits", "image_shape": [1, 8, 8], "num_classes": 3,
               "class_names": ["a", "b", "c"],
               "normalization": {"scale": 16.0, "mean": [0.3],
                                 "std": [0.4]}}
    dataset.update(changes)
    return {"dataset": dataset}


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.npz"
    save_checkpoint(path, SmallCNN(1, 3, 8, channels=(2, 2)), metadata())
    return path


def test_predict_runs_on_the_fixture_checkpoint(checkpoint, small_png,
                                                capsys):
    assert main(["predict", "--checkpoint", str(checkpoint),
                 str(small_png)]) == 0
    assert capsys.readouterr().out.startswith(f"{small_png}: ")


# --------------------------------------------------------- checkpoints

def test_bad_crc_checkpoint_is_one_line(checkpoint, small_png, capsys):
    import zipfile

    data = bytearray(checkpoint.read_bytes())
    with zipfile.ZipFile(checkpoint) as archive:
        info = archive.getinfo("state/fc.weight.npy")
    name_length, extra_length = struct.unpack_from(
        "<HH", data, info.header_offset + 26)
    # flip a byte of the stored array's last value
    data[info.header_offset + 30 + name_length + extra_length
         + info.file_size - 1] ^= 0xFF
    broken = checkpoint.with_name("crc.npz")
    broken.write_bytes(bytes(data))
    for argv in (["predict", "--checkpoint", str(broken), str(small_png)],
                 ["evaluate", "--checkpoint", str(broken)]):
        line = one_error_line(capsys, main(argv))
        assert "crc.npz" in line and "corrupt" in line


@linux_only
def test_a_checkpoint_declaring_gigabytes_is_refused_within_the_cap(
        tmp_path, small_png):
    path = huge_unexpected_member(tmp_path)
    code, err = run_capped(["predict", "--checkpoint", str(path),
                            str(small_png)], tmp_path)
    assert code == 1, err
    assert err.startswith("fastconv: error: ") and err.count("\n") == 1, err
    assert "unexpected keys ['junk']" in err


@pytest.mark.parametrize("changes, field", [
    (dict(image_shape=[1, 10**9, 10**9]), "image_shape"),
    (dict(image_shape=[3, 8, 8]), "image_shape"),
    (dict(image_shape="8x8"), "image_shape"),
    (dict(num_classes=10**9), "num_classes"),
    (dict(class_names=["a"]), "class_names"),
    (dict(normalization={"scale": 16.0, "mean": [0.3], "std": [0.0]}),
     "normalization"),
    (dict(normalization={"scale": "x", "mean": [0.3], "std": [1.0]}),
     "normalization"),
])
def test_hostile_metadata_is_one_line(tmp_path, small_png, capsys, changes,
                                      field):
    """predict resized pictures to whatever image_shape said."""
    path = tmp_path / "meta.npz"
    save_checkpoint(path, SmallCNN(1, 3, 8, channels=(2, 2)),
                    metadata(**changes))
    line = one_error_line(capsys, main(["predict", "--checkpoint", str(path),
                                        str(small_png)]))
    assert "meta.npz" in line and field in line


def test_custom_module_state_is_one_line(tmp_path, small_png, capsys):
    from fastconv import nn

    save_checkpoint(tmp_path / "mine.npz", nn.Linear(2, 2))
    line = one_error_line(capsys, main(["evaluate", "--checkpoint",
                                        str(tmp_path / "mine.npz")]))
    assert "custom module" in line


@pytest.mark.parametrize("argv, message", [
    (["--augment-shift", str(2**70)],
     "--augment-shift must be smaller than the 8-pixel images"),
    (["--out", "{tmp}/file.txt"], "is a file; give a folder"),
])
def test_train_refuses_bad_options_before_training(tmp_path, capsys, argv,
                                                   message):
    (tmp_path / "file.txt").write_text("x")
    argv = [part.format(tmp=tmp_path) for part in argv]
    line = one_error_line(capsys, main(
        ["train", "--dataset", "digits", "--epochs", "1", "--quiet",
         "--out", str(tmp_path / "run")] + argv))
    assert message in line
    assert not (tmp_path / "run").exists()


def test_train_refuses_an_unbounded_resnet_depth(capsys):
    line = one_error_line(capsys, main(["train", "--model", "resnet600002"]),
                          2)
    assert "up to resnet1202" in line


# ---------------------------------------------------------------- images

@linux_only
@pytest.mark.parametrize("side, what", [(20000, "exceeds limit of 178956970"),
                                        (10000, "exceeds limit of 89478485")],
                         ids=["DecompressionBombError",
                              "DecompressionBombWarning"])
@pytest.mark.parametrize("command", ["filter", "predict"])
def test_decompression_bombs_are_one_line_within_the_cap(
        tmp_path, checkpoint, command, side, what):
    bomb = png_header_only(tmp_path / "bomb.png", side, side)
    argv = (["filter", str(bomb), "-k", "sharpen", "-o",
             str(tmp_path / "out.png")] if command == "filter" else
            ["predict", "--checkpoint", str(checkpoint), str(bomb)])
    code, err = run_capped(argv, tmp_path)
    assert code == 1, err
    assert err.startswith("fastconv: error: ") and err.count("\n") == 1, err
    assert what in err and "bomb" in err
    assert not (tmp_path / "out.png").exists()


# ---------------------------------------------------------------- filter

@pytest.mark.parametrize("argv, message", [
    (["-k", "gaussian:100001,3", "-o", "{tmp}/o.png"],
     "size must be an int from 1 to 1025, got 100001"),
    (["-k", "box_blur:1180591620717411303424", "-o", "{tmp}/o.png"],
     "size must be an int from 1 to 1025"),
    (["-k", "sharpen", "-o", "{tmp}"], "is a directory"),
    (["-k", "sharpen", "-o", "{tmp}/out"], "the name has no extension"),
    (["-k", "sharpen", "-o", "{tmp}/out.xyz"], "unknown image extension"),
    (["--gallery", "{tmp}/g.foo"], "unknown image extension '.foo'"),
    (["-k", "sharpen", "--stride", "-5", "-o", "{tmp}/o.png"],
     "--stride must be a positive integer"),
])
def test_filter_failures_are_one_line(tmp_path, small_png, capsys, argv,
                                      message):
    argv = [part.format(tmp=tmp_path) for part in argv]
    line = one_error_line(capsys, main(["filter", str(small_png)] + argv))
    assert message in line
    assert not (tmp_path / "o.png").exists()


def test_a_stride_of_2_to_the_70_is_one_line_naming_the_stride(
        tmp_path, small_png, capsys):
    """It was a Numba typing error; strides are bounded by the kernels' index
    type (2**31 - 1) in the functional layer, and the CLI says so in one
    line."""
    out = tmp_path / "one.png"
    assert main(["filter", str(small_png), "-k", "sharpen", "--stride",
                 str(2**70), "-o", str(out)]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "stride" in error and "2**31 - 1" in error
    assert not out.exists()


def test_a_stride_past_the_image_filters_to_one_pixel(tmp_path, small_png):
    """A stride larger than the image (within the index type) keeps the first
    pixel, as the definition says."""
    out = tmp_path / "one.png"
    assert main(["filter", str(small_png), "-k", "sharpen", "--stride",
                 str(2**31 - 1), "-o", str(out)]) == 0
    from PIL import Image

    with Image.open(out) as image:
        assert image.size == (1, 1)


# ------------------------------------------------------------------ info

def test_info_does_not_call_a_built_backend_not_installed(monkeypatch,
                                                          capsys):
    """Cython builds the extension; it need not be installed to run it."""
    table = cli._version_table()
    table["cython"] = None
    monkeypatch.setattr(cli, "_version_table", lambda: table)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cython not installed" not in out
    assert "backends available:" in out


def test_info_reports_a_bad_fastconv_backend_instead_of_failing(
        monkeypatch, capsys):
    import fastconv

    monkeypatch.setenv("FASTCONV_BACKEND", "bogus")
    # the default is read from the environment once: read it again
    monkeypatch.setitem(fastconv.backends._default, "name", None)
    with pytest.raises(ValueError):  # what the other commands report
        fastconv.get_backend()
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines()
                if line.startswith("default backend: none ("))
    assert "FASTCONV_BACKEND" in line and "bogus" in line
    assert "versions:" in out


@pytest.mark.parametrize("error, message", [
    (MemoryError("Unable to allocate 3.0 GiB"),
     "out of memory (Unable to allocate 3.0 GiB)"),
    (MemoryError(), "out of memory (MemoryError)"),
    (OverflowError("int too large"), "int too large"),
])
def test_resource_errors_are_one_line(monkeypatch, capsys, error, message):
    def failing(args):
        raise error

    monkeypatch.setattr(cli, "cmd_info", failing)
    line = one_error_line(capsys, main(["info"]))
    assert line == f"fastconv: error: {message}"


def test_an_unexpected_exception_keeps_its_traceback(monkeypatch):
    """The one-line guard covers the errors users cause, not our bugs."""
    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_info", broken)
    with pytest.raises(KeyError):
        main(["info"])


def test_console_script_prints_one_line_for_a_corrupt_checkpoint(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"PK\x03\x04" + bytes(100))
    result = subprocess.run(
        [sys.executable, "-m", "fastconv.cli", "evaluate", "--checkpoint",
         str(tmp_path / "x.npz")], capture_output=True, text=True,
        timeout=TIMEOUT, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in \
        result.stderr
    assert json.dumps("x.npz")[1:-1] in result.stderr
