"""Hostile checkpoint files: refused cheaply, with a ValueError naming them.

Each file is loaded in a subprocess whose address space is capped at what it
had after ``import fastconv.models`` plus ``HEADROOM`` and which must finish
within ``TIMEOUT`` seconds: a loader that allocated what a file declares
(gigabytes to terabytes here) would die of a MemoryError or time out.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastconv.models import SmallCNN, load_checkpoint, save_checkpoint
from hostile_files import (GIB, Member, _npy, _npy_header, checkpoint_with,
                           config_asking, config_member, declared_size_lie,
                           deep_resnet, good_members, huge_config_member,
                           huge_expected_member, huge_unexpected_member,
                           linux_only, replaced, small_config,
                           trillion_element_header)

HEADROOM = 256 * 1024**2
TIMEOUT = 60


HOSTILE = {
    "3GiB-unexpected-member": (huge_unexpected_member,
                               "unexpected keys \\['junk'\\]"),
    "3GiB-expected-member": (huge_expected_member,
                             "state 'fc.weight' declares 3.0 GiB in the zip, "
                             "more than its shape \\(3, 8\\) needs"),
    "declared-size-lie": (declared_size_lie,
                          "state 'fc.weight' declares 3.0 GiB"),
    "1e12-element-header": (trillion_element_header,
                            "fc.weight.*shape \\(1000000, 1000000\\), "
                            "expected \\(3, 8\\)"),
    "num-classes-1e9": (lambda tmp: config_asking(tmp, num_classes=10**9),
                        "num_classes must be an integer in"),
    "depth-600002": (deep_resnet, "depth must be an integer in \\[8, 1202\\]"),
    "weights-of-12GiB": (lambda tmp: config_asking(
        tmp, image_size=65536, channels=[2, 4]),
        "asks for 3,221,225,571 weights"),
    "3GiB-config": (huge_config_member, "config entry declares 3.0 GiB"),
}


def load_capped(path):
    """``load_checkpoint(path)`` in a subprocess with a capped address space:
    the exception's type and message, or 'loaded'."""
    script = textwrap.dedent(f"""
        import json, resource
        import fastconv.models as models
        with open("/proc/self/status") as status:
            size = next(int(line.split()[1]) * 1024 for line in status
                        if line.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, (size + {HEADROOM},) * 2)
        try:
            models.load_checkpoint({str(path)!r})
            print(json.dumps(["loaded", ""]))
        except Exception as exc:
            print(json.dumps([type(exc).__name__, str(exc)]))
    """)
    result = subprocess.run([sys.executable, "-c", script],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@linux_only
def test_the_capped_loader_loads_a_good_checkpoint(tmp_path):
    """The cap leaves room for a real load (else the tests below prove
    nothing)."""
    path = checkpoint_with(tmp_path, "good.npz", good_members())
    assert load_capped(path) == ["loaded", ""]
    assert load_checkpoint(path).fc.weight.shape == (3, 8)


@linux_only
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_file_is_refused_within_the_memory_cap(tmp_path, case):
    make, message = HOSTILE[case]
    path = make(tmp_path)
    assert path.stat().st_size < 16 * 1024**2
    kind, text = load_capped(path)
    assert kind == "ValueError", text
    assert text.startswith(str(path)), text
    assert __import__("re").search(message, text), text


# ------------------------------------------------ corrupt and odd files

def test_bad_crc_is_a_value_error(tmp_path):
    members = good_members()
    fc = next(m for m in members if m.name == b"state/fc.weight.npy")
    fc.crc ^= 1
    path = checkpoint_with(tmp_path, "crc.npz", members)
    with pytest.raises(ValueError, match="crc.npz.*fc.weight.* corrupt.*CRC"):
        load_checkpoint(path)


def test_a_member_with_more_data_than_its_header_is_refused(tmp_path):
    members = good_members()
    fc = next(m for m in members if m.name == b"state/fc.weight.npy")
    longer = Member("state/fc.weight.npy",
                    _npy_header((3, 8)) + bytes(3 * 8 * 4 + 8))
    path = checkpoint_with(tmp_path, "long.npz",
                           replaced(members, fc.name.decode(), longer))
    with pytest.raises(ValueError, match="long.npz.*fc.weight.*declares"):
        load_checkpoint(path)


def test_truncated_zip_is_a_value_error(tmp_path):
    model = SmallCNN(image_size=8, channels=(2, 2))
    save_checkpoint(tmp_path / "m.npz", model)
    data = (tmp_path / "m.npz").read_bytes()
    for cut in (10, len(data) // 2, len(data) - 30):
        (tmp_path / "cut.npz").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="cut.npz is not a fastconv "
                                             "checkpoint.*zip"):
            load_checkpoint(tmp_path / "cut.npz")


def test_a_pickle_is_not_offered_allow_pickle(tmp_path):
    import pickle

    (tmp_path / "p.npz").write_bytes(pickle.dumps({"weights": [1, 2]}))
    with pytest.raises(ValueError, match="p.npz is not a fastconv "
                                         "checkpoint") as caught:
        load_checkpoint(tmp_path / "p.npz")
    assert "allow_pickle" not in str(caught.value)


def test_a_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("descr", ["<c8", "|O", "<U4", "|b1", "<f2",
                                   "[('a', '<f4')]"])
def test_wrong_dtypes_are_refused(tmp_path, descr):
    """Complex weights were silently truncated; objects would need pickle."""
    header = _npy_header((3, 8), descr)
    header = header.replace(b"'" + descr.encode() + b"'", descr.encode()) \
        if descr.startswith("[") else header
    path = checkpoint_with(tmp_path, "dtype.npz", replaced(
        good_members(), "state/fc.weight.npy",
        Member("state/fc.weight.npy", header + bytes(3 * 8 * 16))))
    with pytest.raises(ValueError, match="dtype.npz.*(fc.weight.*dtype|"
                                         "member 'state/fc.weight.npy')"):
        load_checkpoint(path)


@pytest.mark.parametrize("changes, field", [
    (dict(image_size=-8), "image_size"),
    (dict(image_size=10), "image_size"),
    (dict(in_channels=0), "in_channels"),
    (dict(channels=[2]), "channels"),
    (dict(channels=[2, 1.5]), "channels"),
    (dict(hidden=-1), "hidden"),
    (dict(dropout=2), "dropout"),
    (dict(dropout="0.1"), "dropout"),
    (dict(num_classes=True), "num_classes"),
    (dict(colour="red"), "unknown fields \\['colour'\\]"),
    (dict(architecture="vgg"), "unknown model architecture"),
])
def test_config_fields_are_range_checked(tmp_path, changes, field):
    path = config_asking(tmp_path, **changes)
    with pytest.raises(ValueError, match=f"config.npz.*{field}"):
        load_checkpoint(path)


@pytest.mark.parametrize("header, message", [
    ({"format": 1, "model": 5, "dtype": "float32"}, "must be a JSON object"),
    ({"format": 1, "model": ["small-cnn"], "dtype": "float32"},
     "must be a JSON object"),
    ({"format": 1, "dtype": "float32"}, "no 'model' field"),
    ({"format": 2, "model": None}, "format 2 is not supported"),
    ([1, 2], "expected a JSON object"),
    ({"format": 1, "model": small_config()["model"], "dtype": "complex64"},
     "dtype must be one of"),
    ({"format": 1, "model": small_config()["model"], "dtype": "float32",
      "metadata": 3}, "metadata must be a JSON object"),
])
def test_bad_headers_name_the_file(tmp_path, header, message):
    path = checkpoint_with(tmp_path, "header.npz", replaced(
        good_members(), "config.npy", config_member(header)))
    with pytest.raises(ValueError, match=f"header.npz.*{message}"):
        load_checkpoint(path)


def test_deeply_nested_json_is_a_value_error(tmp_path):
    text = "[" * 100000 + "]" * 100000
    path = checkpoint_with(tmp_path, "nested.npz", [
        Member("config.npy", _npy(np.array(text)))])
    with pytest.raises(ValueError, match="nested.npz: unreadable checkpoint "
                                         "config"):
        load_checkpoint(path)


def test_members_that_are_not_state_are_refused(tmp_path):
    path = checkpoint_with(tmp_path, "extra.npz", good_members() + [
        Member("notes.txt", b"hello")])
    with pytest.raises(ValueError, match="extra.npz: unexpected members "
                                         "\\['notes.txt'\\]"):
        load_checkpoint(path)


def test_max_bytes_bounds_the_state(tmp_path):
    path = checkpoint_with(tmp_path, "good.npz", good_members())
    with pytest.raises(ValueError, match="more than max_bytes=100"):
        load_checkpoint(path, max_bytes=100)
    with pytest.raises(ValueError, match="max_bytes must be an int"):
        load_checkpoint(path, max_bytes=-1)
