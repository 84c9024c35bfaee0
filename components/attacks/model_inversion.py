"""Model inversion: reconstruct what a training identity looks like from the deployed
classifier alone (DESIGN.md section 7, metrics.json block ``model_inversion``).

The idea (Fredrikson, Jha and Ristenpart, "Model Inversion Attacks that Exploit Confidence
Information and Basic Countermeasures", CCS 2015): a classifier trained on private faces
stores, in its weights, enough about each class to regenerate a representative input.
Starting from noise, gradient ascent on one class's score through the white-box model
yields an image the model assigns to that identity. Unregularised, the ascent finds
adversarial noise that no other model recognises, so modern attacks add image priors:
total variation and L2 norm of the image, random jitter/flip each step, and matching of
the BatchNorm feature statistics stored in the model (DeepInversion, Yin et al., CVPR
2020); generative model inversion (GMI, Zhang et al., CVPR 2020; KEDMI, PLG-MI) instead
searches the latent space of a GAN trained on public faces.

Variant built here (CPU scale, no generator): pixel-space optimisation of one image per
targeted identity, all targets in one batch, Adam on
    CE(s * cos(x_jittered), target)                      (attacked system's training head)
  + tv * TV(x) + l2 * mean(x^2)                          (smoothness and norm priors)
  + bn * sum_l (||mu_l(x) - mu_l||^2 + ||var_l(x) - var_l||^2)   (DeepInversion BN prior)
where cos is ``system.head.cosine(system.embed(system.protect(x)))`` (``system.logits``),
x starts from uniform noise or from the mean public face, the jitter is a random roll of
up to ``jitter`` pixels plus a random horizontal flip each step (one draw per step for
the whole batch), and x is clamped to [-1, 1] after every step. The BN prior hooks every
BatchNorm2d module of the attacked system (running statistics are white-box knowledge;
the batch of all targets is diverse enough for its batch statistics to be compared to
population statistics). With ``restarts`` > 1 several inversions per target are run in
the same batch and, per target, the one the *attacked* model scores highest is kept (the
attacker never sees the judge). A latent-space (generator) variant is not built: a GAN
on the public faces would cost more CPU than the whole attack battery at demo scale.

Adaptive variants (components.attacks.variants; params `variants`):
  * ``eot`` > 1 and ``straight_through``: the loss averaged over that many draws of the
    defense's noise per step (expectation over transformation, Athalye et al. 2018) and
    its clipping differentiated as the identity (``components.defenses.base.clip``),
    started from the public mean face; applies where protect() is random or clips.
  * ``space: representation``: the inversion optimises the protected representation
    itself (through embed and the head, with a prior keeping it near the public
    representations' mean and spread, and the BN prior), and the representation-recovery
    attacker's U-Net (trained on public faces, shared with that attack) decodes it to a
    face for the judge; applies where protect() sends something other than the face. This
    is the representation-space stand-in for a generative prior: the U-Net is a decoder
    learned from public faces.

Threat model: white-box access to the deployed system (protect, embed and the training
classifier head with its weights, including BN statistics); the attacker knows how many
training identities there are and targets them by label. Private images are never read by
the attack; they are used only afterwards, by the judge, to measure success.

Judge: the independent evaluation FR model (other seed and architecture, trained on the
same identities with the same label order). ``top1``/``top5``: share of inversions that
its classifier (``evaluation.head.cosine(evaluation.backbone(x))``) puts the targeted
label first / in the top 5; ``knn_dist``: mean over targets of 1 - cosine, in the judge's
normalised feature space, from the inversion to the nearest private training image of the
targeted identity. Chance top-1 is 1/K for K training identities.

Private faces are never written: the optional grid of inversions (``save_grid``) is off
by default and, when on, holds only the synthesised images.

Shared work. The inversions depend on the classifier surface (`logits`, with the BN
statistics inside it) only; with `ctx.shared` (components.attacks.sharing) they are
computed once for systems whose classifier is the same function (the baseline and
AdvFace) and judged afresh; the reuse is recorded in the strength (`shared_from`).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Literal
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.attacks.base import AttackContext, AttackResult, NotApplicable
from components.attacks.sharing import computed_or_shared
from components.data.views import split_view
from components.defenses.base import ProtectedSystem, clips_input, straight_through
from components.metrics.advantage import rescaled
from components.metrics.embeddings import to_model_tensor

__all__ = ["ATTACK", "DEFAULTS", "ModelInversion", "invert", "judge", "total_variation"]

@dataclass
class ModelInversionConfig:
    targets: str | int = "all"   # "all" or an int: a seeded subset of the training identities
    steps: int = 100   # Adam steps (200 measured no better on the world or the demo)
    lr: float = 0.1
    scale: float = 8.0   # s in CE(s * cos): the logit scale of the inversion loss
    init: Literal["noise", "mean_face"] = "noise"   # noise | mean_face (mean of the public faces)
    restarts: int = 1   # inversions per target; the attacked model picks the best
    tv: float = 0.05   # total-variation weight
    l2: float = 0.01   # L2 weight (mean squared pixel)
    bn: float = 0.01   # DeepInversion BatchNorm-statistics weight (0 = off)
    jitter: int = 2   # max random roll in pixels per step (0 = off)
    flip: bool = True   # random horizontal flip per step
    batch_size: int = 256   # images per optimisation batch (targets * restarts are chunked)
    save_grid: bool = False   # write a PNG grid of the inversions (synthesised images only)
    eot: int = 1   # draws of the defense's randomness averaged per step (expectation over transformation)
    straight_through: bool = False   # differentiate through the defense's clipping as the identity (BPDA)
    space: Literal["image", "representation"] = "image"   # optimise pixels, or the protected representation


DEFAULTS: dict = asdict(ModelInversionConfig())   # the plain dict the attack merges its params over


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean anisotropic total variation (L2 of neighbour differences) per image, averaged."""
    dh = x[:, :, 1:, :] - x[:, :, :-1, :]
    dw = x[:, :, :, 1:] - x[:, :, :, :-1]
    return dh.pow(2).mean() + dw.pow(2).mean()


class _BNStats:
    """The DeepInversion BN prior as a context manager: forward hooks on the BatchNorm2d
    modules (none when `weight` is 0) collect the distance of batch statistics to running
    ones; `add(loss)` adds `weight` times their sum since the last call; the hooks are
    removed on exit, so a final scoring pass is not hooked."""

    def __init__(self, module: nn.Module, weight: float):
        self.weight = float(weight)
        self.losses: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in module.modules()
                        if self.weight > 0 and isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]

    def _hook(self, module, inputs, output):
        x = inputs[0]
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        self.losses.append(torch.norm(mean - module.running_mean, 2) + torch.norm(var - module.running_var, 2))

    def add(self, loss: torch.Tensor) -> torch.Tensor:
        if self.losses:
            loss = loss + self.weight * torch.stack(self.losses).sum()
        self.losses = []
        return loss

    def __enter__(self) -> "_BNStats":
        return self

    def __exit__(self, *exc) -> bool:
        for h in self.handles:
            h.remove()
        return False


def invert(system: ProtectedSystem, labels: torch.Tensor, shape: tuple[int, int, int], *, steps: int = 100,
           lr: float = 0.1, scale: float = 8.0, tv: float = 0.05, l2: float = 0.01, bn: float = 0.01,
           jitter: int = 2, flip: bool = True, init: torch.Tensor | None = None, seed: int = 0,
           eot: int = 1, straight: bool = False,
           device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Invert `system`'s classifier toward `labels`, one image per label, in one batch.

    Returns the images (B, C, H, W) in [-1, 1] (on cpu) and the attacked system's final
    cosine to each label (B,). `init` (B or 1, C, H, W) replaces the uniform-noise start.
    `eot` > 1 averages the loss over that many draws of the system's randomness per step;
    `straight` differentiates through the defense's clipping as the identity.
    Only the input is optimised: gradients flow to x alone (the system's parameters and
    their .grad are left untouched); the system runs in eval mode, restored afterwards.
    """
    gen = torch.Generator().manual_seed(int(seed))
    n = int(labels.shape[0])
    if init is None:
        x0 = torch.rand((n, *shape), generator=gen) * 2 - 1
    else:
        x0 = init.expand(n, *shape).clone()
    x = x0.to(device).requires_grad_(True)
    labels = labels.to(device)
    was_training = system.training
    system.eval()
    opt = torch.optim.Adam([x], lr=lr, betas=(0.5, 0.99))
    eot = max(1, int(eot))
    try:
        with _BNStats(system, bn) as prior:
            for _ in range(int(steps)):
                xi = x
                if jitter > 0:
                    dx, dy = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen))
                    xi = torch.roll(xi, shifts=(dy, dx), dims=(2, 3))
                if flip and bool(torch.rand((), generator=gen) < 0.5):
                    xi = torch.flip(xi, dims=[3])
                with straight_through() if straight else contextlib.nullcontext():
                    cos = system.logits(xi.repeat(eot, 1, 1, 1) if eot > 1 else xi)
                loss = prior.add(F.cross_entropy(scale * cos, labels.repeat(eot) if eot > 1 else labels))
                loss = loss + tv * total_variation(x) + l2 * x.pow(2).mean()
                (grad,) = torch.autograd.grad(loss, [x])
                x.grad = grad
                opt.step()
                with torch.no_grad():
                    x.clamp_(-1.0, 1.0)
        with torch.no_grad():
            final = torch.stack([system.logits(x).gather(1, labels.view(-1, 1)).squeeze(1)
                                 for _ in range(eot)]).mean(0)
    finally:
        system.train(was_training)
    return x.detach().cpu(), final.detach().cpu()


def _eval_features(model, x: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised features, class cosines) of the evaluation model, no flip."""
    dev = next(model.backbone.parameters()).device
    feats, cos = [], []
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch_size):
            f = model.backbone(x[i:i + batch_size].to(dev))
            feats.append(F.normalize(f.float(), dim=1).cpu())
            cos.append(model.head.cosine(f).cpu())
    return torch.cat(feats), torch.cat(cos)


def judge(evaluation, inversions: torch.Tensor, labels: torch.Tensor, private: torch.Tensor,
          private_labels: torch.Tensor) -> dict:
    """top1/top5 of the evaluation classifier on the inversions against `labels`, and the
    mean distance (1 - cosine) from each inversion to its nearest private image of the
    targeted identity, in the evaluation model's normalised feature space."""
    return judge_each(evaluation, inversions, labels, private, private_labels)[0]


def judge_each(evaluation, inversions: torch.Tensor, labels: torch.Tensor, private: torch.Tensor,
               private_labels: torch.Tensor) -> tuple[dict, np.ndarray]:
    """(`judge`'s measures, the top-1 hit of each inversion)."""
    bb_mode, hd_mode = evaluation.backbone.training, evaluation.head.training
    evaluation.backbone.eval()
    evaluation.head.eval()
    try:
        f_inv, cos = _eval_features(evaluation, inversions)
        f_priv, _ = _eval_features(evaluation, private)
    finally:
        evaluation.backbone.train(bb_mode)
        evaluation.head.train(hd_mode)
    labels = labels.long()
    k = min(5, cos.shape[1])
    top = cos.topk(k, dim=1).indices
    top1 = (top[:, 0] == labels).double().mean().item()
    top5 = (top == labels[:, None]).any(dim=1).double().mean().item()
    sim = f_inv @ f_priv.T                                        # (B, N_private)
    same = labels[:, None] == private_labels.long()[None, :]
    if not bool(same.any(dim=1).all()):
        raise ValueError("a targeted label has no private image to compare with")
    nearest = sim.masked_fill(~same, -2.0).max(dim=1).values
    knn = (1.0 - nearest.double()).mean().item()
    return {"top1": float(top1), "top5": float(top5), "knn_dist": float(knn)}, (top[:, 0] == labels).numpy()


def _save_grid(images: torch.Tensor, path: Path, ncol: int = 10) -> Path:
    from PIL import Image

    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    n, h, w, c = x.shape
    ncol = max(1, min(ncol, n))
    rows = (n + ncol - 1) // ncol
    grid = np.zeros((rows * h, ncol * w, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = x[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


def _chunked(fn, labels: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fn(chunk of labels, chunk index) -> (inversions, scores), over chunks of `batch_size`
    labels, concatenated (chunk i seeds its own draws, so results do not depend on timing)."""
    outs, scores = [], []
    for i, j in enumerate(range(0, labels.shape[0], batch_size)):
        out, score = fn(labels[j:j + batch_size], i)
        outs.append(out)
        scores.append(score)
    return torch.cat(outs), torch.cat(scores)


def invert_representation(system: ProtectedSystem, labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, *,
                          steps: int, lr: float, scale: float, l2: float, bn: float, seed: int,
                          device) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert the classifier toward `labels` in the space of protected representations:
    Adam on r (started at the public mean representation plus a little seeded noise) for
    CE(s * head.cosine(embed(r))) + l2 * mean(((r - mean) / std)^2) + bn * BN prior. The
    prior keeps r where public representations lie, so that the recovery network, trained on
    them, decodes it to a face. Returns (r, final cosine to each label), on cpu."""
    gen = torch.Generator().manual_seed(int(seed))
    n = int(labels.shape[0])
    mean, std = mean.to(device), std.to(device)
    r0 = mean.expand(n, *mean.shape[1:]) + 0.1 * std * torch.randn((n, *mean.shape[1:]), generator=gen).to(device)
    r = r0.clone().requires_grad_(True)
    labels = labels.to(device)
    opt = torch.optim.Adam([r], lr=lr, betas=(0.5, 0.99))
    with _BNStats(system, bn) as prior:
        for _ in range(int(steps)):
            loss = prior.add(F.cross_entropy(scale * system.head.cosine(system.embed(r)), labels))
            loss = loss + l2 * ((r - mean) / std).pow(2).mean()
            (grad,) = torch.autograd.grad(loss, [r])
            r.grad = grad
            opt.step()
    with torch.no_grad():
        final = system.head.cosine(system.embed(r)).gather(1, labels.view(-1, 1)).squeeze(1)
    return r.detach().cpu(), final.detach().cpu()


class ModelInversion:
    """White-box inversion of the attacked system's training classifier (see module doc)."""
    config_class = ModelInversionConfig   # its params block (params.yaml's schema reads it)

    name = "model_inversion"
    tie_break = "top5"   # between variants of equal advantage (components.attacks.variants)

    def applies_to(self, system: ProtectedSystem) -> str | None:
        head = getattr(system, "head", None)
        if head is not None and hasattr(head, "cosine"):
            return None
        if type(system).logits is not ProtectedSystem.logits:
            return None     # a custom classifier surface; run() checks it really answers
        return "no classifier head exposed"

    def variant_applies(self, ctx: AttackContext, params: dict) -> str | None:
        """Expectation over the defense's noise and a straight-through clip change the attack
        only where protect() is random or clipped; an inversion in representation space only
        where protect() sends something other than the face (components.attacks.variants)."""
        from components.attacks.measures import frozen
        from components.attacks.sharing import fingerprint_images

        p = {**DEFAULTS, **params}
        batch = fingerprint_images(ctx.images, ctx.manifest, n=8)
        device = torch.device(ctx.device)
        with frozen(ctx.system, device) as system, torch.no_grad(), torch.random.fork_rng(devices=[]):
            first = system.protect(batch.to(device)).cpu()
            if p["space"] == "representation":
                if first.ndim != 4:
                    return f"protect() returns shape {tuple(first.shape[1:])}, not a (C, h, w) map"
                if first.shape == batch.shape and torch.equal(first, batch):
                    return "protect() sends the face itself: the image-space attack is the same"
                return None
            if int(p["eot"]) > 1 or p["straight_through"]:
                random = not torch.equal(first, system.protect(batch.to(device)).cpu())
                if not random and not clips_input(system):
                    return "protect() is deterministic and clips nothing: the plain attack"
        return None

    def run(self, ctx: AttackContext) -> AttackResult:
        p = {**DEFAULTS, **(ctx.params or {})}
        unknown = set(p) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"model_inversion: unknown params {sorted(unknown)}")
        if p["init"] not in ("noise", "mean_face"):
            raise ValueError(f"model_inversion: init must be 'noise' or 'mean_face', got {p['init']!r}")
        device = torch.device(ctx.device)
        system = ctx.system.to(device)
        was_training = system.training
        try:
            return self._run(ctx, system, p, device)
        finally:
            system.train(was_training)

    def _run(self, ctx: AttackContext, system: ProtectedSystem, p: dict, device: torch.device) -> AttackResult:
        train_x, train_y, train_ids = split_view(ctx.images, ctx.manifest, "train")
        num_classes = int(train_y.max()) + 1
        h, w = ctx.images.shape[1:3]
        shape = (3, int(h), int(w))
        try:
            with torch.no_grad():
                probe = system.eval().logits(torch.zeros((1, *shape), device=device))
        except NotImplementedError as exc:
            raise NotApplicable(f"no classifier head exposed ({exc})") from exc
        if probe.shape[-1] != num_classes:
            raise ValueError(f"model_inversion: the system's classifier has {probe.shape[-1]} classes, "
                             f"the train split {num_classes}")

        if p["targets"] in ("all", None):
            targets = np.arange(num_classes)
        else:
            n = int(p["targets"])
            if not 1 <= n <= num_classes:
                raise ValueError(f"model_inversion: targets must be 1..{num_classes} or 'all', got {n}")
            rng = np.random.default_rng(ctx.seed)
            targets = np.sort(rng.choice(num_classes, size=n, replace=False))
        restarts = int(p["restarts"])
        if restarts < 1:
            raise ValueError(f"model_inversion: restarts must be >= 1, got {restarts}")

        init = None
        if p["init"] == "mean_face":
            public_x, _, _ = split_view(ctx.images, ctx.manifest, "public")
            init = to_model_tensor(public_x).mean(dim=0, keepdim=True)

        labels = torch.as_tensor(np.repeat(targets, restarts), dtype=torch.long)
        bs = max(1, int(p["batch_size"]))

        decoder_strength = {}
        if p["space"] == "representation":
            inverted, shared_from, decoder_strength = self._in_representation_space(ctx, system, labels, p, device)
        else:
            def compute() -> dict:
                x, scores = _chunked(lambda chunk, i: invert(
                    system, chunk, shape, steps=int(p["steps"]), lr=float(p["lr"]), scale=float(p["scale"]),
                    tv=float(p["tv"]), l2=float(p["l2"]), bn=float(p["bn"]), jitter=int(p["jitter"]),
                    flip=bool(p["flip"]), init=init, seed=int(ctx.seed) * 1000 + i, eot=int(p["eot"]),
                    straight=bool(p["straight_through"]), device=device), labels, bs)
                return {"inversions": x, "scores": scores}

            # the inversions depend on the classifier surface only (logits, BN statistics inside
            # it): computed once for systems that share it (components.attacks.sharing)
            inverted, shared_from = computed_or_shared(ctx, "model_inversion/inversions",
                                                       {**p, "targets": targets.tolist()}, system.logits, system,
                                                       compute, device)
        inversions, scores = inverted["inversions"], inverted["scores"]
        if restarts > 1:   # the attacker's own choice: best restart by the attacked model
            best = scores.view(-1, restarts).argmax(dim=1)
            inversions = inversions.view(len(targets), restarts, *shape)[torch.arange(len(targets)), best]
        target_labels = torch.as_tensor(targets, dtype=torch.long)

        keep = np.isin(train_y, targets)
        measures, hits = judge_each(ctx.evaluation, inversions, target_labels, to_model_tensor(train_x[keep]),
                                    torch.as_tensor(train_y[keep]))
        measures["chance"] = 1.0 / num_classes   # the judge picks among the training identities
        measures["advantage"] = rescaled(measures["top1"], measures["chance"])
        replicates = {}
        if ctx.bootstrap is not None:   # one outcome per targeted identity
            top1 = ctx.bootstrap.mean(hits, np.unique(train_ids)[targets])
            c = measures["chance"]
            replicates = {"top1": top1, "advantage": np.clip((top1 - c) / (1.0 - c), 0.0, 1.0)}

        artifacts: dict[str, Path] = {}
        if p["save_grid"] and ctx.workdir is not None:
            artifacts["inversions_grid"] = _save_grid(inversions, Path(ctx.workdir) / "model_inversion_grid.png")

        strength = {
            "targets": int(len(targets)),
            "steps": int(p["steps"]),
            "lr": float(p["lr"]),
            "priors": {"tv": float(p["tv"]), "l2": float(p["l2"]), "bn_stats": float(p["bn"]),
                       "jitter": int(p["jitter"]), "flip": bool(p["flip"])},
            "restarts": restarts,
            "init": str(p["init"]),
            "scale": float(p["scale"]),
            "eot": int(p["eot"]),
            "straight_through": bool(p["straight_through"]),
            "space": str(p["space"]),
            **decoder_strength,
        }
        if shared_from is not None:
            strength["shared_from"] = shared_from
        return AttackResult(measures=measures, strength=strength, artifacts=artifacts, replicates=replicates)

    def _in_representation_space(self, ctx: AttackContext, system: ProtectedSystem, labels: torch.Tensor, p: dict,
                                 device) -> tuple[dict, str | None, dict]:
        """Inversions in representation space, decoded to faces by the representation-recovery
        attacker's U-Net (trained on public faces against this system's protect, shared with
        that attack). Returns ({inversions, scores}, shared_from, strength of the decoder)."""
        from components.attacks.measures import batched, config_from, frozen, reconstruction_data
        from components.attacks.representation_recovery import RepresentationRecoveryConfig, recovery_network
        from components.attacks.variants import split_variants

        if getattr(system, "head", None) is None or not hasattr(system.head, "cosine"):
            raise NotApplicable("no classifier head to invert in representation space")
        rr_params, _ = split_variants((ctx.extra.get("attack_params") or {}).get("representation_recovery"))
        rr_cfg = config_from(RepresentationRecoveryConfig, rr_params)
        public_x, _, _ = split_view(ctx.images, ctx.manifest, "public")
        with torch.no_grad():
            reps = batched(system.protect, to_model_tensor(public_x), 64, device)
        mean, std = reps.mean(0, keepdim=True), reps.std(0, keepdim=True).clamp_min(1e-6)
        bs = max(1, int(p["batch_size"]))

        def compute() -> dict:
            r, scores = _chunked(lambda chunk, i: invert_representation(
                system, chunk, mean, std, steps=int(p["steps"]), lr=float(p["lr"]), scale=float(p["scale"]),
                l2=float(p["l2"]), bn=float(p["bn"]), seed=int(ctx.seed) * 1000 + i, device=device), labels, bs)
            return {"representations": r, "scores": scores}

        inverted, shared_from = computed_or_shared(ctx, "model_inversion/representations",
                                                   {**p, "labels": labels.tolist()}, system.logits, system,
                                                   compute, device)
        data = reconstruction_data(ctx, rr_cfg)
        with frozen(system, device) as frozen_system:
            net, _, _, net_shared, _ = recovery_network(ctx, rr_cfg, frozen_system, data, device)
            images = batched(net, inverted["representations"], 64, device)
        strength = {"decoder": f"representation_recovery U-Net (depth {rr_cfg.depth}, width {rr_cfg.width}, "
                               f"{rr_cfg.epochs} epochs on public faces)"}
        if net_shared is not None:
            strength["decoder_shared_from"] = net_shared
        return {"inversions": images, "scores": inverted["scores"]}, shared_from, strength


ATTACK = ModelInversion()
