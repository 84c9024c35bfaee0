"""Deep variational privacy funnel (DVPF, DisPF and GenPF) on frozen FR features, and the
earlier adversarial variant under its own name.

| step | paper (Razeghi et al., arXiv 2404.02696) | here |
|---|---|---|
| input | features of a frozen FR backbone | the baseline's template, L2-normalised, computed once per sweep |
| encoder | stochastic q(z; x), S -> X -> Z | `GaussianEncoder`: MLP mean (optional linear skip path), linear log-variance |
| utility | identity information in z | ArcFace (or CosFace) head over the train identities on sampled z |
| information complexity | KL to the prior | beta KL(q(z; x), N(0, I)) |
| GenPF / DisPF | GenPF adds a generative decoder and prior | MLP decoder p(x; z), squared error weight `w_rec`, prior N(0, I), `generate`; DisPF: none |
| leakage | a variational upper bound on I(S;Z) | `objective: bound` (default): lam (E KL + E[-log p(x; s, z)]), funnel_bound.py |
| release | the representation z | `release`: normalize(mu) (`mean`) or normalize(z), z drawn per call (`sample`) |
| reported leakage | S-classifier accuracy | per attribute, on public identities nothing trained on: a fresh probe (`leakage_bits`) beside the bound (`leakage_bound_bits`, metrics/mixture_information.py) |
| variant | - | `objective: adversarial`: the earlier min-max game (below); a lower bound, no guarantee |

Only the paper's abstract and its authors' evaluation glue were at hand (no equations, no
official code): the bound is derived from the chain (funnel_bound.py), and widths, weights
and the prior are ours. The bound covers the SAMPLED release; with `release: mean` the
stored template is a deterministic function of x, which no bound on I(S;Z) covers, and the
measures say so (`bound_covers_release`).

The adversarial variant (`objective: adversarial`) plays the encoder against classifiers
q(s|z) of the stored template (a Barber-Agakov lower bound on the leakage): `adv_steps`
Adam steps of the adversaries, then one step of encoder, head and decoder on identity +
beta KL [+ w_rec reconstruction] + lam sum_s L_s. Because a plain min-max left skin tone
readable by a fresh probe, it adds (1) cross-fitted adversaries (`adv_folds` identity
folds; an adversary never scores identities it trained on); (2) full-batch refits every
`refit_every` epochs (`refit_steps`), a fresh probe in the loop; (3) `adv_loss:
confusion`, the cross-entropy against the prior p(s) (zero only when q(s|z) = p(s)),
since the literal `leakage` term lets the encoder make the adversary confidently wrong;
(4) `adv_public`: a share of public identities joins the adversaries' data (no identity
loss), and leaves the fresh probe's. Measured history of both objectives: docs/experiments.md.

Templates and measures: the fresh probe is the battery's identity-disjoint attribute
probe (components.attacks.attribute_inference.probe_attribute) cross-fitted on the
released templates of public identities outside the adversaries' share (all of them under
the bound objective: `probe_data` says which); the same on X shows what the funnel removed.
GenPF also reports features decoded from z and generated from the prior (identity rank-1
against real features, their leakage, a real-vs-synthetic two-sample AUC).

Threat model: the server stores templates z; a thief or curious operator of the template
database trains a probe for sex/skin tone on templates of people whose attributes it
knows. Identity must stay verifiable (cos of templates). Not protected: the images and
the baseline features before the encoder. On the synthetic data skin tone is itself an
identity feature (each person's tone lies inside its class's range, and hair and iris
colour follow it), so removing it costs verification: the lam sweep draws that trade-off.
"""

from __future__ import annotations

import logging

import copy
import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from components.attacks.attribute_inference import DEFAULTS as PROBE_DEFAULTS
from components.attacks.attribute_inference import probe_attribute
from components.attacks.measures import batched
from components.config import config_from
from components.defenses.base import DefenseContext, ProtectedSystem, ThreatModel
from components.defenses.funnel_bound import ConditionalDecoder, bound_loss, gaussian_kl
from components.metrics.mixture_information import nats_to_bits, release_information
from components.metrics.embeddings import to_model_tensor
from components.models.fr_model import build_fr_model
from components.models.heads import get_head

logger = logging.getLogger(__name__)

__all__ = ["DVPFConfig", "DVPFDefense", "DVPFSystem", "GaussianEncoder", "fresh_leakage", "DEFENSE"]


@dataclass
class DVPFConfig:
    lam: float = 3.0              # leakage weight lambda (the privacy knob)
    beta: float = 1e-3            # information-complexity weight on KL(q(z|x) || N(0, I))
    mode: Literal["genpf", "dispf"] = "genpf"           # genpf (decoder p(x|z) + prior) | dispf
    objective: Literal["bound", "adversarial"] = "bound"   # the funnel's upper bound | the min-max variant
    release: Literal["mean", "sample"] = "mean"         # the stored template: normalize(mu) | normalize(z), z ~ q
    bound_draws: int = 4          # Monte Carlo draws per sample of the reported leakage bound
    z_dim: int = 0                # 0: the baseline feature dimension D
    hidden: int = 256             # encoder / decoder MLP width
    skip: bool = True             # the encoder's linear skip path (identity at the start) beside its MLP
    head: Literal["arcface", "cosface"] = "arcface"         # identity margin head on z (arcface | cosface)
    s: float = 32.0
    m: float = 0.3
    w_rec: float = 0.1            # GenPF reconstruction weight
    adv_hidden: int = 64          # adversary hidden units
    adv_steps: int = 2            # adversary updates per encoder update
    adv_lr: float = 2e-3
    adv_loss: Literal["confusion", "leakage"] = "confusion"   # confusion | leakage (see module doc)
    adv_folds: int = 2            # identity folds of the cross-fitted adversaries
    refit_every: int = 1          # epochs between adversary refits (0 = never)
    refit_steps: int = 200        # full-batch Adam steps of a refit
    adv_public: float = 0.0       # share of the public identities whose templates the adversaries also fit
    sensitive: list = field(default_factory=list)   # attribute columns the adversaries hide ([] = every column)
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    probe: dict = field(default_factory=lambda: {"max_iter": 150})   # fresh probe (attribute_inference params)

    def validate(self) -> None:
        if self.mode not in ("genpf", "dispf"):
            raise ValueError(f"dvpf: mode must be 'genpf' or 'dispf', got {self.mode!r}")
        if self.objective not in ("bound", "adversarial"):
            raise ValueError(f"dvpf: objective must be 'bound' or 'adversarial', got {self.objective!r}")
        if self.release not in ("mean", "sample"):
            raise ValueError(f"dvpf: release must be 'mean' or 'sample', got {self.release!r}")
        if self.bound_draws < 1:
            raise ValueError(f"dvpf: bound_draws must be >= 1, got {self.bound_draws}")
        if self.lam < 0 or self.beta < 0:
            raise ValueError(f"dvpf: lam and beta must be >= 0, got lam={self.lam}, beta={self.beta}")
        if self.adv_loss not in ("confusion", "leakage"):
            raise ValueError(f"dvpf: adv_loss must be 'confusion' or 'leakage', got {self.adv_loss!r}")
        if not 0.0 <= float(self.adv_public) <= 1.0:
            raise ValueError(f"dvpf: adv_public is a share of the public identities in [0, 1], got {self.adv_public}")
        if isinstance(self.sensitive, str) or not all(isinstance(c, str) for c in self.sensitive):
            raise ValueError(f"dvpf: sensitive is a list of attribute column names, got {self.sensitive!r}")
        if self.adv_folds < 2:
            raise ValueError(f"dvpf: adv_folds must be >= 2 (cross-fitted adversary), got {self.adv_folds}")
        unknown = sorted(set(self.probe) - set(PROBE_DEFAULTS))
        if unknown:
            raise ValueError(f"dvpf: unknown probe parameter(s) {unknown}; known: {sorted(PROBE_DEFAULTS)}")


class GaussianEncoder(nn.Module):
    """q(z|x): normalised feature x (N, D) -> (mu, logvar), each (N, z_dim). The mean is an
    MLP (hidden = 0: none) plus, with `skip`, a linear skip path initialised to the identity
    (a semi-orthogonal map when z_dim != D), so that training starts from the baseline
    template and changes only what the losses ask for. Without the skip path nothing of x
    reaches z unless the MLP carries it: an attribute must be removed, not cancelled."""

    def __init__(self, dim: int, z_dim: int, hidden: int, skip: bool = True):
        super().__init__()
        if not skip and hidden == 0:
            raise ValueError("dvpf: an encoder with neither a skip path nor an MLP (skip false, hidden 0)")
        self.dim = dim
        self.skip = None
        if skip:
            self.skip = nn.Linear(dim, z_dim, bias=False)
            with torch.no_grad():
                if z_dim == dim:
                    self.skip.weight.copy_(torch.eye(dim))
                else:
                    nn.init.orthogonal_(self.skip.weight)
        self.body = (None if hidden == 0 else
                     nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                   nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                   nn.Linear(hidden, z_dim)))
        self.logvar = nn.Linear(dim if hidden == 0 else hidden, z_dim)
        self.scale = math.sqrt(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.normalize(x, dim=1) * self.scale
        if self.body is None:
            return self.skip(x), self.logvar(x).clamp(-10.0, 10.0)
        h = self.body[:-1](x)
        mu = self.body[-1](h)
        return (mu if self.skip is None else self.skip(x) + mu), self.logvar(h).clamp(-10.0, 10.0)


def _mlp(din: int, hidden: int, dout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(din, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, dout))


class Adversary(nn.Module):
    """q(s|z) for one attribute: standardised template -> K logits."""

    def __init__(self, z_dim: int, hidden: int, classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.BatchNorm1d(z_dim, affine=False), nn.Linear(z_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, classes))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(t)


class DVPFSystem(ProtectedSystem):
    defense = "dvpf"

    def __init__(self, backbone: nn.Module, encoder: GaussianEncoder, head: nn.Module, decoder: nn.Module | None,
                 fr_spec: dict, cfg: DVPFConfig, measures: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.encoder = encoder
        self.head = head            # identity head over z: white-box attacks query its cosines
        self.decoder = decoder      # GenPF only
        self.fr_spec = fr_spec
        self.cfg = cfg
        self._measures = dict(measures or {})

    def embed(self, representation):
        """The released z: the posterior mean mu(x) (`release: mean`) or one draw of
        q(z|x) per call (`release: sample`, the release the leakage bound covers)."""
        mu, logvar = self.encoder(self.backbone(representation))
        if self.cfg.release == "sample":
            return mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return mu

    def generate(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """GenPF: n synthetic (normalised-feature-space) samples decoder(z), z ~ N(0, I)."""
        if self.decoder is None:
            raise NotImplementedError("dvpf mode 'dispf' has no decoder: nothing to generate")
        p = next(self.decoder.parameters())
        z = torch.randn(n, self.cfg.z_dim, generator=generator).to(p.device)
        with torch.no_grad():
            return self.decoder(z)

    def operating_point(self) -> dict:
        return {"lam": float(self.cfg.lam), "beta": float(self.cfg.beta), "mode": self.cfg.mode,
                "objective": self.cfg.objective, "release": self.cfg.release}

    def config(self) -> dict:
        return {"fr_spec": self.fr_spec, "dvpf": asdict(self.cfg),
                "dim": int(self.encoder.dim),
                "num_classes": int(self.head.num_classes), "measures": self._measures}


# --------------------------------------------------------------------------- leakage


def fresh_leakage(features: np.ndarray, attributes: pd.DataFrame, groups: np.ndarray, probe: dict | None = None,
                  seed: int = 0) -> dict:
    """{attribute: {balanced_accuracy, chance, leakage_bits}} of a freshly trained,
    identity-disjoint cross-fitted probe (the battery's attribute probe) on `features`.
    Attributes with one value, or a value held by fewer than two identities, are skipped."""
    out = {}
    for col in attributes.columns:
        labels = attributes[col].astype(str).to_numpy()
        per_id = pd.Series(labels).groupby(np.asarray(groups)).first().value_counts()
        if len(per_id) < 2 or per_id.min() < 2:
            continue
        out[col], _ = probe_attribute(np.asarray(features, dtype=np.float64), labels, np.asarray(groups),
                                      dict(probe or {}), seed=seed)
    return out


def _entropy(y: np.ndarray, k: int) -> float:
    f = np.bincount(y, minlength=k) / len(y)
    f = f[f > 0]
    return float(-(f * np.log(f)).sum())


# --------------------------------------------------------------------------- training


@dataclass
class _Data:
    """What every point of a sweep shares: normalised baseline features and labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    s_train: dict           # attribute -> (int labels tensor, classes, H(S) in nats, p(S) tensor)
    x_probe: np.ndarray     # features of the probe set (public, or train without public attributes)
    probe_attrs: pd.DataFrame | None
    probe_groups: np.ndarray
    probe_data: str
    leakage_x: dict
    x_extra: torch.Tensor | None = None   # public features that join the adversarial term
    s_extra: dict | None = None
    g_extra: torch.Tensor | None = None


def _features(backbone: nn.Module, images: np.ndarray, device) -> torch.Tensor:
    return batched(lambda b: F.normalize(backbone(b), dim=1), to_model_tensor(images), 256, device)


def _prepare(ctx: DefenseContext, cfg: DVPFConfig, backbone: nn.Module, device) -> _Data:
    x_train = _features(backbone, ctx.train_images, device)
    y_train = torch.as_tensor(np.asarray(ctx.train_labels), dtype=torch.long)
    s_train = {}
    if ctx.train_attributes is not None:
        missing = sorted(set(cfg.sensitive) - set(ctx.train_attributes.columns))
        if missing:
            raise ValueError(f"dvpf: sensitive attribute(s) {missing} are not attribute columns of the data "
                             f"({sorted(ctx.train_attributes.columns)}); set dvpf.sensitive in params.yaml")
        for col in ctx.train_attributes.columns:
            if cfg.sensitive and col not in cfg.sensitive:
                continue
            classes, y = np.unique(ctx.train_attributes[col].astype(str).to_numpy(), return_inverse=True)
            if len(classes) >= 2:
                s_train[col] = (torch.as_tensor(y, dtype=torch.long), [str(c) for c in classes],
                                _entropy(y, len(classes)),
                                torch.as_tensor(np.bincount(y, minlength=len(classes)) / len(y), dtype=torch.float32))
    x_extra = s_extra = g_extra = None
    if ctx.public_attributes is not None:
        x_public = _features(backbone, ctx.public_images, device).numpy()
        groups_public = np.asarray(ctx.public_labels)
        share = float(cfg.adv_public) if s_train and cfg.objective == "adversarial" else 0.0   # bound: no adversary
        to_adversary = _adversary_share(groups_public, share, ctx.seed)
        probe_rows = ~to_adversary if (~to_adversary).any() else to_adversary
        x_probe, attrs = x_public[probe_rows], ctx.public_attributes[probe_rows].reset_index(drop=True)
        groups = groups_public[probe_rows]
        where = ("public identities (unseen)" if not to_adversary.any() else
                 f"public identities outside the adversaries' share ({len(np.unique(groups))} identities)"
                 if (~to_adversary).any() else "public identities (all of them also fitted by the adversaries)")
        for col, (_, classes, *_rest) in s_train.items():   # an attribute value unseen in train: no target
            to_adversary &= np.isin(ctx.public_attributes[col].astype(str).to_numpy(), classes)
        if to_adversary.any():
            x_extra = torch.as_tensor(x_public[to_adversary], dtype=torch.float32)
            g_extra = torch.as_tensor(groups_public[to_adversary], dtype=torch.long)
            s_extra = {col: torch.as_tensor(np.searchsorted(classes, ctx.public_attributes[col].astype(str)
                                                            .to_numpy()[to_adversary]), dtype=torch.long)
                       for col, (_, classes, *_rest) in s_train.items()}
    elif ctx.train_attributes is not None:
        x_probe, attrs, groups = x_train.numpy(), ctx.train_attributes, np.asarray(ctx.train_labels)
        where = "train identities (seen by the encoder)"
    else:
        x_probe, attrs, groups, where = np.zeros((0, x_train.shape[1])), None, np.zeros(0), "none (no attributes)"
    leakage_x = fresh_leakage(x_probe, attrs, groups, cfg.probe, ctx.seed) if attrs is not None else {}
    return _Data(x_train, y_train, s_train, x_probe, attrs, groups, where, leakage_x, x_extra, s_extra, g_extra)


def _adversary_share(groups: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Rows of the public identities (a seeded `share` of them) whose templates the
    adversaries fit beside the train identities' (True) and those kept for the fresh probe."""
    ids = np.unique(groups)
    chosen = np.random.default_rng(seed + 11).permutation(ids)[:int(round(share * len(ids)))]
    return np.isin(groups, chosen)


def _identity_folds(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """Fold (0..folds-1) of each row: identities dealt to folds in a seeded random order."""
    ids = torch.unique(labels)
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed + 7))
    fold_of = torch.empty(int(ids.max()) + 1, dtype=torch.long)
    fold_of[ids[order]] = torch.arange(len(ids)) % folds
    return fold_of[labels]


def _refit(adversaries: dict[str, nn.ModuleList], t: torch.Tensor, s_all: dict, fold: torch.Tensor, steps: int,
           lr: float) -> None:
    """Re-initialise every adversary and fit it full-batch on the identities outside its
    fold. All of them step together: their parameters are disjoint and Adam is elementwise,
    so one optimizer on the summed losses makes the same updates as one per adversary, with
    one backward pass and one step per iteration instead of one per adversary."""
    fits = []
    for a, advs in adversaries.items():
        for f, adv in enumerate(advs):
            for m in adv.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.reset_running_stats()
            adv.train()
            keep = fold != f
            fits.append((adv, t[keep], s_all[a][keep]))
    if not fits:
        return
    opt = torch.optim.Adam([p for adv, *_ in fits for p in adv.parameters()], lr=lr)
    for _ in range(steps):
        loss = sum(F.cross_entropy(adv(x), y) for adv, x, y in fits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _train(data: _Data, cfg: DVPFConfig, num_classes: int, seed: int, device, progress: bool = False):
    """Encoder, head, decoder (GenPF) and adversaries, trained with alternating updates."""
    torch.manual_seed(seed)
    dim = data.x_train.shape[1]
    encoder = GaussianEncoder(dim, cfg.z_dim, cfg.hidden, cfg.skip).to(device)
    head = get_head(cfg.head, cfg.z_dim, num_classes, s=cfg.s, m=cfg.m).to(device)
    decoder = _mlp(cfg.z_dim, cfg.hidden, dim).to(device) if cfg.mode == "genpf" else None
    adversarial = cfg.objective == "adversarial"
    adversaries = {a: nn.ModuleList([Adversary(cfg.z_dim, cfg.adv_hidden, len(c)) for _ in range(cfg.adv_folds)])
                   for a, (_, c, *_) in data.s_train.items()} if adversarial else {}   # attribute names may hold dots
    adv_all = nn.ModuleList(adversaries.values()).to(device)
    conditional = (ConditionalDecoder(cfg.z_dim, [len(c) for _, c, *_ in data.s_train.values()], cfg.hidden, dim)
                   .to(device) if not adversarial and data.s_train else None)      # p(x|s,z) of the bound
    main = [*encoder.parameters(), *head.parameters(), *(decoder.parameters() if decoder is not None else []),
            *(conditional.parameters() if conditional is not None else [])]
    opt = torch.optim.Adam(main, lr=cfg.lr, weight_decay=cfg.weight_decay)
    adv_opt = torch.optim.Adam(adv_all.parameters(), lr=cfg.adv_lr) if len(adversaries) else None
    n = data.x_train.shape[0]
    bs = max(2, min(cfg.batch_size, n))
    steps = n // bs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * steps))
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = data.x_train.to(device), data.y_train.to(device)
    s_all = {a: v[0].to(device) for a, v in data.s_train.items()}
    groups = data.y_train
    n_extra = 0
    if data.x_extra is not None:
        n_extra = data.x_extra.shape[0]
        x_all = torch.cat([x_all, data.x_extra.to(device)])
        s_all = {a: torch.cat([s_all[a], data.s_extra[a].to(device)]) for a in s_all}
        groups = torch.cat([data.y_train, data.g_extra + int(data.y_train.max()) + 1])
    bs_extra = round(bs * n_extra / n)
    fold_all = _identity_folds(groups, cfg.adv_folds, seed).to(device)
    history = []
    for epoch in range(cfg.epochs):
        if adv_opt is not None and cfg.refit_every and epoch % cfg.refit_every == 0:
            fold_all = _identity_folds(groups, cfg.adv_folds, seed + epoch).to(device)
            with torch.no_grad():
                encoder.eval()
                t_all = F.normalize(encoder(x_all)[0], dim=1)
            _refit(adversaries, t_all, s_all, fold_all, cfg.refit_steps, cfg.adv_lr)
            adv_opt = torch.optim.Adam(adv_all.parameters(), lr=cfg.adv_lr)
        encoder.train(), head.train(), adv_all.train()
        for m in (decoder, conditional):
            if m is not None:
                m.train()
        perm = torch.randperm(n, generator=gen)
        sums = {"identity": 0.0, "kl": 0.0, "rec": 0.0, "leak": 0.0}
        for i in range(steps):
            idx = perm[i * bs:(i + 1) * bs].to(device)
            nb = len(idx)
            if bs_extra:
                idx = torch.cat([idx, (n + torch.randint(n_extra, (bs_extra,), generator=gen)).to(device)])
            x, y = x_all[idx], y_all[idx[:nb]]
            mu_all, logvar_all = encoder(x)   # rows past nb: public identities, for the adversarial term only
            mu, logvar = (mu_all, logvar_all) if not bs_extra else (mu_all[:nb], logvar_all[:nb])
            z = mu + torch.randn(mu.shape, generator=gen).to(device) * (0.5 * logvar).exp()
            t = F.normalize(mu_all, dim=1)                      # the stored template
            fold = fold_all[idx]
            if adv_opt is not None:
                for _ in range(cfg.adv_steps):
                    ce = sum(F.cross_entropy(adv(t.detach()[fold != f]), s_all[a][idx][fold != f])
                             for a in adversaries for f, adv in enumerate(adversaries[a]))
                    adv_opt.zero_grad(set_to_none=True)
                    ce.backward()
                    adv_opt.step()
            identity = F.cross_entropy(head(z, y), y)
            kl = gaussian_kl(mu, logvar)
            loss = identity + cfg.beta * kl
            if decoder is not None:
                rec = (decoder(z) - (x if not bs_extra else x[:nb])).pow(2).sum(dim=1).mean()
                loss = loss + cfg.w_rec * rec
                sums["rec"] += float(rec.detach())
            leak = torch.zeros((), device=device)
            if conditional is not None:   # the funnel's bound: I(S;Z) + H(X|S) <= E KL + E[-log p(x|s,z)]
                leak = bound_loss(kl, conditional, z, [s_all[a][idx[:nb]] for a in data.s_train],
                                  x[:nb] * encoder.scale)
            for a in adversaries:   # each image scored by the adversary that never trained on its identity
                held_out = torch.stack([adv(t) for adv in adversaries[a]])[fold, torch.arange(len(idx), device=device)]
                if cfg.adv_loss == "confusion":
                    prior = data.s_train[a][3].to(device)
                    leak = leak + (-(prior * F.log_softmax(held_out, dim=1)).sum(dim=1).mean() - data.s_train[a][2])
                else:
                    leak = leak + F.relu(data.s_train[a][2] - F.cross_entropy(held_out, s_all[a][idx]))
            loss = loss + cfg.lam * leak
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums["identity"] += float(identity.detach())
            sums["kl"] += float(kl.detach())
            sums["leak"] += float(leak.detach())
        history.append({k: v / max(1, steps) for k, v in sums.items()})
        if progress:
            logger.info("[dvpf lam=%s] epoch %d/%d %s", cfg.lam, epoch + 1, cfg.epochs,
                        " ".join(f"{k} {v:.4f}" for k, v in history[-1].items()))
    for m in (encoder, head, adv_all, decoder):
        if m is not None:
            m.eval()
    return encoder, head, decoder, adversaries, history


# --------------------------------------------------------------------------- measures


def _rank1_loo(probes: np.ndarray, gallery: np.ndarray, ids: np.ndarray) -> float:
    """Leave-one-out rank-1: probe i against the gallery without entry i (cosine)."""
    p = probes / np.maximum(np.linalg.norm(probes, axis=1, keepdims=True), 1e-12)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    sim = p @ g.T
    np.fill_diagonal(sim, -np.inf)
    return float(np.mean(ids[sim.argmax(axis=1)] == ids))


def _two_sample_auc(real: np.ndarray, fake: np.ndarray, seed: int) -> float:
    """Cross-validated AUC of a logistic regression telling real from generated features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    x = np.concatenate([real, fake])
    y = np.r_[np.ones(len(real)), np.zeros(len(fake))]
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    return float(cross_val_score(LogisticRegression(max_iter=1000), x, y, cv=cv, scoring="roc_auc").mean())


def _measures(system: DVPFSystem, data: _Data, adversaries: dict[str, nn.ModuleList], history: list, cfg: DVPFConfig,
              seed: int, device) -> dict:
    x_probe = torch.as_tensor(data.x_probe, dtype=torch.float32)
    out: dict = {"probe_data": data.probe_data, "leakage_baseline_features": data.leakage_x,
                 "final_identity_loss": history[-1]["identity"] if history else float("nan"),
                 "final_kl": history[-1]["kl"] if history else float("nan")}
    if cfg.objective == "bound":
        out["adversary"] = "none: the bound objective plays no adversary"
    elif not len(adversaries):
        out["adversary"] = "none: no attribute columns in the train split"
    if data.probe_attrs is None or len(x_probe) == 0:
        return out
    with torch.no_grad():
        mu, logvar = system.encoder(x_probe.to(device))
        released = mu
        if cfg.release == "sample":
            released = mu + torch.randn(mu.shape, generator=torch.Generator().manual_seed(seed + 2)).to(device) \
                * (0.5 * logvar).exp()
        t = F.normalize(released, dim=1)
        out["leakage"] = fresh_leakage(t.cpu().numpy(), data.probe_attrs, data.probe_groups, cfg.probe, seed)
        out["release"] = cfg.release
        for col, m in out["leakage"].items():   # the bound covers the sampled release (and its normalisation)
            info = release_information(mu.cpu().numpy(), logvar.cpu().numpy(),
                                       data.probe_attrs[col].astype(str).to_numpy(), cfg.bound_draws, seed)
            m.update({"leakage_bound_bits": nats_to_bits(info["plugin_nats"]),
                      "variational_bound_bits": nats_to_bits(info["variational_nats"]),
                      "entropy_bits": nats_to_bits(info["entropy_s_nats"]),
                      "bound_covers_release": cfg.release == "sample"})
        adv_bits = {}
        for a, adv in adversaries.items():
            if a not in data.probe_attrs.columns:
                continue
            classes = data.s_train[a][1]
            labels = data.probe_attrs[a].astype(str).to_numpy()
            known = np.isin(labels, classes)
            y = np.searchsorted(classes, labels[known])
            tk = t[torch.as_tensor(known, device=device)]
            proba = torch.stack([F.softmax(fold_adv(tk), dim=1) for fold_adv in adv]).mean(dim=0)
            ce = float(F.nll_loss(proba.clamp_min(1e-6).log(), torch.as_tensor(y, device=device)))
            adv_bits[a] = max(0.0, _entropy(y, len(classes)) - ce) / math.log(2.0)
        out["adversary_leakage_bits"] = adv_bits
        if system.decoder is not None:
            gen = torch.Generator().manual_seed(seed)
            z = mu + torch.randn(mu.shape, generator=gen).to(device) * (0.5 * logvar).exp()
            decoded = system.decoder(z).cpu().numpy()
            prior = system.generate(len(x_probe), torch.Generator().manual_seed(seed + 1)).cpu().numpy()
            ids = np.asarray(data.probe_groups)
            out["generated"] = {
                "rank1_vs_real": _rank1_loo(decoded, data.x_probe, ids),
                "rank1_real": _rank1_loo(data.x_probe, data.x_probe, ids),
                "reconstruction_cosine": float(F.cosine_similarity(torch.as_tensor(decoded), x_probe, dim=1).mean()),
                "leakage": fresh_leakage(decoded, data.probe_attrs, data.probe_groups, cfg.probe, seed),
                "prior_real_vs_synthetic_auc": _two_sample_auc(data.x_probe, prior, seed),
            }
    return out


class DVPFDefense:
    config_class = DVPFConfig   # its params block (params.yaml's schema reads it)
    name = "dvpf"
    privacy_knob = "lam"


    def threat_model(self, params: dict) -> ThreatModel:
        sensitive = tuple(config_from(DVPFConfig, params).sensitive)
        return ThreatModel(("template_attributes",), ("attribute_inference",),
                           "the stored template is z from a stochastic encoder trained to keep identity and drop "
                           + (f"the attribute(s) {', '.join(sensitive)}" if sensitive else "every attribute column")
                           + "; faces, the model and what the client sends are not protected", attributes=sensitive)

    def build(self, ctx: DefenseContext) -> DVPFSystem:
        cfg = config_from(DVPFConfig, ctx.params)
        return self.build_sweep(ctx, [cfg.lam])[0]

    def build_sweep(self, ctx: DefenseContext, values: list) -> list[DVPFSystem]:
        """One system per lambda; the baseline features (and their leakage) computed once."""
        cfg = config_from(DVPFConfig, ctx.params)
        cfg.validate()
        device = torch.device(ctx.device)
        backbone = copy.deepcopy(ctx.baseline.backbone).to(device).eval()
        data = _prepare(ctx, cfg, backbone, device)
        num_classes = int(np.asarray(ctx.train_labels).max()) + 1
        systems = []
        for lam in values:
            point = dataclasses.replace(cfg, lam=float(lam), z_dim=cfg.z_dim or int(data.x_train.shape[1]),
                                        probe=dict(cfg.probe))
            point.validate()
            encoder, head, decoder, adversaries, history = _train(data, point, num_classes, ctx.seed, device,
                                                                 ctx.progress)
            system = DVPFSystem(copy.deepcopy(backbone), encoder, head, decoder, ctx.baseline.spec, point).eval()
            system._measures = _measures(system, data, adversaries, history, point, ctx.seed, device)
            systems.append(system.cpu())
        return systems

    def rebuild(self, config: dict) -> DVPFSystem:
        cfg = DVPFConfig(**config["dvpf"])
        model = build_fr_model(config["fr_spec"])
        dim = int(config["dim"])
        encoder = GaussianEncoder(dim, cfg.z_dim, cfg.hidden, cfg.skip)
        head = get_head(cfg.head, cfg.z_dim, int(config["num_classes"]), s=cfg.s, m=cfg.m)
        decoder = _mlp(cfg.z_dim, cfg.hidden, dim) if cfg.mode == "genpf" else None
        return DVPFSystem(model.backbone.eval(), encoder.eval(), head.eval(),
                          None if decoder is None else decoder.eval(), config["fr_spec"], cfg,
                          config.get("measures", {}))


DEFENSE = DVPFDefense()
