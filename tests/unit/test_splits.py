"""Identity-disjoint splits, LFW-style verification pairs and the disjointness check."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pandas as pd
import pytest

from components.data.errors import DataError
from components.data.schema import validate_manifest
from components.data.splits import assign_splits, check_disjoint, identity_split, make_pairs, split_digest

FRACTIONS = {"train": 0.6, "test": 0.2, "public": 0.2}


def synthetic_manifest(images_per_identity) -> pd.DataFrame:
    """A manifest without images: identity k has images_per_identity[k] rows, unique hashes."""
    rows = []
    for k, n in enumerate(images_per_identity):
        for j in range(n):
            i = len(rows)
            rows.append({
                "index": i, "path": f"id{k}/{j}.png", "identity": k, "identity_name": f"id{k}",
                "content_hash": hashlib.sha256(f"{k}/{j}".encode()).hexdigest(),
            })
    return pd.DataFrame(rows)


@pytest.fixture
def att_manifest(att_faces_small) -> pd.DataFrame:
    return att_faces_small.manifest.copy()


# --------------------------------------------------------------------------- assign_splits


def test_splits_identity_disjoint_and_fractions(att_manifest):
    m = assign_splits(att_manifest, FRACTIONS, seed=0)
    assert len(m) == len(att_manifest) and "split" not in att_manifest.columns  # a copy
    assert (m.groupby("identity")["split"].nunique() == 1).all()
    counts = m.groupby("split")["identity"].nunique()
    for split, frac in FRACTIONS.items():
        assert abs(counts[split] - frac * 40) < 1  # within one identity
    assert check_disjoint(m) == []
    validate_manifest(m)


def test_splits_deterministic_and_seeded(att_manifest):
    a = assign_splits(att_manifest, FRACTIONS, seed=7)
    b = assign_splits(att_manifest, FRACTIONS, seed=7)
    c = assign_splits(att_manifest, FRACTIONS, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not a["split"].equals(c["split"])
    # row order of the input does not matter
    shuffled = assign_splits(att_manifest.sample(frac=1, random_state=0), FRACTIONS, seed=7)
    assert shuffled.sort_values("index")["split"].tolist() == a["split"].tolist()


@pytest.mark.parametrize("n_ids", [7, 10, 13, 101])
def test_fraction_rounding_within_one_identity(n_ids):
    fr = {"train": 0.5, "val": 0.1, "test": 0.2, "public": 0.2}
    if n_ids < 15:  # val would get fewer than 2 identities
        with pytest.raises(ValueError, match="at least 2 identities"):
            assign_splits(synthetic_manifest([2] * n_ids), fr, seed=0)
        return
    m = assign_splits(synthetic_manifest([2] * n_ids), fr, seed=0)
    counts = m.groupby("split")["identity"].nunique()
    assert counts.sum() == n_ids
    for s, f in fr.items():
        assert abs(counts[s] - f * n_ids) < 1


@pytest.mark.parametrize(
    "fractions, match",
    [
        ({"train": 0.6, "test": 0.3}, "sum to 1"),
        ({"train": 0.6, "test": 0.2, "public": 0.2000001}, None),  # within 1e-6: fine
        ({"train": 1.2, "test": -0.2}, "positive"),
        ({"train": 0.5, "holdout": 0.5}, "unknown split"),
        ({}, "non-empty"),
        ({"train": 0.96, "test": 0.02, "public": 0.02}, "at least 2 identities"),
    ],
)
def test_bad_fractions(att_manifest, fractions, match):
    if match is None:
        assign_splits(att_manifest, fractions, seed=0)
        return
    with pytest.raises(ValueError, match=match):
        assign_splits(att_manifest, fractions, seed=0)


def test_cross_identity_duplicate_is_a_data_error(att_manifest):
    m = att_manifest.copy()
    m.loc[m["path"] == "s9/3.pgm", "content_hash"] = m.loc[m["path"] == "s2/5.pgm", "content_hash"].iloc[0]
    with pytest.raises(DataError) as info:
        assign_splits(m, FRACTIONS, seed=0)
    assert "s2/5.pgm" in str(info.value) and "s9/3.pgm" in str(info.value)
    # a duplicate inside one identity is harmless for disjointness
    m = att_manifest.copy()
    m.loc[1, "content_hash"] = m.loc[0, "content_hash"]
    assign_splits(m, FRACTIONS, seed=0)


# --------------------------------------------------------------------------- make_pairs


def _assert_valid_pairs(pairs: pd.DataFrame, manifest: pd.DataFrame, split: str, n_folds: int, per_fold: int):
    assert list(pairs.columns) == ["a", "b", "label", "fold"]
    assert sorted(pairs["fold"].unique()) == list(range(n_folds))
    sizes = pairs.groupby(["fold", "label"]).size()
    assert (sizes == per_fold // 2).all() and len(sizes) == 2 * n_folds  # balanced folds
    assert (pairs["a"] < pairs["b"]).all()  # no (i, i), canonical order
    assert not pairs.duplicated(["a", "b"]).any()
    by_index = manifest.set_index("index")
    assert (by_index.loc[pairs["a"], "split"].to_numpy() == split).all()
    assert (by_index.loc[pairs["b"], "split"].to_numpy() == split).all()
    same = by_index.loc[pairs["a"], "identity"].to_numpy() == by_index.loc[pairs["b"], "identity"].to_numpy()
    assert np.array_equal(same.astype(int), pairs["label"].to_numpy())


def test_pairs_lfw_partition_by_identity():
    m = assign_splits(synthetic_manifest([3, 4, 5, 6, 7] * 40), FRACTIONS, seed=0)  # 40 test identities
    pairs = make_pairs(m, split="test", n_folds=10, pairs_per_fold=40, seed=0)
    _assert_valid_pairs(pairs, m, "test", 10, 40)
    ident = m.set_index("index")["identity"]
    fold_of = pd.concat([
        pd.DataFrame({"identity": ident.loc[pairs[c]].to_numpy(), "fold": pairs["fold"].to_numpy()}) for c in "ab"
    ])
    assert (fold_of.groupby("identity")["fold"].nunique() == 1).all()  # an identity's pairs in one fold
    again = make_pairs(m, split="test", n_folds=10, pairs_per_fold=40, seed=0)
    pd.testing.assert_frame_equal(pairs, again)
    other = make_pairs(m, split="test", n_folds=10, pairs_per_fold=40, seed=1)
    assert not pairs.equals(other)


def test_pairs_spread_on_att_faces_with_warning(att_manifest):
    m = assign_splits(att_manifest, FRACTIONS, seed=0)  # 8 test identities x 10 images
    with pytest.warns(UserWarning, match="reduced from 300 to 72"):
        pairs = make_pairs(m, split="test", n_folds=10, pairs_per_fold=300, seed=0)
    _assert_valid_pairs(pairs, m, "test", 10, 72)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = make_pairs(m, split="public", n_folds=5, pairs_per_fold=20, seed=3)
    _assert_valid_pairs(small, m, "public", 5, 20)


def test_pairs_reduced_in_partition_mode():
    m = assign_splits(synthetic_manifest([2] * 100), FRACTIONS, seed=0)  # 20 test ids, 1 genuine pair each
    with pytest.warns(UserWarning, match="reduced"):
        pairs = make_pairs(m, split="test", n_folds=10, pairs_per_fold=300)
    _assert_valid_pairs(pairs, m, "test", 10, 4)


def test_pairs_impossible_or_invalid_raise():
    m = assign_splits(synthetic_manifest([2] * 10), {"train": 0.6, "test": 0.4}, seed=0)  # 4 test ids
    with pytest.raises(ValueError, match="cannot give each of 10 folds"):
        make_pairs(m, split="test", n_folds=10)
    with pytest.raises(ValueError, match="no images in split 'val'"):
        make_pairs(m, split="val")
    with pytest.raises(ValueError, match="even"):
        make_pairs(m, split="test", n_folds=2, pairs_per_fold=5)
    with pytest.raises(ValueError, match="split"):
        make_pairs(synthetic_manifest([2, 2]), split="test")


# --------------------------------------------------------------------------- check_disjoint


def test_check_disjoint_reports_planted_problems(att_manifest):
    m = assign_splits(att_manifest, FRACTIONS, seed=0)
    assert check_disjoint(m) == []

    leaked = m.copy()
    row = leaked.index[leaked["split"] == "train"][0]
    leaked.loc[row, "split"] = "test"
    problems = check_disjoint(leaked)
    assert len(problems) == 1
    name = leaked.loc[row, "identity_name"]
    assert f"'{name}'" in problems[0] and "['test', 'train']" in problems[0]

    dup = m.copy()
    a = dup.index[dup["split"] == "train"][0]
    b = dup.index[dup["split"] == "public"][0]
    dup.loc[b, "content_hash"] = dup.loc[a, "content_hash"]
    problems = check_disjoint(dup)
    assert len(problems) == 1
    assert "identical image content" in problems[0]
    assert dup.loc[a, "path"] in problems[0] and dup.loc[b, "path"] in problems[0]

    assert check_disjoint(att_manifest) == ["manifest has no 'split' column"]


def test_held_out_photos_belong_to_train_identities_and_are_seeded(att_manifest):
    m = assign_splits(att_manifest, FRACTIONS, seed=0, holdout_per_identity=2)
    held = m[m["split"] == "holdout"]
    assert set(held["identity"]) == set(m.loc[m["split"] == "train", "identity"])
    assert held.groupby("identity").size().eq(2).all()
    assert check_disjoint(m) == [] and validate_manifest(m) is not None
    # the identities' splits are those of a split without held-out photos
    plain = assign_splits(att_manifest, FRACTIONS, seed=0)
    assert identity_split(m["split"]).tolist() == plain["split"].tolist()
    # the choice depends on the seed, not on the row order; checkpoints tell the splits apart
    again = assign_splits(att_manifest.sample(frac=1, random_state=1), FRACTIONS, seed=0, holdout_per_identity=2)
    assert set(again.loc[again["split"] == "holdout", "index"]) == set(held["index"])
    assert split_digest(m) != split_digest(plain) and split_digest(m) == split_digest(again)
    # an identity keeps at least 2 training photos: of 3, one is held out
    small = assign_splits(synthetic_manifest([3] * 20), FRACTIONS, seed=0, holdout_per_identity=2)
    assert small.loc[small["split"] == "holdout"].groupby("identity").size().eq(1).all()
    with pytest.raises(ValueError, match="holdout_per_identity"):
        assign_splits(att_manifest, FRACTIONS, seed=0, holdout_per_identity=-1)
