"""Readers of components.data.formats against files built here from each format's specification."""

from __future__ import annotations

import io
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from components.data.errors import DataError
from components.data.formats import (
    RecordIOReader,
    load_verification_bin,
    read_celeba_attributes,
    read_celeba_identities,
    read_lfw_pairs,
    read_property,
    write_recordio,
)

MAGIC = struct.pack("<I", 0xCED7230A)


def _pixels(seed: int, shape=(6, 5, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


# ---------------------------------------------------------------------- RecordIO, from the spec


def _spec_record(data: bytes, cflag: int = 0) -> bytes:
    """magic, lrecord (cflag << 29 | length), data zero-padded to 4 bytes."""
    pad = b"\0" * (-len(data) % 4)
    return MAGIC + struct.pack("<I", (cflag << 29) | len(data)) + data + pad


def _spec_payload(label, image: bytes = b"") -> bytes:
    """IRHeader '<IfQQ', then (flag > 0) `flag` float32 labels, then the image bytes."""
    if isinstance(label, (list, tuple)):
        return struct.pack("<IfQQ", len(label), 0.0, 0, 0) + struct.pack(f"<{len(label)}f", *label) + image
    return struct.pack("<IfQQ", 0, float(label), 0, 0) + image


def _spec_files(tmp_path, payloads: list[bytes], name: str = "train"):
    rec, idx = tmp_path / f"{name}.rec", tmp_path / f"{name}.idx"
    blob, lines = b"", ""
    for key, payload in enumerate(payloads):
        lines += f"{key}\t{len(blob)}\n"
        blob += _spec_record(payload)
    rec.write_bytes(blob)
    idx.write_text(lines)
    return rec, idx


@pytest.fixture
def images():
    """(identity label, pixels, encoded bytes): three identities, PNG and JPEG, grouped by identity."""
    labels = [0, 0, 1, 2, 2, 2]
    out = []
    for i, label in enumerate(labels):
        arr = _pixels(i)
        out.append((label, arr, _encode(arr, "JPEG" if i == 2 else "PNG")))
    return out


def _insightface_payloads(images) -> list[bytes]:
    n = len(images)
    return ([_spec_payload([n + 1, n + 4])] + [_spec_payload(lab, data) for lab, _, data in images]
            + [_spec_payload(r) for r in ([1, 3], [3, 4], [4, 7])])


def test_recordio_reads_insightface_layout_built_from_spec(tmp_path, images):
    rec, idx = _spec_files(tmp_path, _insightface_payloads(images))
    with RecordIOReader(rec, idx) as reader:
        assert len(reader) == 6
        got = list(reader)
        assert reader.identity_ranges() == [(1, 3), (3, 4), (4, 7)]
    assert [k for k, _, _ in got] == [1, 2, 3, 4, 5, 6]
    assert [lab for _, lab, _ in got] == [lab for lab, _, _ in images]
    assert all(type(lab) is int for _, lab, _ in got)
    for (_, _, data), (_, arr, raw) in zip(got, images):
        assert data == raw
        if raw.startswith(b"\x89PNG"):
            np.testing.assert_array_equal(_decode(data), arr)
        else:
            assert _decode(data).shape == arr.shape


def test_recordio_unpack_array_labels_and_random_access(tmp_path, images):
    payload = _spec_payload([7.0, 0.5, 2.0], images[0][2])
    rec, idx = _spec_files(tmp_path, [_spec_payload(3.0, images[1][2]), payload])
    reader = RecordIOReader(rec, idx)
    assert len(reader) == 2  # record 0 has flag 0: every key is an image
    assert reader.read(1) == payload
    header, data = reader.unpack(reader.read(1))
    assert header.flag == 3 and data == images[0][2]
    np.testing.assert_array_equal(header.label, np.array([7.0, 0.5, 2.0], dtype=np.float32))
    assert list(reader) == [(0, 3, images[1][2]), (1, 7, images[0][2])]
    with pytest.raises(KeyError):
        reader.read(2)
    reader.close()


def test_write_recordio_matches_spec_bytes(tmp_path, images):
    spec_rec, spec_idx = _spec_files(tmp_path, _insightface_payloads(images), name="spec")
    n = write_recordio(tmp_path / "w.rec", tmp_path / "w.idx", [(lab, data) for lab, _, data in images])
    assert n == 6
    assert (tmp_path / "w.rec").read_bytes() == spec_rec.read_bytes()
    assert (tmp_path / "w.idx").read_text() == spec_idx.read_text()

    write_recordio(tmp_path / "p.rec", tmp_path / "p.idx", [(5, b"abc")], insightface=False)
    assert (tmp_path / "p.rec").read_bytes() == _spec_record(_spec_payload(5, b"abc"))
    with pytest.raises(ValueError, match="contiguous"):
        write_recordio(tmp_path / "x.rec", tmp_path / "x.idx", [(0, b"a"), (1, b"b"), (0, b"c")])


def _split_payload() -> bytes:
    # the magic at two 4-byte-aligned positions of the payload (24-byte header + 8 bytes, then 4 more)
    return _spec_payload(4, b"ABCDEFGH" + MAGIC + b"IJKL" + MAGIC + b"tail!")


def test_recordio_reads_split_record(tmp_path):
    payload = _split_payload()
    head, rest = payload[:32], payload[36:]
    middle, tail = rest[:4], rest[8:]
    assert head + MAGIC + middle + MAGIC + tail == payload
    first = _spec_record(_spec_payload(1, b"x"))
    split = _spec_record(head, 1) + _spec_record(middle, 2) + _spec_record(tail, 3)
    last = _spec_record(_spec_payload(9, b"y"))
    (tmp_path / "s.rec").write_bytes(first + split + last)
    (tmp_path / "s.idx").write_text(f"0\t0\n1\t{len(first)}\n2\t{len(first) + len(split)}\n")
    reader = RecordIOReader(tmp_path / "s.rec", tmp_path / "s.idx")
    assert reader.read(1) == payload
    assert list(reader) == [(0, 1, b"x"), (1, 4, payload[24:]), (2, 9, b"y")]
    # MXNet's writer splits at the same places
    write_recordio(tmp_path / "w.rec", tmp_path / "w.idx", [(4, payload[24:])], insightface=False)
    assert (tmp_path / "w.rec").read_bytes() == split


def test_recordio_split_record_missing_its_end_is_refused(tmp_path):
    payload = _split_payload()
    (tmp_path / "s.rec").write_bytes(_spec_record(payload[:32], 1) + _spec_record(_spec_payload(1, b"x")))
    (tmp_path / "s.idx").write_text("0\t0\n")
    with pytest.raises(DataError, match=r"s\.rec.*continuation flag 0 at byte offset 40"):
        RecordIOReader(tmp_path / "s.rec", tmp_path / "s.idx")


def _plain(tmp_path, images):
    return _spec_files(tmp_path, [_spec_payload(lab, data) for lab, _, data in images[:3]])


def test_recordio_truncated_file(tmp_path, images):
    rec, idx = _plain(tmp_path, images)
    rec.write_bytes(rec.read_bytes()[:-10])
    reader = RecordIOReader(rec, idx)
    with pytest.raises(DataError) as e:
        list(reader)
    last = int(idx.read_text().split()[-1])
    assert "train.rec" in str(e.value) and "truncated" in str(e.value) and f"byte offset {last}" in str(e.value)


def test_recordio_bad_magic(tmp_path, images):
    rec, idx = _plain(tmp_path, images)
    blob = bytearray(rec.read_bytes())
    second = int(idx.read_text().splitlines()[1].split()[1])
    blob[second] ^= 0xFF
    rec.write_bytes(bytes(blob))
    reader = RecordIOReader(rec, idx)
    assert reader.read(0)
    with pytest.raises(DataError, match=rf"train\.rec: bad magic .* at byte offset {second}"):
        reader.read(1)


def test_recordio_idx_offset_into_a_record(tmp_path, images):
    rec, idx = _plain(tmp_path, images)
    lines = idx.read_text().splitlines()
    inside = int(lines[1].split()[1]) + 8  # the record's payload, not its header
    idx.write_text("\n".join([lines[0], f"1\t{inside}", lines[2]]) + "\n")
    with pytest.raises(DataError, match=rf"train\.rec: bad magic .* at byte offset {inside}"):
        list(RecordIOReader(rec, idx))
    idx.write_text(f"0\t{inside + 2}\n")
    with pytest.raises(DataError, match=r"train\.idx: line 1: offset .* not a record position"):
        RecordIOReader(rec, idx)


@pytest.mark.parametrize("text, problem", [
    ("0\t0\n1 8 9\n", "line 2: expected"),
    ("0\tx\n", "line 1: expected"),
    ("0\t0\n0\t0\n", "line 2: key 0 appears twice"),
    ("\n", "empty RecordIO index"),
])
def test_recordio_bad_idx(tmp_path, images, text, problem):
    rec, idx = _plain(tmp_path, images)
    idx.write_text(text)
    with pytest.raises(DataError, match=rf"train\.idx: {problem}"):
        RecordIOReader(rec, idx)


def test_recordio_header_announcing_missing_records(tmp_path, images):
    payloads = _insightface_payloads(images)
    rec, idx = _spec_files(tmp_path, payloads)
    idx.write_text("".join(line + "\n" for line in idx.read_text().splitlines() if not line.startswith("5\t")))
    with pytest.raises(DataError, match=r"train\.idx: header record 0 .*first: 5"):
        RecordIOReader(rec, idx)


def test_recordio_non_integer_label(tmp_path):
    rec, idx = _spec_files(tmp_path, [_spec_payload(1.5, b"img")])
    with pytest.raises(DataError, match=r"train\.rec: record 0 has label 1\.5"):
        list(RecordIOReader(rec, idx))


def test_read_property(tmp_path):
    (tmp_path / "property").write_text("85742,112,112\n")
    assert read_property(tmp_path / "property") == (85742, 112, 112)
    (tmp_path / "property").write_text("85742,112\n")
    with pytest.raises(DataError, match="property: expected"):
        read_property(tmp_path / "property")


# ---------------------------------------------------------------------- verification .bin


@pytest.fixture
def pair_images():
    return [_encode(_pixels(10 + i, (4, 4, 3))) for i in range(6)]


@pytest.mark.parametrize("protocol", range(3, pickle.HIGHEST_PROTOCOL + 1))
def test_bin_python3(tmp_path, pair_images, protocol):
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps((pair_images, [True, False, True]), protocol=protocol))
    imgs, issame = load_verification_bin(path)
    assert imgs == pair_images
    assert issame.dtype == bool and issame.tolist() == [True, False, True]
    np.testing.assert_array_equal(_decode(imgs[3]), _pixels(13, (4, 4, 3)))


def _py2_pickle(images: list[bytes], issame_ops: bytes) -> bytes:
    """A Python 2 protocol-2 pickle: str as BINSTRING, bools as NEWTRUE/NEWFALSE (or given ops)."""
    out = b"\x80\x02](" + b"".join(b"T" + struct.pack("<i", len(s)) + s for s in images) + b"e"
    return out + b"](" + issame_ops + b"e\x86."


def test_bin_python2_str_and_int_bools(tmp_path, pair_images):
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(_py2_pickle(pair_images, b"\x88\x89\x88"))
    imgs, issame = load_verification_bin(path)
    assert imgs == pair_images and issame.tolist() == [True, False, True]
    path.write_bytes(pickle.dumps([pair_images, [1, 0, 0]], protocol=4))
    assert load_verification_bin(path)[1].tolist() == [True, False, False]


class Custom:
    def __init__(self):
        self.x = 1


class RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_bin_refuses_os_system_without_running_it(tmp_path, pair_images):
    marker = tmp_path / "pwned"
    path = tmp_path / "cfp_fp.bin"
    data = pickle.dumps((pair_images, [RunsCommand(marker), False, True]), protocol=4)
    path.write_bytes(data)
    with pytest.raises(DataError, match=r"cfp_fp\.bin: refused .*system"):
        load_verification_bin(path)
    assert not marker.exists()
    pickle.loads(data)  # control: a plain unpickler does run it
    assert marker.exists()


@pytest.mark.parametrize("issame, refers", [
    (np.array([True, False, True]), "numpy"),
    ([np.bool_(True), np.bool_(False), np.bool_(True)], "only plain bools are accepted"),
    ([Custom(), False, True], "Custom"),
])
def test_bin_refuses_globals(tmp_path, pair_images, issame, refers):
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps((pair_images, issame)))
    with pytest.raises(DataError, match=r"lfw\.bin: refused") as e:
        load_verification_bin(path)
    assert refers in str(e.value)


@pytest.mark.parametrize("obj, problem", [
    (lambda im: (im[:5], [True, False, True]), "5 images for 3 pairs"),
    (lambda im: (im, [True, False, True], None), "expected a pair"),
    (lambda im: (im, [True, 2, True]), r"issame\[1\] is 2"),
    (lambda im: (im[:4] + ["text", im[5]], [True, False, True]), "image 4 is str"),
    (lambda im: ([], []), "no pairs"),
    (lambda im: {"images": im}, "expected a pair"),
])
def test_bin_refuses_wrong_structure(tmp_path, pair_images, obj, problem):
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps(obj(pair_images), protocol=4))
    with pytest.raises(DataError, match=rf"lfw\.bin: .*{problem}"):
        load_verification_bin(path)


def test_bin_refuses_truncated_and_trailing(tmp_path, pair_images):
    path = tmp_path / "lfw.bin"
    data = pickle.dumps((pair_images, [True, False, True]), protocol=4)
    path.write_bytes(data[:-20])
    with pytest.raises(DataError, match=r"lfw\.bin: not a valid pickle"):
        load_verification_bin(path)
    path.write_bytes(data + b"junk")
    with pytest.raises(DataError, match=r"lfw\.bin: data follows"):
        load_verification_bin(path)


# ---------------------------------------------------------------------- LFW pairs.txt


PAIRS = """2\t2
Ann\t1\t2
Bob\t1\t3
Ann\t2\tBob\t1
Cy\t1\tAnn\t1
Bob\t2\t3
Cy\t1\t2
Bob\t3\tCy\t2
Ann\t1\tCy\t1
"""


@pytest.fixture
def lfw_root(tmp_path):
    root = tmp_path / "lfw"
    for name, count in (("Ann", 2), ("Bob", 3), ("Cy", 2)):
        (root / name).mkdir(parents=True)
        for i in range(1, count + 1):
            (root / name / f"{name}_{i:04d}.jpg").write_bytes(b"jpeg")
    return root


def test_lfw_pairs(tmp_path, lfw_root):
    (tmp_path / "pairs.txt").write_text(PAIRS)
    df = read_lfw_pairs(tmp_path / "pairs.txt")
    assert list(df.columns) == ["path_a", "path_b", "label", "fold"]
    assert df.values.tolist() == [
        ["Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg", 1, 0], ["Bob/Bob_0001.jpg", "Bob/Bob_0003.jpg", 1, 0],
        ["Ann/Ann_0002.jpg", "Bob/Bob_0001.jpg", 0, 0], ["Cy/Cy_0001.jpg", "Ann/Ann_0001.jpg", 0, 0],
        ["Bob/Bob_0002.jpg", "Bob/Bob_0003.jpg", 1, 1], ["Cy/Cy_0001.jpg", "Cy/Cy_0002.jpg", 1, 1],
        ["Bob/Bob_0003.jpg", "Cy/Cy_0002.jpg", 0, 1], ["Ann/Ann_0001.jpg", "Cy/Cy_0001.jpg", 0, 1],
    ]
    rooted = read_lfw_pairs(tmp_path / "pairs.txt", image_root=lfw_root)
    assert rooted.path_a[7] == str(lfw_root / "Ann" / "Ann_0001.jpg")
    assert rooted[["label", "fold"]].equals(df[["label", "fold"]])


def test_lfw_pairs_view1_single_fold(tmp_path):
    (tmp_path / "pairsDevTest.txt").write_text("1\nAnn 1 2\nAnn 1 Bob 4\n")
    df = read_lfw_pairs(tmp_path / "pairsDevTest.txt")
    assert df.label.tolist() == [1, 0] and df.fold.tolist() == [0, 0]


def test_lfw_pairs_missing_image(tmp_path, lfw_root):
    (lfw_root / "Cy" / "Cy_0002.jpg").unlink()
    (tmp_path / "pairs.txt").write_text(PAIRS)
    missing = lfw_root / "Cy" / "Cy_0002.jpg"
    with pytest.raises(DataError) as e:
        read_lfw_pairs(tmp_path / "pairs.txt", image_root=lfw_root)
    assert str(e.value).startswith(f"{tmp_path / 'pairs.txt'}: line 7: image {missing} does not exist")


@pytest.mark.parametrize("edit, problem", [
    (("Bob\t1\t3", "Bob\t1\tCy\t3"), "line 3: fold 1 expects a matched pair"),
    (("Cy\t1\tAnn\t1", "Cy\t1\t1"), "line 5: fold 1 expects a mismatched pair"),
    (("Cy\t1\t2", "Cy\tone\t2"), "line 7: image number 'one'"),
    (("Bob\t3\tCy\t2\n", ""), "lines, but the file has 7"),
    (("2\t2\n", ""), "line 1: expected the header .* the header is missing"),
    (("Ann\t1\t2", "../x\t1\t2"), "line 2: '../x' is not a valid person name"),
])
def test_lfw_pairs_malformed(tmp_path, edit, problem):
    (tmp_path / "pairs.txt").write_text(PAIRS.replace(*edit, 1))
    with pytest.raises(DataError, match=rf"pairs\.txt: .*{problem}"):
        read_lfw_pairs(tmp_path / "pairs.txt")


# ---------------------------------------------------------------------- CelebA


ATTRS = """3
5_o_Clock_Shadow Arched_Eyebrows Smiling
000001.jpg -1  1  1
000002.jpg -1 -1  1
000003.jpg  1 -1 -1
"""


def test_celeba_identities(tmp_path):
    (tmp_path / "identity_CelebA.txt").write_text("000001.jpg 2880\n000002.jpg 2937\n000003.jpg 2880\n")
    df = read_celeba_identities(tmp_path / "identity_CelebA.txt")
    assert df.values.tolist() == [["000001.jpg", 2880], ["000002.jpg", 2937], ["000003.jpg", 2880]]
    (tmp_path / "identity_CelebA.txt").write_text("000001.jpg 2880\n000002.jpg\n")
    with pytest.raises(DataError, match=r"identity_CelebA\.txt: line 2"):
        read_celeba_identities(tmp_path / "identity_CelebA.txt")


def test_celeba_attributes(tmp_path):
    (tmp_path / "list_attr_celeba.txt").write_text(ATTRS)
    df = read_celeba_attributes(tmp_path / "list_attr_celeba.txt")
    assert list(df.columns) == ["file", "5_o_Clock_Shadow", "Arched_Eyebrows", "Smiling"]
    assert df.values.tolist() == [["000001.jpg", 0, 1, 1], ["000002.jpg", 0, 0, 1], ["000003.jpg", 1, 0, 0]]


@pytest.mark.parametrize("edit, problem", [
    (("3\n", "4\n"), "line 1 declares 4 images, but the file has 3 rows"),
    (("-1 -1  1", "-1 -1"), "line 4: 2 values for 3 attributes"),
    (("1 -1 -1", "1 0 -1"), "line 5: value '0' for Arched_Eyebrows"),
    (("000002.jpg", "000001.jpg"), "line 4: 000001.jpg already listed on line 3"),
])
def test_celeba_attributes_malformed(tmp_path, edit, problem):
    (tmp_path / "list_attr_celeba.txt").write_text(ATTRS.replace(*edit, 1))
    with pytest.raises(DataError, match=rf"list_attr_celeba\.txt: {problem}"):
        read_celeba_attributes(tmp_path / "list_attr_celeba.txt")
