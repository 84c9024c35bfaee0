"""Retrieval leakage: do the published training images lead back to the private originals?
(FaceMAE, Wang et al. 2022, measure the privacy of a generated training set by face
retrieval; DESIGN.md section 6 facemae, metrics.json block ``retrieval_leakage``.)

A defense that publishes a substitute training set (FaceMAE's reconstructions) exposes it
to anyone who holds a gallery of the real faces. The attacker here holds ALL private
training originals as the gallery and, for each published image, retrieves the original
whose evaluation-model feature is nearest by cosine:

* ``top1``: share of published images whose own original is the nearest of all originals;
* ``top5``: share whose own original is among the 5 nearest;
* ``unmasked_top1``: ``top1`` when what is published is the raw originals themselves, as any
  published copy would be: JPEG re-encoded (quality ``jpeg_quality``, Pillow, 4:2:0 chroma
  subsampling). This is the leakage of publishing the faces without the defense, the
  reference the defense's ``top1`` is read against (near 1: a re-encoded copy is still
  nearest to its source).

Judge: the independent evaluation FR model (flip-averaged, L2-normalised features,
components.metrics.reconstruction.evaluation_features), never the attacked model. Similarities
are computed in row chunks of ``chunk`` so that a large N never builds an N x N matrix.
* ``identity_top1``: share whose nearest original is of the same person (FaceMAE's claim is
  about identities), ``identity_chance`` its rate for a random original (sum n_i^2 / N^2),
  and ``advantage`` the first rescaled by the second (components.metrics.advantage).

The strength also records top-5 of the unmasked copies and chance top-1.

Threat model: the attacker sees the published training images and, worst case, holds the
originals (e.g. a leaked or scraped gallery); it needs no access to the model. Applies only
to systems that publish reconstructed training data (`reconstruct_training`); everything
else is reported as not applicable, never faked.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from components.attacks.base import AttackContext, AttackResult, NotApplicable
from components.attacks.measures import config_from
from components.metrics.advantage import rescaled
from components.metrics.reconstruction import evaluation_features
from components.defenses.base import ProtectedSystem
from components.metrics.embeddings import to_model_tensor


@dataclass
class RetrievalConfig:
    jpeg_quality: int = 75      # re-encoding of the unmasked published copies
    chunk: int = 1024           # rows of the similarity matrix per step
    batch_size: int = 256       # feature extraction batch


def jpeg_copies(images_uint8: np.ndarray, quality: int) -> np.ndarray:
    """Each image JPEG-encoded and decoded again with Pillow (the published raw copy)."""
    out = np.empty_like(images_uint8)
    for i, img in enumerate(images_uint8):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
        out[i] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out


def retrieval_ranks(queries: np.ndarray, gallery: np.ndarray, k: int = 5, chunk: int = 1024) -> np.ndarray:
    """Indices of the k nearest gallery rows by cosine for each query row (rows L2-normalised),
    (N, k), best first; computed chunk by chunk."""
    g = torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32))
    k = min(k, len(g))
    out = []
    for i in range(0, len(queries), chunk):
        q = torch.from_numpy(np.ascontiguousarray(queries[i:i + chunk], dtype=np.float32))
        out.append((q @ g.T).topk(k, dim=1).indices.numpy())
    return np.concatenate(out)


def hit_rates(nearest: np.ndarray) -> tuple[float, float]:
    """(top-1, top-k) share of queries i whose own gallery entry i is retrieved."""
    own = np.arange(len(nearest))[:, None]
    return float(np.mean(nearest[:, 0] == own[:, 0])), float(np.mean((nearest == own).any(axis=1)))


class RetrievalLeakage:
    config_class = RetrievalConfig   # its params block (params.yaml's schema reads it)
    name = "retrieval_leakage"

    def applies_to(self, system: ProtectedSystem) -> str | None:
        if callable(getattr(system, "reconstruct_training", None)):
            return None
        return "the system publishes no reconstructed training data"

    def run(self, ctx: AttackContext) -> AttackResult:
        reason = self.applies_to(ctx.system)
        if reason is not None:
            raise NotApplicable(reason)
        cfg = config_from(RetrievalConfig, ctx.params)
        part = ctx.manifest[ctx.manifest["split"] == "train"].sort_values("index")
        if len(part) < 2:
            raise NotApplicable(f"retrieval needs at least 2 private training images, found {len(part)}")
        originals = ctx.images[part["index"].to_numpy()]
        with torch.no_grad():
            published = ctx.system.reconstruct_training(originals, np.arange(len(originals)))
        f_orig = evaluation_features(ctx.evaluation, to_model_tensor(originals), cfg.batch_size)
        f_pub = evaluation_features(ctx.evaluation, published, cfg.batch_size)
        f_raw = evaluation_features(ctx.evaluation, jpeg_copies(originals, cfg.jpeg_quality), cfg.batch_size)
        nearest = retrieval_ranks(f_pub, f_orig, 5, cfg.chunk)
        top1, top5 = hit_rates(nearest)
        raw_top1, raw_top5 = hit_rates(retrieval_ranks(f_raw, f_orig, 5, cfg.chunk))
        ident = part["identity"].to_numpy()
        identity_hits = ident[nearest[:, 0]] == ident
        identity_top1 = float(np.mean(identity_hits))
        sizes = np.unique(ident, return_counts=True)[1]
        identity_chance = float(np.sum(sizes.astype(np.float64) ** 2) / len(ident) ** 2)   # a random original
        strength = {"originals": int(len(originals)), "judge": "evaluation model",
                    "unmasked_copies": f"JPEG quality {cfg.jpeg_quality} (Pillow)", "similarity": "cosine",
                    "unmasked_top5": raw_top5, "chance_top1": 1.0 / len(originals)}
        measures = {"top1": top1, "top5": top5, "unmasked_top1": raw_top1, "identity_top1": identity_top1,
                    "identity_chance": identity_chance, "advantage": rescaled(identity_top1, identity_chance)}
        replicates = {}
        if ctx.bootstrap is not None:   # one query per private training image, weighted by its identity
            r = ctx.bootstrap.mean(identity_hits, ident)
            replicates = {"identity_top1": r,
                          "advantage": np.clip((r - identity_chance) / (1.0 - identity_chance), 0.0, 1.0)}
        return AttackResult(measures=measures, strength=strength, replicates=replicates)


ATTACK = RetrievalLeakage()

__all__ = ["ATTACK", "RetrievalConfig", "RetrievalLeakage", "hit_rates", "jpeg_copies", "retrieval_ranks"]
