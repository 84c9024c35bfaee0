"""Identity-disjoint splits and LFW-style verification pairs."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pandas as pd

from components.data.errors import DataError

SPLITS = ("train", "val", "test", "public")
HOLDOUT = "holdout"   # photos of train identities that no model trains on (membership queries them)
MIN_IDENTITIES_PER_SPLIT = 2
_ENUMERATE_LIMIT = 200_000  # enumerate all candidate pairs up to this many, else rejection-sample


def _require(manifest: pd.DataFrame, cols) -> None:
    missing = [c for c in cols if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks column(s) {missing}")


def _cross_identity_duplicates(manifest: pd.DataFrame) -> None:
    per_hash = manifest.groupby("content_hash", sort=True)["identity"].nunique()
    bad = per_hash[per_hash > 1]
    if bad.empty:
        return
    h = bad.index[0]
    rows = manifest[manifest["content_hash"] == h].sort_values("index")
    first = rows.iloc[0]
    other = rows[rows["identity"] != first["identity"]].iloc[0]
    name = lambda r: r["identity_name"] if "identity_name" in rows.columns else r["identity"]  # noqa: E731
    raise DataError(
        first["path"],
        f"same image content as {other['path']} (identity {name(first)!r} vs {name(other)!r}); "
        f"duplicates across identities make identity-disjoint splits impossible"
        + (f" ({len(bad)} such duplicated images in all)" if len(bad) > 1 else ""),
    )


def _split_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Largest-remainder rounding of fractions * n (each count within 1 of its exact share)."""
    exact = {k: f * n for k, f in fractions.items()}
    counts = {k: int(math.floor(v)) for k, v in exact.items()}
    left = n - sum(counts.values())
    order = sorted(fractions, key=lambda k: (-(exact[k] - counts[k]), list(fractions).index(k)))
    for k in order[:left]:
        counts[k] += 1
    return counts


def split_sizes(k: int, fractions: dict[str, float]) -> dict[str, int]:
    """Identities per split for k identities; ValueError when a split would get fewer than
    MIN_IDENTITIES_PER_SPLIT (checked before ingestion too: it needs only the folder count)."""
    counts = _split_counts(k, {s: float(f) for s, f in fractions.items()})
    small = {s: c for s, c in counts.items() if c < MIN_IDENTITIES_PER_SPLIT}
    if small:
        detail = ", ".join(f"{s!r} would get {c} (fraction {fractions[s]} of {k})" for s, c in small.items())
        raise ValueError(
            f"each split needs at least {MIN_IDENTITIES_PER_SPLIT} identities: {detail}; "
            f"adjust the fractions or use a dataset with more identities"
        )
    return counts


def assign_splits(manifest: pd.DataFrame, fractions: dict[str, float], seed: int,
                  holdout_per_identity: int = 0) -> pd.DataFrame:
    """Copy of manifest with a `split` column: identities (not images) shuffled with the seed and cut by
    fractions, e.g. {"train": 0.6, "test": 0.2, "public": 0.2} (must sum to 1 within 1e-6, each split gets at
    least 2 identities, else ValueError). Stratify by nothing; deterministic. If two images of different
    identities share a content_hash, raise DataError naming both paths (duplicates across identities make
    disjointness impossible).

    Split names must be among train/val/test/public. The identity shuffle is
    ``np.random.default_rng(seed).permutation(sorted identity ints)``; splits take consecutive
    runs of that permutation in the order of ``fractions``; counts use largest-remainder
    rounding, so each split's identity count is within 1 of ``fraction * K``.

    With ``holdout_per_identity`` = h > 0, h photos of each train identity (seeded; fewer
    where the identity would keep fewer than 2 training photos) get the split "holdout":
    they belong to a train identity, yet no model trains on them, so that membership
    inference can ask about a person with photos the model never saw."""
    _require(manifest, ["identity", "content_hash", "path"])
    if not isinstance(fractions, dict) or not fractions:
        raise ValueError("fractions must be a non-empty dict {split name: fraction}")
    unknown = [k for k in fractions if k not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split name(s) {unknown}; allowed: {list(SPLITS)}")
    for k, f in fractions.items():
        if not isinstance(f, (int, float, np.floating, np.integer)) or isinstance(f, bool) or not math.isfinite(f) or f <= 0:
            raise ValueError(f"fraction for split {k!r} must be a positive number, got {f!r}")
    total = float(sum(fractions.values()))
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1 (within 1e-6), got {total!r}")

    _cross_identity_duplicates(manifest)

    ids = np.sort(manifest["identity"].unique())
    k = len(ids)
    counts = split_sizes(k, fractions)

    perm = np.random.default_rng(seed).permutation(ids)
    split_of: dict[int, str] = {}
    start = 0
    for s in fractions:
        for ident in perm[start : start + counts[s]]:
            split_of[int(ident)] = s
        start += counts[s]
    out = manifest.copy()
    out["split"] = pd.array([split_of[int(i)] for i in out["identity"]], dtype="str")
    if int(holdout_per_identity) < 0:
        raise ValueError(f"holdout_per_identity must be >= 0, got {holdout_per_identity}")
    if holdout_per_identity:
        out = hold_out_photos(out, int(holdout_per_identity), seed)
    return out


def hold_out_photos(manifest: pd.DataFrame, per_identity: int, seed: int) -> pd.DataFrame:
    """Copy of a split manifest with `per_identity` photos of each train identity moved to
    the split "holdout" (an identity keeps at least 2 training photos; the choice is seeded
    and independent of row order)."""
    out = manifest.copy()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x401D]))
    train = out[out["split"] == "train"].sort_values("index")
    held = []
    for _, rows in train.groupby("identity", sort=True):
        k = min(per_identity, len(rows) - 2)
        if k > 0:
            held.extend(rng.choice(rows["index"].to_numpy(), size=k, replace=False).tolist())
        else:
            rng.random()   # keep the stream aligned: an identity without held-out photos draws too
    out.loc[out["index"].isin(held), "split"] = HOLDOUT
    return out


def identity_split(split: pd.Series) -> pd.Series:
    """The split an identity belongs to: held-out photos belong to their train identity."""
    return split.replace({HOLDOUT: "train"})


def split_digest(manifest: pd.DataFrame) -> str:
    """A short digest of which image is in which split: checkpoints and caches keyed by it
    are never reused for another split of the same images."""
    import hashlib

    rows = manifest[["index", "split"]].sort_values("index")
    payload = "\n".join(f"{i},{s}" for i, s in zip(rows["index"].to_numpy(), rows["split"].astype(str)))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- pairs


def _n_genuine(n_imgs: np.ndarray) -> int:
    return int(sum(n * (n - 1) // 2 for n in n_imgs))


def _n_impostor(n_imgs: np.ndarray) -> int:
    t = int(np.sum(n_imgs))
    return int((t * t - int(np.sum(n_imgs.astype(np.int64) ** 2))) // 2)


def _sample_genuine(groups: dict[int, np.ndarray], n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """n distinct (a<b) same-identity pairs, uniform over all such pairs."""
    if n <= 0:
        return []
    sizes = np.array([len(v) for v in groups.values()])
    total = _n_genuine(sizes)
    keys = list(groups)
    if total <= _ENUMERATE_LIMIT:
        cand = [p for k in keys for p in itertools.combinations(groups[k], 2)]
        pick = rng.choice(len(cand), size=n, replace=False)
        return [cand[i] for i in sorted(pick)]
    weights = np.array([len(groups[k]) * (len(groups[k]) - 1) / 2 for k in keys], dtype=float)
    weights /= weights.sum()
    out: set[tuple[int, int]] = set()
    while len(out) < n:
        k = keys[rng.choice(len(keys), p=weights)]
        a, b = rng.choice(groups[k], size=2, replace=False)
        out.add((min(a, b), max(a, b)))
    return sorted(out)


def _sample_impostor(groups: dict[int, np.ndarray], n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """n distinct (a<b) different-identity pairs, uniform over all such pairs."""
    if n <= 0:
        return []
    keys = list(groups)
    sizes = np.array([len(groups[k]) for k in keys])
    total = _n_impostor(sizes)
    if total <= _ENUMERATE_LIMIT:
        cand = [
            (min(a, b), max(a, b))
            for i, j in itertools.combinations(range(len(keys)), 2)
            for a in groups[keys[i]]
            for b in groups[keys[j]]
        ]
        pick = rng.choice(len(cand), size=n, replace=False)
        return [cand[i] for i in sorted(pick)]
    img = np.concatenate([groups[k] for k in keys])
    owner = np.concatenate([np.full(len(groups[k]), k) for k in keys])
    out: set[tuple[int, int]] = set()
    while len(out) < n:
        i, j = rng.choice(len(img), size=2, replace=False)
        if owner[i] == owner[j]:
            continue
        a, b = int(img[i]), int(img[j])
        out.add((min(a, b), max(a, b)))
    return sorted(out)


def make_pairs(
    manifest: pd.DataFrame, split: str = "test", n_folds: int = 10, pairs_per_fold: int = 300, seed: int = 0
) -> pd.DataFrame:
    """LFW-style verification pairs among the images of one split: columns a, b (manifest `index` values),
    label (1 genuine, 0 impostor), fold (0..n_folds-1). Each fold balanced (pairs_per_fold/2 genuine, /2 impostor);
    the identities are partitioned across folds as in LFW (an identity's pairs fall in one fold) when there
    are enough identities, else pairs are spread. No duplicate pairs, no (i, i) pairs. If too few genuine pairs exist,
    reduce pairs_per_fold and warn (warnings.warn), never fail silently with empty folds.

    Details: "enough identities" means at least 2 per fold (needed for impostor pairs inside a
    fold); identities are then shuffled with the seed and dealt greedily to the fold with the
    fewest genuine pairs so far. Otherwise ("spread") all pairs of the split are sampled
    together and dealt round-robin to folds. Pairs are sampled uniformly without replacement,
    stored with a < b; rows are sorted by fold, label (genuine first), a, b. When a fold cannot
    hold pairs_per_fold/2 of each kind, the per-fold count is lowered for *all* folds (so folds
    stay equal and balanced) and a UserWarning is issued; if not even one genuine and one
    impostor pair per fold is possible, ValueError."""
    _require(manifest, ["index", "identity", "split"])
    if isinstance(n_folds, bool) or int(n_folds) != n_folds or n_folds < 1:
        raise ValueError(f"n_folds must be a positive int, got {n_folds!r}")
    if isinstance(pairs_per_fold, bool) or int(pairs_per_fold) != pairs_per_fold or pairs_per_fold < 2 or pairs_per_fold % 2:
        raise ValueError(f"pairs_per_fold must be a positive even int, got {pairs_per_fold!r}")
    n_folds, half = int(n_folds), int(pairs_per_fold) // 2
    sub = manifest[manifest["split"] == split]
    if sub.empty:
        present = sorted(manifest["split"].dropna().astype(str).unique())
        raise ValueError(f"no images in split {split!r} (splits present: {present})")
    if sub["index"].duplicated().any():
        raise ValueError("manifest 'index' values are not unique")
    groups = {
        int(k): np.sort(g["index"].to_numpy(dtype=np.int64))
        for k, g in sub.groupby("identity", sort=True)
    }
    rng = np.random.default_rng(seed)
    ids = np.array(sorted(groups))
    if len(ids) < 2:
        raise ValueError(f"split {split!r} has {len(ids)} identity; impostor pairs need at least 2")

    rows: list[tuple[int, int, int, int]] = []
    if len(ids) >= 2 * n_folds:
        # LFW-style: partition identities across folds, balancing genuine-pair capacity
        order = rng.permutation(ids)
        order = sorted(order, key=lambda k: -len(groups[k]))  # stable: random among equals
        fold_ids: list[list[int]] = [[] for _ in range(n_folds)]
        load = np.zeros(n_folds, dtype=np.int64)
        for k in order:
            # identities first go round so each fold gets >= 2, then to the least loaded
            sizes = np.array([len(f) for f in fold_ids])
            cand = np.flatnonzero(sizes == sizes.min()) if sizes.min() < 2 else np.arange(n_folds)
            f = int(cand[np.argmin(load[cand])])
            fold_ids[f].append(int(k))
            load[f] += len(groups[k]) * (len(groups[k]) - 1) // 2
        fold_groups = [{k: groups[k] for k in sorted(fi)} for fi in fold_ids]
        cap_gen = min(_n_genuine(np.array([len(v) for v in fg.values()])) for fg in fold_groups)
        cap_imp = min(_n_impostor(np.array([len(v) for v in fg.values()])) for fg in fold_groups)
        use = min(half, cap_gen, cap_imp)
        _check_capacity(use, half, n_folds, split, f"{len(ids)} identities partitioned across {n_folds} folds, limited by the smallest fold")
        for f, fg in enumerate(fold_groups):
            rows += [(a, b, 1, f) for a, b in _sample_genuine(fg, use, rng)]
            rows += [(a, b, 0, f) for a, b in _sample_impostor(fg, use, rng)]
    else:
        # too few identities to partition: sample over the whole split, deal round-robin
        sizes = np.array([len(v) for v in groups.values()])
        use = min(half, _n_genuine(sizes) // n_folds, _n_impostor(sizes) // n_folds)
        _check_capacity(use, half, n_folds, split, f"{len(ids)} identities, pairs spread over {n_folds} folds")
        gen = _sample_genuine(groups, use * n_folds, rng)
        imp = _sample_impostor(groups, use * n_folds, rng)
        gen = [gen[i] for i in rng.permutation(len(gen))]
        imp = [imp[i] for i in rng.permutation(len(imp))]
        rows += [(a, b, 1, i % n_folds) for i, (a, b) in enumerate(gen)]
        rows += [(a, b, 0, i % n_folds) for i, (a, b) in enumerate(imp)]

    df = pd.DataFrame(rows, columns=["a", "b", "label", "fold"]).astype("int64")
    df = df.sort_values(["fold", "label", "a", "b"], ascending=[True, False, True, True]).reset_index(drop=True)
    return df


def _check_capacity(use: int, half: int, n_folds: int, split: str, where: str) -> None:
    if use < 1:
        raise ValueError(
            f"split {split!r} cannot give each of {n_folds} folds one genuine and one impostor pair "
            f"({where}); use fewer folds or a larger split"
        )
    if use < half:
        warnings.warn(
            f"split {split!r}: only {use} genuine and {use} impostor pairs available per fold ({where}); "
            f"pairs_per_fold reduced from {2 * half} to {2 * use}",
            UserWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------- checks


def check_disjoint(manifest: pd.DataFrame) -> list[str]:
    """Problems, empty when fine: an identity in two splits, identical image content (content_hash) in two splits."""
    if "split" not in manifest.columns:
        return ["manifest has no 'split' column"]
    problems: list[str] = []
    df = manifest[manifest["split"].notna()]
    if "identity" in df.columns:
        per_id = df.assign(split=identity_split(df["split"])).groupby("identity", sort=True)["split"].unique()
        for ident, splits in per_id.items():
            if len(splits) > 1:
                name = ""
                if "identity_name" in df.columns:
                    name = f" ({df.loc[df['identity'] == ident, 'identity_name'].iloc[0]!r})"
                problems.append(f"identity {ident}{name} is in splits {sorted(map(str, splits))}")
    if "content_hash" in df.columns:
        per_hash = df.groupby("content_hash", sort=True)["split"].unique()
        for h, splits in per_hash.items():
            if len(splits) > 1:
                rows = df[df["content_hash"] == h]
                where = ", ".join(
                    f"{p} ({s})" for p, s in zip(rows.get("path", rows.index.astype(str)), rows["split"])
                )
                problems.append(
                    f"identical image content {str(h)[:12]} is in splits {sorted(map(str, splits))}: {where}"
                )
    if manifest["split"].isna().any():
        problems.append(f"{int(manifest['split'].isna().sum())} rows have no split")
    return problems
