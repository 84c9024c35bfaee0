"""Utility of a defended system: verification on the clean test pairs and rank-1
identification, always through template(embed(protect(x))) with flip-averaging."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from components.metrics.embeddings import extract_features
from components.metrics.intervals import IdentityBootstrap, as_lists, intervals
from components.metrics.operating_point import all_pairs_operating_point
from components.metrics.verification import evaluate_pairs, far_key, rank1_hits, verification_10fold

FAR = 1e-3   # the strict operating point of the utility block (metrics.json tar_at_far_1e-3)


@dataclass
class SplitTemplates:
    """Templates of one split: `templates[i]` belongs to manifest index `rows[i]`."""

    rows: np.ndarray
    templates: np.ndarray
    probe_templates: np.ndarray | None = None   # probe-side templates where they differ

    def local(self, pairs: pd.DataFrame) -> pd.DataFrame:
        """`pairs` with a, b re-indexed into `templates`."""
        pos = pd.Series(np.arange(len(self.rows)), index=self.rows)
        missing = ~pairs["a"].isin(pos.index) | ~pairs["b"].isin(pos.index)
        if missing.any():
            raise ValueError(f"{int(missing.sum())} pair(s) refer to images outside the split")
        return pairs.assign(a=pos[pairs["a"]].to_numpy(), b=pos[pairs["b"]].to_numpy())


def split_templates(fn, images: np.ndarray, manifest: pd.DataFrame, split: str,
                    device: torch.device | str = "cpu", batch_size: int = 256) -> SplitTemplates:
    rows = manifest.loc[manifest["split"] == split, "index"].to_numpy()
    if len(rows) == 0:
        raise ValueError(f"split {split!r} has no images")
    feats = extract_features(fn, images[rows], batch_size=batch_size, flip=True, device=device)
    return SplitTemplates(rows=rows, templates=feats)


def _rank1_split(st: SplitTemplates, manifest: pd.DataFrame,
                 probes: SplitTemplates | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(hit per probe, identity per probe) of rank-1 identification: the first image of each
    identity is its gallery entry (from the stored templates `st`); the others are probes
    (from `probes` when given)."""
    identity = manifest.set_index("index").loc[st.rows, "identity"].to_numpy()
    first = np.zeros(len(identity), dtype=bool)
    first[np.unique(identity, return_index=True)[1]] = True
    p = st if probes is None else probes
    hits = rank1_hits(st.templates[first], identity[first], p.templates[~first], identity[~first])
    return hits, identity[~first]


def rank1_of_split(st: SplitTemplates, manifest: pd.DataFrame, probes: SplitTemplates | None = None) -> float:
    """Rank-1 identification rate (`_rank1_split`)."""
    return float(_rank1_split(st, manifest, probes)[0].mean())


def evaluate_system(fn, images: np.ndarray, manifest: pd.DataFrame, pairs: pd.DataFrame,
                    device: torch.device | str = "cpu", probe_fn=None,
                    bootstrap: IdentityBootstrap | None = None) -> tuple[dict, SplitTemplates]:
    """The utility block of metrics.json for a system (`fn` maps a [-1, 1] image batch to
    stored templates), and the test templates it was computed from: accuracy, its std and
    EER from the 10-fold pairs, TAR@FAR from every pair of the test identities (with
    `impostor_pairs`, how many impostor scores stand behind it), rank-1. With `probe_fn` (a
    system whose probes differ from its stored templates), pair (a, b) scores
    cos(stored(a), probe(b)) and rank-1 matches probes against stored gallery templates.
    With `bootstrap` (components.metrics.intervals), `ci95` holds the 95% intervals of
    accuracy, TAR@FAR and rank-1, `replicates` their bootstrap replicates (lists, for the
    scores derived from them) and `bootstrap` the fingerprint of the weight table."""
    st = split_templates(fn, images, manifest, "test", device=device)
    pt = None if probe_fn is None else split_templates(probe_fn, images, manifest, "test", device=device)
    local = st.local(pairs)
    utility = evaluate_pairs(st.templates, local, probe_templates=None if pt is None else pt.templates)
    # TAR at FAR 1e-3 over every pair of the test identities, not the ~1,500 impostors of the folds
    identities = manifest.set_index("index").loc[st.rows, "identity"].to_numpy()
    every = all_pairs_operating_point(st.templates, identities, None if pt is None else pt.templates, max_rate=FAR)
    utility[far_key(FAR)] = every.tar(FAR)
    utility["impostor_pairs"] = every.n_impostor
    hits, probe_ids = _rank1_split(st, manifest, pt)
    utility["rank1"] = float(hits.mean())
    if pt is not None:
        st.probe_templates = pt.templates
    if bootstrap is not None:
        a, b = local["a"].to_numpy(), local["b"].to_numpy()
        correct = verification_10fold(pair_scores(st, pairs), local["label"].to_numpy(),
                                      local["fold"].to_numpy())["correct"]
        pw = bootstrap.pair_weights(identities[a], identities[b])
        with np.errstate(invalid="ignore", divide="ignore"):
            accuracy = (pw @ correct.astype(np.float64)) / pw.sum(axis=1)
        reps = {"verification_accuracy": accuracy, far_key(FAR): every.tar_replicates(FAR, bootstrap),
                "rank1": bootstrap.mean(hits, probe_ids)}
        utility["ci95"] = intervals(reps)
        utility["replicates"] = as_lists(reps)
        utility["bootstrap"] = bootstrap.fingerprint
    return utility, st


def scalars(block: dict) -> dict[str, float]:
    """The plain numbers of a block (for MLflow metrics and Dagster metadata): intervals and
    replicates left out."""
    return {k: float(v) for k, v in block.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def pair_scores(st: SplitTemplates, pairs: pd.DataFrame) -> np.ndarray:
    """Cosine similarity of each pair (for ROC plots)."""
    local = st.local(pairs)
    t = st.templates / np.maximum(np.linalg.norm(st.templates, axis=1, keepdims=True), 1e-12)
    p = t if st.probe_templates is None else (
        st.probe_templates / np.maximum(np.linalg.norm(st.probe_templates, axis=1, keepdims=True), 1e-12))
    return np.sum(t[local["a"].to_numpy()] * p[local["b"].to_numpy()], axis=1)


def embedding_spread(st: SplitTemplates) -> float:
    """Mean per-dimension std of the L2-normalised templates: near 0 means a collapsed model."""
    t = st.templates / np.maximum(np.linalg.norm(st.templates, axis=1, keepdims=True), 1e-12)
    return float(t.std(axis=0).mean())
