"""Hostile and damaged checkpoint files: each is a ValueError that changes nothing.

Both formats are attacked: version 2 (the safetensors layout) and version 1 (0.1.0's .npz),
with the cases of issue 15 (a plain .npy, a non-.npy member, a header claiming 10**12
elements, deeply nested JSON, a 400-digit integer, wrongly typed fields, a deflate bomb) and
more: truncation at every offset, byte flips at every offset, offsets, names, dtypes and
shapes that disagree, steps out of range. Memory is measured with tracemalloc, and in a
subprocess whose address space is capped.
"""

from __future__ import annotations

import gc
import io
import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from checkpoint_snapshot import assert_same, take
from safetensors_layout import add_tensor, read_raw, rewrite, seal, write_raw

from adamax_rs import Adamax, Parameter, load_checkpoint, save_checkpoint
from adamax_rs.checkpoint import header_limit

DATA = Path(__file__).with_name("data")


def make_victim(seed=7):
    rng = np.random.default_rng(seed)
    params = [
        Parameter(rng.standard_normal((5, 4)).astype(np.float32)),
        Parameter(rng.standard_normal(3).astype(np.float32)),
        Parameter((rng.standard_normal(2) + 1j * rng.standard_normal(2)).astype(np.complex64)),
    ]
    opt = Adamax([{"params": params[:1], "tag": "first"}, {"params": params[1:], "lr": 0.1}])
    for _ in range(3):
        for p in params:
            grad = rng.standard_normal(p.shape)
            if p.dtype.kind == "c":
                grad = grad + 1j * rng.standard_normal(p.shape)
            p.grad = grad.astype(p.dtype)
        opt.step()
    for p in params:
        p.grad = None
    return opt, params


@pytest.fixture
def victim():
    return make_victim()[0]


@pytest.fixture
def good(tmp_path, victim):
    path = tmp_path / "good.safetensors"
    save_checkpoint(victim, path)
    return path


def assert_refused(optimizer, path, loader=load_checkpoint, **kwargs):
    """Loading ``path`` is a ValueError naming the file, and changes nothing."""
    before = take(optimizer, kwargs.get("scheduler"))
    with pytest.raises(ValueError) as raised:
        loader(optimizer, path, **kwargs)
    assert str(path) in str(raised.value)
    assert_same(before, optimizer, kwargs.get("scheduler"))
    return str(raised.value)


# -- version 2: the safetensors layout -------------------------------------------------------


def documents_change(change):
    """A corruption that edits the decoded metadata documents (checksums recomputed)."""
    return lambda path: rewrite(path, lambda header, docs: change(docs))


def header_change(change):
    """A corruption that edits the header's tensor entries (checksums recomputed)."""
    return lambda path: rewrite(path, lambda header, docs: change(header))


def raw_header(transform, length=None):
    """A corruption that rewrites the header's exact bytes (data kept)."""

    def corrupt(path):
        blob = path.read_bytes()
        (n,) = struct.unpack("<Q", blob[:8])
        text = transform(blob[8 : 8 + n])
        write_raw(path, text, blob[8 + n :], length)

    return corrupt


def step_of(value):
    def change(docs):
        docs["optimizer"]["state"]["0"]["step"] = value

    return change


def group_entry(key, value, group=0):
    def change(docs):
        docs["optimizer"]["param_groups"][group][key] = value

    return change


def optimizer_text(transform):
    """Edit the optimizer document as text (for what json.dumps cannot write)."""

    def change(docs):
        docs["optimizer"] = transform(json.dumps(docs["optimizer"]))

    return change


def deep(depth):
    return "[" * depth + "]" * depth


def replace_whole(contents: bytes):
    return lambda path: path.write_bytes(contents)


def plain_npy(path):
    np.save(path.open("wb"), np.zeros((5, 4), np.float32))


def tensor(name, **changes):
    def change(header):
        header[name].update(changes)

    return change


def drop_tensor(name):
    def change(header):
        del header[name]

    return change


def swap_offsets(header):
    a, b = header["state/0/exp_avg"], header["state/0/exp_inf"]
    a["data_offsets"], b["data_offsets"] = b["data_offsets"], a["data_offsets"]


def overlap(header):
    begin, end = header["state/0/exp_inf"]["data_offsets"]
    header["state/0/exp_inf"]["data_offsets"] = [begin - 4, end - 4]


def duplicate_tensor_name(text: bytes) -> bytes:
    entry = b'"state/0/exp_avg":{"dtype":"F32","shape":[5,4],"data_offsets":[0,80]}'
    return b"{" + entry + b"," + text[1:]


def duplicate_group_key(docs):
    docs["optimizer"] = json.dumps(docs["optimizer"]).replace('"lr":', '"lr":0.5,"lr":', 1)


V2_CASES = {
    # not the layout at all
    "empty": replace_whole(b""),
    "seven bytes": replace_whole(b"\x10\0\0\0\0\0\0"),
    "text": replace_whole(b"this is not a checkpoint"),
    "plain npy": plain_npy,
    "header length 2**63": raw_header(lambda t: t, length=2**63),
    "header length 2**64-1": raw_header(lambda t: t, length=2**64 - 1),
    "header length past the file": raw_header(lambda t: t, length=10_000),
    "header length 0": raw_header(lambda t: t, length=0),
    "header not utf-8": raw_header(lambda t: t.replace(b'"format"', b'"f\xffrmat"')),
    "header a json list": raw_header(lambda t: b"[" + t + b"]"),
    "header deeply nested": raw_header(lambda t: t[:-1] + b',"x":' + deep(100_000).encode() + b"}"),
    "header with NaN": raw_header(lambda t: t[:-1] + b',"x":NaN}'),
    "header 400-digit integer": raw_header(lambda t: t[:-1] + b',"x":' + b"9" * 400 + b"}"),
    "duplicate tensor name": raw_header(duplicate_tensor_name),
    # metadata entries
    "no metadata": raw_header(lambda t: t.replace(b'"__metadata__"', b'"__metadata_"')),
    "metadata not strings": header_change(lambda h: h["__metadata__"].update(version=2)),
    "other format": documents_change(lambda d: d.update(format="something.else")),
    "version 1 in the new layout": header_change(lambda h: h["__metadata__"].update(version="1")),
    "version 3": header_change(lambda h: h["__metadata__"].update(version="3")),
    "unknown metadata entry": documents_change(lambda d: d.update(note="hi")),
    "no crc32": lambda p: rewrite(p, lambda h, d: h["__metadata__"].pop("crc32"), reseal=False),
    "metadata changed, crc not": lambda p: rewrite(
        p, lambda h, d: d["optimizer"]["param_groups"][1].update(lr=0.2), reseal=False
    ),
    # the optimizer document
    "other optimizer": documents_change(lambda d: d["optimizer"].update({"class": "SGD"})),
    "class not a string": documents_change(lambda d: d["optimizer"].update({"class": 5})),
    "param_groups a dict": documents_change(lambda d: d["optimizer"].update(param_groups={})),
    "state a list": documents_change(lambda d: d["optimizer"].update(state=[])),
    "extra document key": documents_change(lambda d: d["optimizer"].update(more=1)),
    "one group missing": documents_change(lambda d: d["optimizer"]["param_groups"].pop()),
    "params not a list": documents_change(group_entry("params", "0")),
    "params index a string": documents_change(group_entry("params", ["0"])),
    "params index a bool": documents_change(group_entry("params", [True])),
    "params index a float": documents_change(group_entry("params", [0.0])),
    "params index repeated": documents_change(group_entry("params", [1, 1], group=1)),
    "params too many": documents_change(group_entry("params", [0, 5])),
    "lr a string": documents_change(group_entry("lr", "0.1")),
    "lr negative": documents_change(group_entry("lr", -1.0)),
    "lr a list": documents_change(group_entry("lr", [0.1])),
    "lr 400 digits": documents_change(
        optimizer_text(lambda t: t.replace('"lr": 0.1', '"lr": ' + "9" * 400))
    ),
    "lr 1e400": documents_change(optimizer_text(lambda t: t.replace('"lr": 0.1', '"lr": 1e400'))),
    "lr NaN": documents_change(optimizer_text(lambda t: t.replace('"lr": 0.1', '"lr": NaN'))),
    "lr Infinity": documents_change(
        optimizer_text(lambda t: t.replace('"lr": 0.1', '"lr": -Infinity'))
    ),
    "beta1 2": documents_change(group_entry("beta1", 2.0)),
    "maximize a string": documents_change(group_entry("maximize", "no")),
    "hyperparameter missing": documents_change(
        lambda d: d["optimizer"]["param_groups"][0].pop("eps")
    ),
    "repeated key in a group": documents_change(duplicate_group_key),
    "group value deeply nested": documents_change(
        optimizer_text(lambda t: t.replace('"tag": "first"', '"tag": ' + deep(5000)))
    ),
    "state key with a sign": documents_change(
        lambda d: d["optimizer"]["state"].update({"+0": d["optimizer"]["state"].pop("0")})
    ),
    "state key with a zero": documents_change(
        lambda d: d["optimizer"]["state"].update({"00": d["optimizer"]["state"].pop("0")})
    ),
    "state key not a number": documents_change(lambda d: d["optimizer"]["state"].update(x={})),
    "state of a missing parameter": documents_change(
        lambda d: d["optimizer"]["state"].update({"9": {"step": 1}})
    ),
    "state entry a list": documents_change(lambda d: d["optimizer"]["state"].update({"0": []})),
    "step negative": documents_change(step_of(-1)),
    "step 2**53 + 1": documents_change(step_of(2**53 + 1)),
    "step 2**63": documents_change(step_of(2**63)),
    "step 400 digits": documents_change(
        optimizer_text(lambda t: t.replace('"step": 3', '"step": ' + "9" * 400, 1))
    ),
    "step a float": documents_change(step_of(3.0)),
    "step a string": documents_change(step_of("3")),
    "step a bool": documents_change(step_of(True)),
    "step null": documents_change(step_of(None)),
    "step missing": documents_change(lambda d: d["optimizer"]["state"]["0"].pop("step")),
    "unexpected state value": documents_change(
        lambda d: d["optimizer"]["state"]["0"].update(extra=1)
    ),
    "state value that is also an array": documents_change(
        lambda d: d["optimizer"]["state"]["0"].update(exp_avg=1)
    ),
    # the complex entry
    "complex entry missing": documents_change(lambda d: d.pop("complex")),
    "complex names a missing tensor": documents_change(lambda d: d["complex"].append("nope")),
    "complex names a real tensor": documents_change(
        lambda d: d["complex"].append("state/0/exp_avg")
    ),
    "complex repeated": documents_change(lambda d: d["complex"].append(d["complex"][0])),
    "complex not a list": documents_change(lambda d: d.update(complex={"a": 1})),
    # tensors: names, dtypes, shapes, offsets
    "tensor missing": header_change(drop_tensor("state/1/exp_inf")),
    "unexpected tensor": lambda p: add_tensor(p, "other", np.zeros(2, np.float32), "F32"),
    "unexpected state array": lambda p: add_tensor(
        p, "state/0/junk", np.zeros((5, 4), np.float32), "F32"
    ),
    "empty array with huge axes": lambda p: (
        add_tensor(p, "state/0/junk", np.zeros(0, np.float32), "F32"),
        rewrite(p, lambda h, d: h["state/0/junk"].update(shape=[0, 2**47, 2**47])),
    ),
    "parameter count 10**10 - 1": documents_change(lambda d: d.update(parameters="9999999999")),
    "parameter without a count": lambda p: add_tensor(
        p, "param/0", np.zeros((5, 4), np.float32), "F32"
    ),
    "dtype F64 for a float32 state": lambda p: rewrite_array(p, "state/0/exp_avg", np.float64),
    "dtype I32": header_change(tensor("state/0/exp_avg", dtype="I32")),
    "dtype BOOL": header_change(tensor("state/0/exp_avg", dtype="BOOL")),
    "dtype lowercase": header_change(tensor("state/0/exp_avg", dtype="f32")),
    "dtype a number": header_change(tensor("state/0/exp_avg", dtype=4)),
    "shape transposed": header_change(tensor("state/0/exp_avg", shape=[4, 5])),
    "shape flattened": header_change(tensor("state/0/exp_avg", shape=[20])),
    "shape with an extra axis": header_change(tensor("state/0/exp_avg", shape=[5, 4, 1])),
    "shape 10**12 elements": header_change(tensor("state/0/exp_avg", shape=[10**6, 10**6])),
    "shape negative": header_change(tensor("state/0/exp_avg", shape=[-5, -4])),
    "shape of strings": header_change(tensor("state/0/exp_avg", shape=["5", "4"])),
    "shape 400 digits": raw_header(
        lambda t: t.replace(b'"shape":[5,4]', b'"shape":[' + b"9" * 400 + b",4]", 1)
    ),
    "shape too many axes": header_change(tensor("state/0/exp_avg", shape=[1] * 40 + [5, 4])),
    "offsets negative": header_change(tensor("state/0/exp_avg", data_offsets=[-80, 0])),
    "offsets overflowing": header_change(
        tensor("state/0/exp_avg", data_offsets=[2**64 - 16, 2**64 + 64])
    ),
    "offsets backwards": header_change(tensor("state/0/exp_avg", data_offsets=[80, 0])),
    "offsets swapped, checksums not": lambda p: rewrite(
        p, lambda h, d: swap_offsets(h), reseal=False
    ),
    "offsets overlapping": header_change(overlap),
    "offsets three numbers": header_change(tensor("state/0/exp_avg", data_offsets=[0, 40, 80])),
    "offsets floats": header_change(tensor("state/0/exp_avg", data_offsets=[0.0, 80.0])),
    "entry with another key": header_change(tensor("state/0/exp_avg", note="x")),
    "bytes after the data": lambda p: p.write_bytes(p.read_bytes() + b"\0" * 8),
    "data flipped": lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\x01"),
}


def rewrite_array(path, name, dtype):
    """Store tensor ``name`` with another dtype (same values)."""
    header, data = read_raw(path)
    entry = header[name]
    begin, end = entry["data_offsets"]
    values = np.frombuffer(data[begin:end], "<f4").astype(dtype).tobytes()
    del header[name]
    data2 = data[:begin] + data[end:]
    for other in header.values():
        if isinstance(other, dict) and "data_offsets" in other:
            b, e = other["data_offsets"]
            if b >= end:
                other["data_offsets"] = [b - (end - begin), e - (end - begin)]
    header[name] = {
        "dtype": "F64",
        "shape": entry["shape"],
        "data_offsets": [len(data2), len(data2) + len(values)],
    }
    write_raw(path, seal(header, data2 + values), data2 + values)


@pytest.mark.parametrize("corrupt", V2_CASES.values(), ids=V2_CASES.keys())
def test_hostile_files_are_value_errors_that_change_nothing(victim, good, corrupt):
    corrupt(good)
    assert_refused(victim, good)


def test_the_v2_cases_start_from_a_good_file(victim, good):
    """The corruptions above start from a file that loads, also after a no-op rewrite."""
    load_checkpoint(victim, good)
    rewrite(good, lambda header, docs: None, reseal=False)
    load_checkpoint(victim, good)
    rewrite(good, lambda header, docs: docs["optimizer"]["param_groups"][0].update(lr=0.5))
    load_checkpoint(victim, good)
    assert victim.param_groups[0]["lr"] == 0.5
    rewrite_array(good, "state/1/exp_avg", np.float32)  # the helper, with an exact dtype
    header, _ = read_raw(good)
    assert header["state/1/exp_avg"]["dtype"] == "F64"


def test_messages_name_the_problem(tmp_path, victim):
    path = tmp_path / "a"
    save_checkpoint(victim, path)
    rewrite(path, lambda h, d: d["optimizer"]["param_groups"][0].update(lr="fast"))
    assert "lr" in assert_refused(victim, path)
    save_checkpoint(victim, path)
    rewrite_array(path, "state/0/exp_avg", np.float64)
    assert "convert exactly" in assert_refused(victim, path)
    save_checkpoint(victim, path)
    rewrite(path, lambda h, d: d["optimizer"]["state"]["1"].update(step=-2))
    assert "step" in assert_refused(victim, path)


# -- version 1: 0.1.0's .npz -----------------------------------------------------------------


def v1_contents(optimizer):
    """0.1.0's layout for ``optimizer``: metadata dict and arrays (the test's own writer)."""
    sd = optimizer.state_dict()
    arrays, state = {}, {}
    for index, entry in sd["state"].items():
        meta = {"arrays": []}
        for key, value in entry.items():
            if isinstance(value, np.ndarray):
                arrays[f"state/{index}/{key}"] = value
                meta["arrays"].append(key)
            else:
                meta[key] = value
        state[str(index)] = meta
    metadata = {
        "format": "adamax_rs.checkpoint",
        "version": 1,
        "optimizer": type(optimizer).__name__,
        "param_groups": sd["param_groups"],
        "state": state,
    }
    return metadata, arrays


def write_v1(path, metadata, arrays, metadata_text=None, savez=np.savez):
    text = metadata_text if metadata_text is not None else json.dumps(metadata)
    encoded = text if isinstance(text, bytes) else text.encode("utf-8")
    with open(path, "wb") as file:
        savez(file, **arrays, metadata=np.frombuffer(encoded, dtype=np.uint8))


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def v1_case(change=None, text=None, savez=np.savez):
    def corrupt(path, optimizer):
        metadata, arrays = v1_contents(optimizer)
        if change is not None:
            change(metadata, arrays)
        write_v1(path, metadata, arrays, None if text is None else text(metadata), savez)

    return corrupt


def zip_case(build):
    def corrupt(path, optimizer):
        metadata, arrays = v1_contents(optimizer)
        arrays["metadata"] = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
        with zipfile.ZipFile(path, "w") as archive:
            build(archive, arrays)

    return corrupt


def members(compress=zipfile.ZIP_STORED, skip=()):
    """A builder writing every array as a member, but those in ``skip``."""

    def write(archive, arrays):
        for name, array in arrays.items():
            if name not in skip:
                archive.writestr(name + ".npy", npy_bytes(array), compress_type=compress)

    return write


def with_extra_member(name, payload):
    def build(archive, arrays):
        members()(archive, arrays)
        archive.writestr(name, payload)

    return build


def with_member(name, raw):
    def build(archive, arrays):
        members(skip=(name,))(archive, arrays)
        archive.writestr(name + ".npy", raw)

    return build


def npy_header(descr, shape, fortran=False):
    header = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}"
    header += " " * (-(len(header) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()


def encrypted(path, optimizer):
    """A good archive whose members then get the 'encrypted' flag (zipfile cannot write it)."""
    v1_case()(path, optimizer)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        infos, start = archive.infolist(), archive.start_dir
    for info in infos:
        data[info.header_offset + 6] |= 0x1  # local header flags
    position = start
    for _ in infos:
        assert data[position : position + 4] == b"PK\x01\x02"
        data[position + 8] |= 0x1  # central directory flags
        name, extra, comment = struct.unpack("<3H", data[position + 28 : position + 34])
        position += 46 + name + extra + comment
    path.write_bytes(bytes(data))


def duplicated(archive, arrays):
    members()(archive, arrays)
    archive.writestr("state/0/exp_avg.npy", npy_bytes(arrays["state/0/exp_avg"]))


V1_CASES = {
    "no metadata": zip_case(members(skip=("metadata",))),
    "pickled metadata": zip_case(
        with_member("metadata", npy_bytes(np.array([{"a": 1}], dtype=object)))
    ),
    "non-npy member": zip_case(with_extra_member("notes.txt", b"hello")),
    "member named twice": zip_case(duplicated),
    "compressed members": zip_case(members(zipfile.ZIP_DEFLATED)),
    "encrypted member": encrypted,
    "member claiming 10**12 elements": zip_case(
        with_member("state/0/exp_avg", npy_header("<f4", (10**6, 10**6)) + b"\0" * 80)
    ),
    "member with int32 data": v1_case(
        lambda m, a: a.update({"state/0/exp_avg": np.zeros((5, 4), np.int32)})
    ),
    "member with float16 data": v1_case(
        lambda m, a: a.update({"state/0/exp_avg": np.zeros((5, 4), np.float16)})
    ),
    "member float64 for float32 state": v1_case(
        lambda m, a: a.update({"state/0/exp_avg": a["state/0/exp_avg"].astype(np.float64)})
    ),
    "member transposed": v1_case(
        lambda m, a: a.update({"state/0/exp_avg": a["state/0/exp_avg"].T.copy()})
    ),
    "npy header with a python expression": zip_case(
        with_member(
            "state/0/exp_avg",
            npy_header("<f4", "(5, 4)").replace(b"(5, 4)", b"(5*1, 4)") + b"\0" * 80,
        )
    ),
    "npy header too long": zip_case(
        with_member(
            "state/0/exp_avg",
            b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31) + b"{" + b" " * 100,
        )
    ),
    "npy version 9": zip_case(
        with_member("state/0/exp_avg", b"\x93NUMPY\x09\x00" + npy_header("<f4", (5, 4))[8:])
    ),
    "npy data too short": zip_case(
        with_member("state/0/exp_avg", npy_header("<f4", (5, 4)) + b"\0" * 40)
    ),
    "npy data too long": zip_case(
        with_member("state/0/exp_avg", npy_header("<f4", (5, 4)) + b"\0" * 120)
    ),
    "metadata not utf-8": v1_case(text=lambda m: b'{"format": "\xff"}'),
    "metadata deeply nested": v1_case(
        text=lambda m: json.dumps(m)[:-1] + ',"x":' + deep(50_000) + "}"
    ),
    "metadata 400-digit step": v1_case(
        text=lambda m: json.dumps(m).replace('"step": 3', '"step": ' + "9" * 400, 1)
    ),
    "metadata NaN lr": v1_case(lambda m, a: m["param_groups"][1].update(lr=float("nan"))),
    "metadata repeated key": v1_case(
        text=lambda m: json.dumps(m).replace('"version": 1', '"version": 1, "version": 1')
    ),
    "version 2 in an npz": v1_case(lambda m, a: m.update(version=2)),
    "version as a string": v1_case(lambda m, a: m.update(version="1")),
    "version true": v1_case(lambda m, a: m.update(version=True)),
    "other optimizer": v1_case(lambda m, a: m.update(optimizer="SGD")),
    "optimizer not a string": v1_case(lambda m, a: m.update(optimizer=["Adamax"])),
    "param_groups a string": v1_case(lambda m, a: m.update(param_groups="[]")),
    "state a list": v1_case(lambda m, a: m.update(state=[])),
    "arrays not a list": v1_case(lambda m, a: m["state"]["0"].update(arrays="exp_avg")),
    "arrays listing a missing member": v1_case(lambda m, a: m["state"]["0"]["arrays"].append("x")),
    "arrays listed twice": v1_case(
        lambda m, a: m["state"]["0"]["arrays"].append(m["state"]["0"]["arrays"][0])
    ),
    "unlisted member": v1_case(lambda m, a: a.update({"state/0/junk": np.zeros(3, np.float32)})),
    "step -1": v1_case(lambda m, a: m["state"]["0"].update(step=-1)),
    "step a string": v1_case(lambda m, a: m["state"]["0"].update(step="3")),
    "extra metadata key": v1_case(lambda m, a: m.update(more=1)),
    "wrong shape": v1_case(lambda m, a: a.update({"state/1/exp_inf": np.zeros(4, np.float32)})),
}


@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile warns; writing it is the point
@pytest.mark.parametrize("corrupt", V1_CASES.values(), ids=V1_CASES.keys())
def test_hostile_version_1_files_are_value_errors_that_change_nothing(tmp_path, victim, corrupt):
    path = tmp_path / "old.npz"
    corrupt(path, victim)
    assert_refused(victim, path)


def test_the_v1_cases_start_from_a_good_file(tmp_path, victim):
    path = tmp_path / "old.npz"
    v1_case()(path, victim)
    fresh = make_victim(seed=99)[0]  # other values, same shapes: the load must replace them
    load_checkpoint(fresh, path)
    for p, q in zip(victim.param_groups[1]["params"], fresh.param_groups[1]["params"]):
        assert fresh.state[q]["exp_avg"].tobytes() == victim.state[p]["exp_avg"].tobytes()
    zip_case(members())(path, victim)  # the zip builder, with nothing changed
    load_checkpoint(fresh, path)


def test_a_corrupted_member_of_a_version_1_file_fails_its_crc(tmp_path, victim):
    path = tmp_path / "old.npz"
    v1_case()(path, victim)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("state/0/exp_avg.npy")
    offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size - 8
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))
    assert "CRC" in assert_refused(victim, path)


# -- every offset -------------------------------------------------------------------------------


def small_victim():
    p = Parameter(np.arange(3, dtype=np.float32))
    opt = Adamax([p], lr=0.1)
    p.grad = np.ones(3, np.float32)
    opt.step()
    return opt


def outcome(optimizer):
    """What a load produced, to compare loads of damaged files with the good one's."""
    state = take(optimizer)
    return json.dumps(state["groups"], default=str), [
        {k: (v.tobytes(), str(v.dtype)) if isinstance(v, np.ndarray) else v for k, v in s.items()}
        for s in state["state"]
    ]


@pytest.mark.parametrize("version", [1, 2])
def test_truncated_at_every_offset(tmp_path, version):
    opt = small_victim()
    path = tmp_path / "small"
    if version == 2:
        save_checkpoint(opt, path)
    else:
        write_v1(path, *v1_contents(opt))
    blob = path.read_bytes()
    fresh = small_victim()
    for end in range(len(blob)):
        path.write_bytes(blob[:end])
        assert_refused(fresh, path)


def test_every_byte_flipped_in_a_version_2_file_is_refused(tmp_path):
    opt = small_victim()
    path = tmp_path / "small"
    save_checkpoint(opt, path)
    blob = path.read_bytes()
    fresh = small_victim()
    for position in range(len(blob)):
        damaged = bytearray(blob)
        damaged[position] ^= 0xFF
        path.write_bytes(bytes(damaged))
        assert_refused(fresh, path)


@pytest.mark.parametrize("version", [1, 2])
def test_random_byte_changes_are_refused_or_harmless(tmp_path, version):
    """Any change of one byte is a ValueError, or (zip fields nobody reads, JSON whitespace)
    loads exactly what the undamaged file loads."""
    opt = small_victim()
    path = tmp_path / "small"
    if version == 2:
        save_checkpoint(opt, path)
    else:
        write_v1(path, *v1_contents(opt))
    blob = path.read_bytes()
    reference = small_victim()
    load_checkpoint(reference, path)
    expected = outcome(reference)
    rng = np.random.default_rng(version)
    refused = 0
    for position in range(len(blob)):
        damaged = bytearray(blob)
        damaged[position] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(damaged))
        fresh = small_victim()
        before = take(fresh)
        try:
            load_checkpoint(fresh, path)
        except ValueError:
            assert_same(before, fresh)
            refused += 1
        else:
            assert outcome(fresh) == expected, position
    assert refused > len(blob) // 2


# -- memory --------------------------------------------------------------------------------------


def peak_bytes(action):
    """tracemalloc's peak above the start while ``action`` runs (numpy's arrays included)."""
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        action()
        _, top = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return top - base


BIG = 64 << 20  # each hostile file below holds or claims far more than the victim's state


def write_deflate_bomb(path, optimizer, size=2 * BIG):
    """A 0.1.0-style archive whose exp_avg member inflates to ``size`` bytes of zeros."""
    metadata, arrays = v1_contents(optimizer)
    arrays["metadata"] = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
    zeros = bytes(16 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for name, array in arrays.items():
            if name != "state/0/exp_avg":
                z.writestr(name + ".npy", npy_bytes(array), compress_type=zipfile.ZIP_STORED)
        with z.open("state/0/exp_avg.npy", "w", force_zip64=True) as member:
            member.write(npy_header("<f4", (size // 4,)))
            for _ in range(size // len(zeros)):
                member.write(zeros)
    assert path.stat().st_size < size // 100  # a bomb indeed


def write_big_consistent_v2(path, optimizer, name="state/0/exp_avg", shape=(BIG // 4,)):
    """A version-2 file whose tensor ``name`` really holds BIG bytes (all offsets true)."""
    save_checkpoint(optimizer, path)
    header, data = read_raw(path)
    if name in header:
        del header[name]
        # rebuild the data without it
        kept = {}
        for key, entry in header.items():
            if key != "__metadata__":
                b, e = entry["data_offsets"]
                kept[key] = data[b:e]
        data, offset = b"", 0
        for key, raw in kept.items():
            header[key]["data_offsets"] = [offset, offset + len(raw)]
            data += raw
            offset += len(raw)
    raw = bytes(int(np.prod(shape)) * 4)
    header[name] = {
        "dtype": "F32",
        "shape": list(shape),
        "data_offsets": [len(data), len(data) + len(raw)],
    }
    data += raw
    write_raw(path, seal(header, data), data)


def write_big_v1_member(path, optimizer):
    """A 0.1.0-style archive whose stored exp_avg member really holds BIG bytes."""
    metadata, arrays = v1_contents(optimizer)
    arrays["state/0/exp_avg"] = np.zeros(BIG // 4, np.float32)
    write_v1(path, metadata, arrays)


def write_huge_header(path, optimizer):
    """A header as long as this optimizer's limit allows, full of small JSON values."""
    save_checkpoint(optimizer, path)
    header, data = read_raw(path)
    filler = header_limit(optimizer) - len(json.dumps(header)) - 64
    text = json.dumps(header)[:-1].encode() + b',"x":[' + b"[]," * (filler // 3) + b"[]]}"
    write_raw(path, text, data)


MEMORY_CASES = {
    "deflate bomb": write_deflate_bomb,
    "consistent big state array": write_big_consistent_v2,
    "big unexpected state array": lambda p, o: write_big_consistent_v2(p, o, "state/0/junk"),
    "big tensor of another name": lambda p, o: write_big_consistent_v2(p, o, "junk"),
    "big stored version-1 member": write_big_v1_member,
    "header at the limit": write_huge_header,
}


@pytest.fixture(scope="module")
def memory_files(tmp_path_factory):
    """The files of MEMORY_CASES, written once (the deflate bomb takes seconds to make)."""
    folder = tmp_path_factory.mktemp("hostile")
    victim = make_victim()[0]
    paths = {}
    for name, write in MEMORY_CASES.items():
        paths[name] = folder / name.replace(" ", "_")
        write(paths[name], victim)
    return paths


@pytest.mark.parametrize("name", MEMORY_CASES)
def test_hostile_files_allocate_little(victim, memory_files, name):
    before = take(victim)
    path = memory_files[name]
    peak = peak_bytes(lambda: pytest.raises(ValueError, load_checkpoint, victim, path))
    assert_same(before, victim)
    # The victim's state is a few hundred bytes; the files hold or claim 64 MiB to 128 MiB.
    # The most a header can make is about 24 bytes of Python objects per byte of JSON.
    assert peak < 30 * header_limit(victim) + (1 << 20), f"{peak / 2**20:.1f} MiB"
    assert peak < BIG // 8


def test_memory_of_a_load_is_bounded_by_the_state(tmp_path):
    """A good load allocates about twice the state (read once, copied once by
    load_state_dict); a hostile file for the same optimizer no more than that."""
    n = 1 << 20
    p = Parameter(np.zeros(n, np.float32))
    opt = Adamax([p])
    p.grad = np.ones(n, np.float32)
    opt.step()
    state_bytes = 2 * 4 * n
    path = tmp_path / "good"
    save_checkpoint(opt, path)
    good_peak = peak_bytes(lambda: load_checkpoint(opt, path))
    assert good_peak < 2 * state_bytes + (1 << 20)
    hostile = tmp_path / "hostile"
    write_big_consistent_v2(hostile, opt, "state/0/junk", shape=(8 * n,))
    hostile_peak = peak_bytes(lambda: pytest.raises(ValueError, load_checkpoint, opt, hostile))
    assert hostile_peak < 2 * state_bytes + (1 << 20)


CAPPED_CHILD = r"""
import resource, sys
sys.path[:0] = sys.argv[1].split(":")
from adamax_rs import load_checkpoint
from test_checkpoint_hostile import make_victim
victim = make_victim()[0]
with open("/proc/self/status") as status:
    size = next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmSize"))
headroom = 48 << 20
resource.setrlimit(resource.RLIMIT_AS, (size + headroom, size + headroom))
for path in sys.argv[2:]:
    try:
        load_checkpoint(victim, path)
    except ValueError:
        print("refused", path, flush=True)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc")
def test_hostile_files_fit_in_a_capped_address_space(memory_files):
    """In a process that cannot map 48 MiB more, every hostile file is still a ValueError
    (a MemoryError would escape otherwise)."""
    paths = [str(path) for path in memory_files.values()]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    where = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    result = subprocess.run(
        [sys.executable, "-c", CAPPED_CHILD, where, *paths],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("refused") == len(paths), result.stdout + result.stderr[-2000:]


# -- limits that saving and loading must share, and text that must not take long ------------


def test_an_unterminated_string_is_skipped_in_one_match():
    # Counting the nesting depth first removes strings. A header of many escaped quotes and
    # no closing one made each quote start a match that scanned to the end and failed
    # (quadratic: minutes for the 256 KiB every optimizer allows). Each attempt must now
    # match to where it stops, so one match covers the rest of the text.
    from adamax_rs._json_values import _STRING, loads

    for tail in ("", "\\"):
        text = '{"' + '\\"' * 5000 + tail
        match = _STRING.search(text)
        assert match is not None and match.span() == (1, len(text))
        with pytest.raises(ValueError, match="not valid JSON"):
            loads(text, "the header")


def test_a_header_of_escaped_quotes_is_a_value_error(victim, good):
    text = b'{"' + b'\\"' * 20000
    path = good.with_name("quotes.safetensors")
    path.write_bytes(struct.pack("<Q", len(text)) + text)
    assert "not valid JSON" in assert_refused(victim, path)


def nested(levels):
    value = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_what_saving_accepts_loading_reads_back(tmp_path):
    # ``extra`` holds one object around the value: 32 levels of brackets in all load back,
    # and saving refuses 33 (it used to write them, and loading refused its own file).
    from adamax_rs import load_training_checkpoint, save_training_checkpoint

    p = Parameter(np.ones(3, np.float32))
    opt = Adamax([p])
    path = tmp_path / "run.safetensors"
    save_training_checkpoint(opt, path, extra={"a": nested(31)})
    assert load_training_checkpoint(opt, path)["a"] == nested(31)
    with pytest.raises(ValueError, match="nested more than 32"):
        save_training_checkpoint(opt, path, extra={"a": nested(32)})
    # A group value sits inside the optimizer's document, three levels down.
    for levels, saves in ((29, True), (30, False)):
        q = Parameter(np.ones(3, np.float32))
        opt = Adamax([{"params": [q], "tag": nested(levels)}])
        if saves:
            save_checkpoint(opt, path)
            load_checkpoint(opt, path)
            assert opt.param_groups[0]["tag"] == nested(levels)
        else:
            with pytest.raises(ValueError, match="nested more than 32"):
                save_checkpoint(opt, path)
