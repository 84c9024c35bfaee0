"""Attacker work shared between defended systems that expose the same surface.

Why. Several defenses leave a surface of the baseline untouched: AdvFace, DVPF and FaceMAE
send the raw face (protect is the identity), AdvFace keeps the baseline's FR model and
head (its probes and classifier are the baseline's). An attack whose work depends only on
such a surface would train the very same attacker again, with the same seed, and get the
same result bit for bit. Sharing that work is how the demo fits its time budget
(DESIGN.md section 9) without making any attacker weaker.

How. `SharedWork` is a content-addressed store on disk. A key is the SHA-256 of
  * the attack's name and what is shared (e.g. "template_inversion/decoder"),
  * the attack's parameters and the seed, and the attack modules' source code,
  * the data the attacker and the judge see (image bytes, the manifest's index, identity
    and split columns, the verification pairs) and the judge's weights, and
  * a behavioural fingerprint of the surface: the bytes of its outputs on a fixed batch of
    public images in eval mode, under a fixed RNG seed (so a stochastic surface is
    fingerprinted by one fixed draw of its noise).
Two systems whose surface agrees bit for bit on that batch are taken to be the same
function there; for neural networks with different weights the outputs differ, so a
mismatch falls back to training a fresh attacker (never a wrong reuse of a different one,
short of a SHA-256 collision or a surface that agrees on the batch only). A value is
written atomically (components.atomic), so a crash leaves no half-written entry, and read
with weights_only=True (plain data and tensors only).

What shares: representation_recovery's trained U-Net (on the protect surface),
template_inversion's trained decoder (on the probe surface), model_inversion's inversions
(on the classifier surface, logits). The measures are always taken afresh on each
system's own outputs (its intercepted representations, its stored templates). Each result
that reuses work says so in its strength (`shared_from`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from components.atomic import atomic_write, path_lock

__all__ = ["FINGERPRINT_IMAGES", "SharedWork", "attack_code_digest", "computed_or_shared", "context_digest",
           "fingerprint_images", "surface_fingerprint", "trained_or_shared"]

FINGERPRINT_IMAGES = 32   # public images the surface is evaluated on


def _digest_update(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    elif isinstance(obj, np.ndarray) and obj.dtype == object:   # bytes of an object array are pointers
        h.update(json.dumps(obj.tolist(), default=str).encode())
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(str((a.shape, str(a.dtype))).encode())
        h.update(a.tobytes())
    else:
        h.update(json.dumps(obj, sort_keys=True, default=str).encode())


def surface_fingerprint(surface: Callable[[torch.Tensor], torch.Tensor], module: torch.nn.Module,
                        probe_images: torch.Tensor, device) -> str:
    """SHA-256 of `surface(probe_images)` (the module in eval mode, no grad, RNG seeded 0
    inside a forked RNG state so the caller's random stream is untouched)."""
    was_training = module.training
    module.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            out = surface(probe_images.to(device))
    finally:
        module.train(was_training)
    h = hashlib.sha256()
    _digest_update(h, out.float())
    return h.hexdigest()


def context_digest(images: np.ndarray, manifest: pd.DataFrame, pairs: pd.DataFrame, evaluation) -> str:
    """SHA-256 of what every attacker and the judge see: the image store, the manifest's
    index/identity/split, the pairs, and the judge's weights."""
    h = hashlib.sha256()
    _digest_update(h, images)
    _digest_update(h, manifest[["index", "identity", "split"]].astype(str).to_numpy())
    _digest_update(h, pairs[["a", "b", "label"]].to_numpy())
    modules = [getattr(evaluation, "backbone", evaluation), getattr(evaluation, "head", None)]
    for module in (m for m in modules if isinstance(m, torch.nn.Module)):
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            _digest_update(h, tensor)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def attack_code_digest() -> str:
    """SHA-256 of the attack modules' source (components/attacks/*.py): a changed attack or
    measure never meets work stored by its earlier version in a kept workdir."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


class SharedWork:
    """Content-addressed store of attacker work under `root` (one file per key)."""

    def __init__(self, root: str | Path, context: str):
        self.root = Path(root)
        self.context = context          # context_digest of the data and judge
        self.hits: list[str] = []

    def key(self, what: str, params: dict, seed: int, fingerprint: str) -> str:
        h = hashlib.sha256()
        _digest_update(h, {"what": what, "params": params, "seed": int(seed), "code": attack_code_digest(),
                           "context": self.context, "surface": fingerprint})
        return h.hexdigest()

    def _path(self, what: str, key: str) -> Path:
        return self.root / what.replace("/", "__") / f"{key}.pt"

    def get(self, what: str, key: str):
        path = self._path(what, key)
        if not path.exists():
            return None
        with path_lock(path):
            value = torch.load(path, map_location="cpu", weights_only=True)
        self.hits.append(f"{what}:{key[:12]}")
        return value

    def put(self, what: str, key: str, value) -> Path:
        path = self._path(what, key)
        buf = io.BytesIO()
        torch.save(value, buf)
        with path_lock(path):
            atomic_write(path, lambda fh: fh.write(buf.getvalue()))
        return path


def fingerprint_images(images: np.ndarray, manifest: pd.DataFrame, n: int = FINGERPRINT_IMAGES) -> torch.Tensor:
    """The fixed batch a surface is fingerprinted on: the first `n` public images (by index)."""
    from components.metrics.embeddings import to_model_tensor

    rows = manifest.loc[manifest["split"] == "public", "index"].sort_values().to_numpy()[:n]
    return to_model_tensor(images[rows])


def trained_or_shared(ctx, what: str, params: dict, surface: Callable, module: torch.nn.Module,
                      net: torch.nn.Module, train: Callable[[], dict], device) -> tuple[dict, str | None]:
    """Train `net` with `train()` (which returns a dict of plain extras, e.g. the loss
    history), or load the weights and extras of the same attacker trained earlier against a
    system whose `surface` is the same function (see the module docstring). Returns
    (extras, the defense it was trained for when reused, else None)."""
    def fit() -> dict:
        extras = train()
        return {"state": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "extras": extras}

    value, source = computed_or_shared(ctx, what, params, surface, module, fit, device)
    if source is not None:
        net.load_state_dict(value["state"])
        net.eval()
    return value["extras"], source


def computed_or_shared(ctx, what: str, params: dict, surface: Callable, module: torch.nn.Module,
                       compute: Callable[[], dict], device) -> tuple[dict, str | None]:
    """`compute()` (a dict of tensors and plain data), or its value stored by an earlier run
    against a system with the same `surface`. Returns (value, the defense it was computed for
    when reused, else None)."""
    shared = getattr(ctx, "shared", None)
    if shared is None:
        return compute(), None
    fp = surface_fingerprint(surface, module, fingerprint_images(ctx.images, ctx.manifest), device)
    key = shared.key(what, params, ctx.seed, fp)
    hit = shared.get(what, key)
    if hit is not None:
        return hit["value"], hit["defense"]
    value = compute()
    shared.put(what, key, {"value": value, "defense": ctx.defense})
    return value, None
