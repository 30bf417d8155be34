"""Hostile checkpoint files written by hand (sizes, CRCs and headers that
lie), shared by the checkpoint and CLI tests."""

from __future__ import annotations

import json
import struct
import sys
import zlib

import numpy as np
import pytest

from fastconv import nn
from fastconv.models import SmallCNN

GIB = 1024**3

#: The memory-capped subprocesses read /proc/self/status and set
#: RLIMIT_AS, which only Linux enforces.
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="the address-space cap (RLIMIT_AS, /proc/self/status) is Linux's")


def _npy_header(shape, descr="<f4"):
    """A version 1.0 .npy header (magic, length, dict), padded to 64."""
    text = repr({"descr": descr, "fortran_order": False, "shape": shape})
    text += " " * (63 - (len(text) + 10) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + \
        text.encode("latin1")


def _npy(array):
    return _npy_header(array.shape, array.dtype.str) + array.tobytes()


class Member:
    """A zip member given as its deflated bytes, CRC and sizes (so that a
    test can declare sizes or CRCs that do not match the data)."""

    def __init__(self, name, data=b"", *, deflated=None, crc=None,
                 size=None):
        self.name = name.encode()
        if deflated is None:
            compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
            deflated = compressor.compress(data) + compressor.flush()
        self.deflated = deflated
        self.crc = zlib.crc32(data) if crc is None else crc
        self.size = len(data) if size is None else size


def write_zip(path, members):
    """A zip of deflated members, every size and CRC as the member says."""
    with open(path, "wb") as handle:
        central = b""
        for member in members:
            offset = handle.tell()
            fields = struct.pack("<HHHHHIIIHH", 20, 0, 8, 0, 0x21,
                                 member.crc, len(member.deflated),
                                 member.size, len(member.name), 0)
            handle.write(b"PK\x03\x04" + fields + member.name)
            handle.write(member.deflated)
            central += b"PK\x01\x02" + struct.pack("<H", 20) + fields + \
                struct.pack("<HHHII", 0, 0, 0, 0, offset) + member.name
        start = handle.tell()
        handle.write(central)
        handle.write(b"PK\x05\x06" + struct.pack(
            "<HHHHIIH", 0, 0, len(members), len(members), len(central),
            start, 0))


def zero_filled(name, header, size):
    """A member of ``header`` then zeros up to ``size`` bytes, deflated in a
    fraction of a second: after a full flush, deflate emits the same bytes
    for every further block of zeros."""
    block = 1 << 24
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = header + bytes(block - len(header))
    deflated = [compressor.compress(first)
                + compressor.flush(zlib.Z_FULL_FLUSH)]
    crc = zlib.crc32(first)
    zeros = bytes(block)
    repeated = compressor.compress(zeros) + compressor.flush(
        zlib.Z_FULL_FLUSH)
    blocks = (size - block) // block
    tail = bytes(size - block - blocks * block)
    for _ in range(blocks):
        crc = zlib.crc32(zeros, crc)
    deflated.append(repeated * blocks)
    deflated.append(compressor.compress(tail) + compressor.flush())
    return Member(name, deflated=b"".join(deflated),
                  crc=zlib.crc32(tail, crc), size=size)


# ----------------------------------------------------------- the files

def small_config(**changes):
    model = dict(architecture="small-cnn", in_channels=1, num_classes=3,
                 image_size=8, channels=[2, 2], hidden=0, dropout=0.25)
    model.update(changes)
    return {"format": 1, "model": model, "dtype": "float32", "metadata": {}}


def config_member(header):
    return Member("config.npy", _npy(np.array(json.dumps(header))))


def good_members():
    """The members of a valid SmallCNN(8, channels (2, 2), 3 classes)."""
    nn.init.manual_seed(0)
    model = SmallCNN(1, 3, 8, channels=(2, 2))
    members = [config_member(small_config())]
    for key, value in model.state_dict().items():
        members.append(Member(f"state/{key}.npy", _npy(value)))
    return members


def replaced(members, name, member):
    return [member if m.name == name.encode() else m for m in members]


def checkpoint_with(tmp_path, name, members):
    path = tmp_path / name
    write_zip(path, members)
    return path


def huge_unexpected_member(tmp_path):
    """A 3 GiB zero-filled member among the right ones (a ~3 MB file)."""
    return checkpoint_with(tmp_path, "junk.npz", good_members() + [
        zero_filled("state/junk.npy", _npy_header((3 * GIB // 4 - 32,)),
                    3 * GIB)])


def huge_expected_member(tmp_path):
    """fc.weight as a 3 GiB array of the right rank."""
    return checkpoint_with(tmp_path, "big-fc.npz", replaced(
        good_members(), "state/fc.weight.npy", zero_filled(
            "state/fc.weight.npy", _npy_header((3, GIB // 4)), 3 * GIB)))


def declared_size_lie(tmp_path):
    """The right header, but the zip declares 3 GiB for fc.weight."""
    members = good_members()
    fc = next(m for m in members if m.name == b"state/fc.weight.npy")
    fc.size = 3 * GIB
    return checkpoint_with(tmp_path, "lie.npz", members)


def trillion_element_header(tmp_path):
    """A header claiming 10^12 elements, in a few bytes."""
    return checkpoint_with(tmp_path, "trillion.npz", replaced(
        good_members(), "state/fc.weight.npy",
        Member("state/fc.weight.npy", _npy_header((10**6, 10**6)))))


def config_asking(tmp_path, **changes):
    return checkpoint_with(tmp_path, "config.npz", replaced(
        good_members(), "config.npy", config_member(small_config(**changes))))


def deep_resnet(tmp_path):
    header = {"format": 1, "dtype": "float32", "metadata": {},
              "model": dict(architecture="resnet", depth=600002,
                            in_channels=1, num_classes=10,
                            widths=[16, 32, 64])}
    return checkpoint_with(tmp_path, "deep.npz", [config_member(header)])


def huge_config_member(tmp_path):
    return checkpoint_with(tmp_path, "config-bomb.npz", [zero_filled(
        "config.npy", _npy_header((), "<U805306360"), 3 * GIB)])




def gzip_of(member):
    """The gzip file of a ``Member``'s deflated data (same bytes, CRC and
    size)."""
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + member.deflated
            + struct.pack("<II", member.crc, member.size & 0xFFFFFFFF))
