"""Ingestion of identity-folder datasets: the real ORL set, mixed formats, every bad-input case,
attributes.csv, and the pickle-free atomic dataset store."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components.data import ingest
from components.data.errors import DataError
from components.data.ingest import FaceDataset, load_dataset, load_image_folder, natural_key, save_dataset
from components.data.schema import validate_manifest
from tests.conftest import noise_image, write_image


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


# --------------------------------------------------------------------------- real data


def test_att_faces_loads_as_40_by_10(att_faces_small):
    ds = att_faces_small
    assert ds.images.shape == (400, 32, 32, 3)
    assert ds.images.dtype == np.uint8
    assert np.array_equal(ds.images[..., 0], ds.images[..., 1])
    assert np.array_equal(ds.images[..., 0], ds.images[..., 2])
    m = ds.manifest
    assert list(m["index"]) == list(range(400))
    names = list(dict.fromkeys(m["identity_name"]))
    assert names == [f"s{i}" for i in range(1, 41)]  # natural order: s2 < s10, README skipped
    assert list(dict.fromkeys(m["identity"])) == list(range(40))
    assert (m.groupby("identity").size() == 10).all()
    assert (m["identity_images"] == 10).all()
    assert m.loc[0, "path"] == "s1/1.pgm" and m.loc[9, "path"] == "s1/10.pgm"  # natural order in folder
    assert ds.name == "att_faces"
    assert len(ds.version) == 12 and int(ds.version, 16) >= 0
    assert m["content_hash"].is_unique
    assert ((m["height"] == 32) & (m["width"] == 32) & (m["channels"] == 3)).all()
    assert (m["pixel_min"] == ds.images.reshape(400, -1).min(axis=1)).all()
    assert (m["pixel_max"] == ds.images.reshape(400, -1).max(axis=1)).all()
    validate_manifest(m)


def test_att_faces_canonicalisation_matches_recipe(att_faces_dir, att_faces_small):
    # 92x112 grey -> centre crop 92x92 (rows 10..101) -> BICUBIC 32x32 -> grey replicated
    with Image.open(att_faces_dir / "s3" / "7.pgm") as im:
        expected = im.convert("RGB").crop((0, 10, 92, 102)).resize((32, 32), Image.Resampling.BICUBIC)
    row = att_faces_small.manifest.index[att_faces_small.manifest["path"] == "s3/7.pgm"][0]
    assert np.array_equal(att_faces_small.images[row], np.asarray(expected))


def test_load_is_deterministic_and_pure(att_faces_dir, att_faces_small):
    before = _snapshot(att_faces_dir)
    again = load_image_folder(att_faces_dir, size=32, name="orl", progress=True)
    assert _snapshot(att_faces_dir) == before
    assert again.version == att_faces_small.version
    assert again.name == "orl"
    assert np.array_equal(again.images, att_faces_small.images)
    pd.testing.assert_frame_equal(again.manifest, att_faces_small.manifest)


def test_version_depends_on_size(att_faces_dir, att_faces_small):
    other = load_image_folder(att_faces_dir, size=16, progress=False)
    assert other.version != att_faces_small.version
    assert other.images.shape == (400, 16, 16, 3)


def test_natural_key_orders_numbers():
    assert sorted(["s10", "s2", "s1", "a", "s01"], key=natural_key) == ["a", "s01", "s1", "s2", "s10"]


# --------------------------------------------------------------------------- formats


def test_mixed_formats_and_no_extension_all_load(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_identities=3, n_images=5, mode="RGB",
                            fmt=["png", "jpg", "gif", "pgm", "bmp", "ppm", "jpeg"])
    rng = np.random.default_rng(3)
    extra = root / "id_0000"
    # content-detected files without extension, and awkward modes
    write_image(extra / "noext_png", noise_image(rng, (30, 20), "RGB"), "PNG")
    write_image(extra / "noext_jpeg", noise_image(rng, (30, 20), "RGB"), "JPEG")
    write_image(extra / "rgba.png", noise_image(rng, (25, 25), "RGBA"), "PNG")
    write_image(extra / "palette.gif", noise_image(rng, (25, 25), "P"), "GIF")
    write_image(extra / "deep.png", noise_image(rng, (25, 25), "I;16"), "PNG")
    frames = [noise_image(rng, (16, 16), "P") for _ in range(3)]
    frames[0].save(extra / "anim.gif", save_all=True, append_images=frames[1:])

    ds = load_image_folder(root, size=16, progress=False)
    assert ds.images.shape == (3 * 5 + 6, 16, 16, 3)
    assert ds.images.dtype == np.uint8
    assert ds.manifest.groupby("identity_name").size().to_dict() == {"id_0000": 11, "id_0001": 5, "id_0002": 5}
    assert "id_0000/noext_png" in set(ds.manifest["path"])
    validate_manifest(ds.manifest)


def test_the_same_photo_twice_in_one_identity_is_kept_once_and_listed(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_identities=2, n_images=3)
    shutil.copy(root / "id_0001" / "00.png", root / "id_0001" / "copy.png")
    # the same pixels saved as BMP: different file bytes, same canonical content
    with Image.open(root / "id_0001" / "01.png") as im:
        im.save(root / "id_0001" / "same.bmp", format="BMP")
    shutil.copy(root / "id_0000" / "02.png", root / "id_0000" / "02 (copy).png")   # sorts before 02.png
    ds = load_image_folder(root, size=8, progress=False)
    assert len(ds) == 6 and ds.manifest["content_hash"].is_unique
    assert "id_0001/copy.png" not in set(ds.manifest["path"])
    assert ds.duplicates == [                    # the shorter name is kept, whatever the order
        {"identity_name": "id_0000", "kept": "id_0000/02.png", "dropped": "id_0000/02 (copy).png"},
        {"identity_name": "id_0001", "kept": "id_0001/00.png", "dropped": "id_0001/copy.png"},
        {"identity_name": "id_0001", "kept": "id_0001/01.png", "dropped": "id_0001/same.bmp"}]
    assert (ds.manifest["identity_images"] == 3).all()           # counts after dropping
    assert list(ds.manifest["index"]) == list(range(6))
    clean = load_image_folder(make_face_folder(tmp_path / "clean", n_identities=2, n_images=3), size=8,
                              progress=False)
    np.testing.assert_array_equal(ds.images, clean.images)       # exactly the images of the clean folder
    assert ds.version != clean.version                           # yet another folder: another version


def test_an_identity_left_with_one_distinct_photo_is_refused_naming_both_files(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_identities=2, n_images=[2, 1])
    shutil.copy(root / "id_0001" / "00.png", root / "id_0001" / "again.png")
    with pytest.raises(DataError) as err:
        load_image_folder(root, size=8, progress=False)
    assert err.value.path == str(root / "id_0001")
    assert "only 1 distinct image: id_0001/again.png is the same photo as id_0001/00.png" in err.value.problem


def test_the_same_photo_under_two_identities_is_refused_naming_both_files(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_identities=3, n_images=2)
    shutil.copy(root / "id_0000" / "00.png", root / "id_0002" / "copy.png")
    shutil.copy(root / "id_0000" / "01.png", root / "id_0001" / "copy.png")
    with pytest.raises(DataError) as err:
        load_image_folder(root, size=8, progress=False)
    assert err.value.path == str(root / "id_0001" / "copy.png")
    assert f"same photo as {root / 'id_0000' / '01.png'}" in err.value.problem
    assert "'id_0001' and identity 'id_0000'" in err.value.problem and "2 such images in all" in err.value.problem
    assert "one person" in err.value.hint


def test_operating_system_litter_is_skipped_and_listed(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_identities=2, n_images=2)
    (root / "id_0000" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 not an image")
    (root / "id_0000" / "desktop.ini").write_text("[.ShellClassInfo]")
    (root / "id_0001" / "._00.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "id_0001" / "__MACOSX").mkdir()
    (root / "__MACOSX" / "id_0000").mkdir(parents=True)
    (root / "__MACOSX" / "id_0000" / "._00.png").write_bytes(b"x")
    (root / "@eaDir").mkdir()
    (root / "THUMBS.DB").write_bytes(b"x")                          # names compared case-insensitively
    os.mkfifo(root / "id_0001" / "pipe")                            # would block a reader forever
    ds = load_image_folder(root, size=8, progress=False)
    assert len(ds) == 4 and set(ds.manifest["identity_name"]) == {"id_0000", "id_0001"}
    assert set(ds.ignored) == {"@eaDir", "__MACOSX", "THUMBS.DB", "id_0000/Thumbs.db", "id_0000/desktop.ini",
                               "id_0001/._00.png", "id_0001/__MACOSX", "id_0001/pipe"}


def test_the_store_keeps_the_duplicates_and_the_ignored_files(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_identities=2, n_images=2)
    shutil.copy(root / "id_0000" / "00.png", root / "id_0000" / "02.png")
    (root / "id_0000" / "Thumbs.db").write_bytes(b"x")
    ds = load_image_folder(root, size=8, progress=False)
    back = load_dataset(save_dataset(ds, tmp_path / "store"))
    assert back.duplicates == ds.duplicates and len(back.duplicates) == 1
    assert back.ignored == ["id_0000/Thumbs.db"]


def test_ignores_top_level_files_and_hidden_entries(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_identities=2, n_images=2)
    (root / "README").write_text("not an identity")
    (root / ".gitignore").write_text("*")
    (root / ".cache").mkdir()
    (root / ".cache" / "junk").write_text("x")
    (root / "id_0000" / ".DS_Store").write_bytes(b"\x00\x01")
    ds = load_image_folder(root, size=8, progress=False)
    assert len(ds) == 4
    assert set(ds.manifest["identity_name"]) == {"id_0000", "id_0001"}


def test_size_must_be_positive(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_identities=2, n_images=2)
    with pytest.raises(ValueError):
        load_image_folder(root, size=0)


# --------------------------------------------------------------------------- bad input


def _expect_error(root, name_part: str, problem_part: str):
    with pytest.raises(DataError) as info:
        load_image_folder(root, size=8, progress=False)
    msg = str(info.value)
    assert name_part in msg, msg
    assert problem_part in msg, msg
    return msg


def test_missing_root(tmp_path):
    _expect_error(tmp_path / "nope", "nope", "does not exist")


def test_root_is_a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    _expect_error(f, "file.txt", "not a directory")


def test_no_identity_folders(tmp_path):
    root = tmp_path / "empty_ds"
    root.mkdir()
    (root / "README").write_text("only a readme")
    _expect_error(root, "empty_ds", "no identity folders")


def test_empty_identity_folder(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_images=[2, 0, 2])
    _expect_error(root, "id_0001", "no images")


def test_single_image_identity(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_images=[2, 2, 1])
    _expect_error(root, "id_0002", "only 1 image; at least 2 are needed for verification")


def test_corrupt_file(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_identities=2, n_images=3)
    (root / "id_0001" / "01.png").write_bytes(os.urandom(500))
    _expect_error(root, "id_0001/01.png", "cannot be read as an image")


def test_truncated_png(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_identities=2, n_images=3, size=(64, 64))
    f = root / "id_0000" / "02.png"
    f.write_bytes(f.read_bytes()[:-600])
    _expect_error(root, "id_0000/02.png", "cannot be read as an image")


def test_truncated_pgm(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_identities=2, n_images=3, fmt="pgm", size=(40, 40))
    f = root / "id_0001" / "00.pgm"
    f.write_bytes(f.read_bytes()[:-100])
    _expect_error(root, "id_0001/00.pgm", "cannot be read as an image")


def test_text_file_in_identity_folder(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_identities=2, n_images=2)
    (root / "id_0000" / "notes.txt").write_text("hello, not a face\n")
    _expect_error(root, "id_0000/notes.txt", "cannot be read as an image: not a recognised image format")


def test_empty_file_in_identity_folder(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_identities=2, n_images=2)
    (root / "id_0001" / "zero.png").write_bytes(b"")
    _expect_error(root, "id_0001/zero.png", "cannot be read as an image: empty file")


def test_unsupported_image_format(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_identities=2, n_images=2)
    noise_image(np.random.default_rng(0), (8, 8), "RGB").save(root / "id_0000" / "x.tiff", format="TIFF")
    _expect_error(root, "id_0000/x.tiff", "not a recognised image format")


def test_subfolder_in_identity_folder(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_identities=2, n_images=2)
    (root / "id_0001" / "nested").mkdir()
    _expect_error(root, "id_0001/nested", "sub-folder")


def test_fail_fast_in_sorted_order(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_images=2, names=[f"s{i}" for i in range(1, 13)])
    (root / "s10" / "00.png").write_bytes(b"garbage")
    (root / "s2" / "01.png").write_bytes(b"garbage")
    (root / "s2" / "00.png").write_bytes(b"garbage")
    for _ in range(2):  # deterministic: s2 before s10 (natural), 00 before 01
        msg = _expect_error(root, "s2/00.png", "cannot be read as an image")
        assert "s10" not in msg


# --------------------------------------------------------------------------- attributes.csv


def _write_attrs(root: Path, text: str) -> None:
    (root / "attributes.csv").write_text(text, encoding="utf-8")


def test_attributes_become_string_columns(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_identities=3, n_images=2,
                            attributes={"sex": ["F", "M", "F"], "age": ["30", "41", "7"]})
    ds = load_image_folder(root, size=8, progress=False)
    m = ds.manifest
    assert list(m.columns[-2:]) == ["sex", "age"]
    assert m.groupby("identity_name")["sex"].first().to_dict() == {"id_0000": "F", "id_0001": "M", "id_0002": "F"}
    assert m["age"].map(type).eq(str).all()  # strings, not parsed numbers
    validate_manifest(m)
    # the attributes are part of the dataset version
    plain = make_face_folder(tmp_path, n_identities=3, n_images=2, name="plain")
    _write_attrs(plain, "identity_name,sex,age\nid_0000,F,30\nid_0001,M,41\nid_0002,F,8\n")
    assert load_image_folder(plain, size=8, progress=False).version != ds.version


@pytest.mark.parametrize(
    "text, problem",
    [
        ("name,sex\nid_0000,F\nid_0001,M\nid_0002,F\n", "missing column 'identity_name'"),
        ("identity_name\nid_0000\nid_0001\nid_0002\n", "no attribute columns"),
        ("identity_name,sex\nid_0000,F\nid_0001,M\nid_0002,F\nfoo,M\n", "unknown identity 'foo' on line 5"),
        ("identity_name,sex\nid_0000,F\nid_0001,M\nid_0001,F\nid_0002,F\n", "duplicate identity 'id_0001'"),
        ("identity_name,sex\nid_0000,F\nid_0002,F\n", "identity 'id_0001' has no row"),
        ("identity_name,sex\nid_0000,F\nid_0001,\nid_0002,F\n", "empty value in column 'sex' on line 3"),
        ("identity_name,sex\nid_0000,F\nid_0001,M,extra\nid_0002,F\n", "not a valid CSV"),
        ('identity_name,sex\nid_0000,"F\nid_0001,M\n', "not a valid CSV"),
        ("", "not a valid CSV"),
        ("identity_name,sex,sex\nid_0000,F,F\n", "duplicate column 'sex'"),
        ("identity_name,split\nid_0000,a\nid_0001,b\nid_0002,c\n", "column 'split' clashes"),
    ],
)
def test_malformed_attributes(tmp_path, make_face_folder, text, problem):
    root = make_face_folder(tmp_path, n_identities=3, n_images=2)
    _write_attrs(root, text)
    _expect_error(root, "attributes.csv", problem)


def test_binary_attributes_file(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_identities=2, n_images=2)
    (root / "attributes.csv").write_bytes(b"\xff\xfe\x00\x81binary\x00")
    _expect_error(root, "attributes.csv", "not a valid CSV")


# --------------------------------------------------------------------------- store


def test_store_round_trip_exact(tmp_path, att_faces_small):
    ds = att_faces_small
    store = save_dataset(ds, tmp_path / "store")
    back = load_dataset(store)
    assert isinstance(back, FaceDataset)
    assert back.name == ds.name and back.version == ds.version
    assert back.images.dtype == np.uint8 and np.array_equal(back.images, ds.images)
    pd.testing.assert_frame_equal(back.manifest, ds.manifest)


def test_store_round_trip_with_attributes_and_split(tmp_path, make_face_folder):
    root = make_face_folder(tmp_path, n_identities=3, n_images=2, attributes={"sex": ["F", "M", "F"]})
    ds = load_image_folder(root, size=8, progress=False)
    ds.manifest["split"] = ["train"] * 2 + ["test"] * 2 + ["public"] * 2
    back = load_dataset(save_dataset(ds, tmp_path / "store"))
    pd.testing.assert_frame_equal(back.manifest, ds.manifest)


def test_failed_write_leaves_old_store_intact(tmp_path, make_face_folder, monkeypatch):
    a = load_image_folder(make_face_folder(tmp_path, n_identities=2, n_images=2, name="a", seed=1), 8, progress=False)
    b = load_image_folder(make_face_folder(tmp_path, n_identities=3, n_images=2, name="b", seed=2), 8, progress=False)
    store = save_dataset(a, tmp_path / "store")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", boom)
    with pytest.raises(OSError, match="disk full"):
        save_dataset(b, store)
    monkeypatch.undo()
    back = load_dataset(store)
    assert back.version == a.version and np.array_equal(back.images, a.images)
    assert not [p for p in store.iterdir() if p.name.endswith(".tmp")]

    save_dataset(b, store)  # a later successful write replaces it and drops a's files
    back = load_dataset(store)
    assert back.version == b.version and len(back) == 6
    assert len(list(store.glob("images-*.npz"))) == 1


def test_tampered_store_is_rejected(tmp_path, att_faces_small):
    store = save_dataset(att_faces_small, tmp_path / "store")
    npz = next(store.glob("images-*.npz"))
    data = bytearray(npz.read_bytes())
    data[-10] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset(store)
    with pytest.raises(DataError, match="not a dataset store"):
        load_dataset(tmp_path / "nothing_here")


def test_store_never_pickles(tmp_path, att_faces_small, monkeypatch):
    seen = []
    real_load = np.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("allow_pickle"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(ingest.np, "load", spy)
    load_dataset(save_dataset(att_faces_small, tmp_path / "store"))
    assert seen == [False]
