"""Adaptive hybrid masking (Wang et al., "Adaptive Hybrid Masking Strategy for
Privacy-Preserving Face Recognition Against Model Inversion Attack", arXiv 2403.10558):
PPFR-FD's frequency masking plus frequency-domain MixUp of k faces, k chosen by a
strategy network trained by REINFORCE. Target threat: model inversion of the training
faces; the classifier never sees a single training face, only masked mixtures.

| step      | paper (arXiv 2403.10558)              | here                                              |
|-----------|---------------------------------------|---------------------------------------------------|
| masking   | PPFR-FD: block DCT, channel selection,| the same: ppfrfd's `analyse` (AC-energy prefix    |
|           | fast masking                          | cut) and `ChannelMask`, ppfrfd's defaults, so the |
|           |                                       | two defenses keep the same channels               |
| mixing    | frequency-domain MixUp of k masked    | per sample i: itself and k_i - 1 others of the    |
|           | faces, labels mixed alike             | batch, weights Dirichlet(alpha 1_{k_i}) zero-     |
|           |                                       | filled to k_max, soft label by the same weights   |
| k policy  | strategy network picks k in {2..6},   | per-sample categorical over k_min..k_max: an MLP  |
|           | REINFORCE, alternating with the FR    | on the sample's masked channels (log mean and max |
|           | network                               | of |coefficient|); batch-mean baseline, entropy   |
|           |                                       | bonus; `k_fixed` takes the policy out of play     |
| reward    | the FR loss on the mixed batch        | per sample: privacy - utility_weight * (FR loss - |
|           | (maximised by the policy)             | its floor); privacy = 1 - the largest identity    |
|           |                                       | share of the mix; floor = the soft label's entropy|
| FR loss   | FR loss on the mixed data             | soft-label CE, each class's ArcFace margin scaled |
|           |                                       | by its weight (`mix_margin: weighted`)            |
| inference | one masked face, no mixing            | the same; BatchNorm statistics re-estimated on    |
|           |                                       | single masked public faces (`bn_public`)          |

Why not the paper's reward: with the weighted margin the FR loss is largest at k = 2 (the
dominant face of a 2-mixture carries nearly the full margin), so a policy that maximises it
settles on k = 2 with p > 0.999, a fixed 2-image MixUp (docs/experiments.md). The reward
here pays for privacy that the weights of a mix define (1 - max identity share grows with
k) and charges for the part of the FR loss that the network could remove (the label
entropy, which also grows with k, is not charged), so the trade-off is the
`utility_weight` knob; the entropy bonus keeps the policy from collapsing onto one k. The
policy's update uses the reward measured with the FR network before that network's own
update of the step.

Logged per epoch (MLflow, through the training loop's epoch metrics): `k_mean`,
`k_share_<k>` for every k (the share of that epoch's mixes), `reward`, `privacy`,
`utility_loss`. Measures of the system: `k_histogram` ({"2": share, ...} over the last
epoch's mixes; in metrics.json at defenses.hybrid.measures.k_histogram), `k_mean`,
`k_mean_first_epoch`, `k_mean_last_epoch`, `policy_final` (mean policy on 128 training
faces).

Variant (CPU scale): 32 px with u=4 as for ppfrfd; BatchNorm statistics from public faces
(the network trained on mixtures, whose channels have other scales than the single faces
clients send; the server's own faces set them, so no statistic of a private face enters the
model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import update_bn

from components.config import config_from
from components.defenses.base import DefenseContext, ThreatModel
from components.defenses.frequency import FrequencySystem, frequency_spec, train_config, train_frequency_fr
from components.defenses.ppfrfd import ChannelMask, analyse, rebuild_masked, system
from components.metrics.embeddings import to_model_tensor
from components.training.loop import TrainHooks


MIX_MARGINS = ("weighted", "each", "none")


@dataclass
class HybridConfig:
    # the masking step: ppfrfd's knobs and defaults (components.defenses.ppfrfd.PPFRFDConfig)
    upsample: int = 4
    energy_removed: float = 0.99
    max_channels: int = 189
    w_vis: float = 5.0
    analysis_epochs: int = 3
    masking: Literal["standardise", "shuffle_mix"] = "standardise"
    k_min: int = 2
    k_max: int = 6
    k_fixed: int | None = None      # every sample mixes k_fixed faces, the policy out of play; None: the policy chooses
    alpha: float = 0.5              # Dirichlet concentration of the mixing weights
    policy_lr: float = 0.01
    entropy: float = 0.2            # entropy bonus of the policy (its temperature)
    utility_weight: float = 0.1     # reward = privacy - utility_weight * (FR loss - its floor), per sample
    # margin on a mixture: weighted (per face, by its weight) | each (full margin to every face) | none
    mix_margin: Literal["weighted", "each", "none"] = "weighted"
    bn_public: bool = True          # BatchNorm statistics re-estimated on single masked public faces
    train: dict = field(default_factory=dict)
    backbone: dict = field(default_factory=dict)


def policy_features(rep: torch.Tensor) -> torch.Tensor:
    """Per-sample input of the policy: log of the mean and of the max |coefficient| of each
    masked channel, (B, 2C)."""
    a = rep.detach().abs().flatten(2)
    return torch.cat([a.mean(2), a.amax(2)], 1).add(1e-3).log()


class StrategyNet(nn.Module):
    """Masked representations (B, C, H, W) -> per-sample logits over k_min..k_max (B, K);
    uniform at the start."""

    def __init__(self, channels: int, k_min: int, k_max: int, hidden: int = 32):
        super().__init__()
        self.k_min, self.k_max = k_min, k_max
        self.net = nn.Sequential(nn.Linear(2 * channels, hidden), nn.ReLU(), nn.Linear(hidden, k_max - k_min + 1))
        nn.init.zeros_(self.net[-1].weight)     # the policy starts uniform over k
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, rep: torch.Tensor) -> torch.Tensor:
        return self.net(policy_features(rep))


def mix(rep: torch.Tensor, y: torch.Tensor, k: int | torch.Tensor, alpha: float
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MixUp of k_i faces per sample: sample i mixes itself (column 0) with k_i - 1 others
    (random permutations of the batch) by weights from Dirichlet(alpha 1_{k_i}), zero-filled
    up to max k (a zero-weight column repeats the sample itself). `k`: an int or (B,) ints.
    Returns (mixed, labels (B, K), weights (B, K)), K = max k, every row of weights summing to 1."""
    b = rep.shape[0]
    k = torch.as_tensor(k, device=rep.device).long().expand(b) if not torch.is_tensor(k) or k.ndim == 0 \
        else k.to(rep.device).long()
    width = int(k.max())
    own = torch.arange(b, device=rep.device)
    perms = [own] + [torch.randperm(b).to(rep.device) for _ in range(width - 1)]
    idx = torch.stack(perms, 1)                                                   # (B, K)
    used = torch.arange(width, device=rep.device)[None] < k[:, None]              # (B, K)
    idx = torch.where(used, idx, own[:, None])
    g = torch.distributions.Gamma(torch.full((b, width), float(alpha)), torch.ones(b, width)).sample().to(rep.device)
    g = g * used                                   # Dirichlet over the first k_i: normalised Gammas
    total = g.sum(1, keepdim=True)
    w = torch.where(total > 0, g / total.clamp_min(1e-30), F.one_hot(torch.zeros(b, dtype=torch.long,
                                                                                 device=rep.device), width).float())
    mixed = (rep[idx] * w[:, :, None, None, None]).sum(1)
    return mixed, y[idx], w


class HybridHooks(TrainHooks):
    """Masks and mixes each batch (k per sample from the policy) and trains the policy by
    REINFORCE on the privacy-utility reward."""

    def __init__(self, front: ChannelMask, policy: StrategyNet, cfg: HybridConfig):
        self.front, self.policy, self.cfg = front, policy, cfg
        self.opt = torch.optim.Adam(policy.parameters(), lr=cfg.policy_lr)
        self.ks = [cfg.k_fixed] if cfg.k_fixed is not None else list(range(policy.k_min, policy.k_max + 1))
        self._last: dict = {}

    def extra_optimizers(self):
        return [self.opt]

    def transform_batch(self, x, y, step):
        self.front.to(x.device)
        self.policy.to(x.device)
        with torch.no_grad():
            rep = self.front(x)
        if self.cfg.k_fixed is not None:
            k = torch.full((x.shape[0],), self.cfg.k_fixed, device=x.device, dtype=torch.long)
            self._last = {"k": k}
        else:
            dist = torch.distributions.Categorical(logits=self.policy(rep))
            choice = dist.sample()
            k = self.policy.k_min + choice
            self._last = {"k": k, "log_prob": dist.log_prob(choice), "entropy": dist.entropy()}
        mixed, labels, w = mix(rep, y, k, self.cfg.alpha)
        return mixed, (labels[:, 0], labels, w)   # first: each sample's own label (train accuracy)

    def loss(self, model, head, x, y):
        _, labels, w = y
        emb = model(x)
        cosine = head.cosine(emb)
        target = torch.zeros_like(cosine).scatter_add_(1, labels, w.to(cosine.dtype))      # (B, C) identity shares
        if self.cfg.mix_margin == "weighted":   # soft label: each face's margin in proportion to its weight
            per = -(target * F.log_softmax(head.soft_logits(cosine, target), dim=1)).sum(1)
        else:   # "each": the full margin toward every mixed face; "none": scaled cosines
            def logits(j):
                return head(emb, labels[:, j]) if self.cfg.mix_margin == "each" else head.s * cosine

            per = (torch.stack([F.cross_entropy(logits(j), labels[:, j], reduction="none")
                                for j in range(labels.shape[1])], 1) * w).sum(1)                  # (B,)
        fr_loss = per.mean()
        with torch.no_grad():
            t = target.float()
            privacy = 1.0 - t.amax(1)
            floor = -(t * t.clamp_min(1e-12).log()).sum(1)       # the soft label's entropy: no network beats it
            utility_loss = (per.detach().float() - floor).clamp_min(0.0)
            reward = privacy - self.cfg.utility_weight * utility_loss
        self._last.update(reward=float(reward.mean()), privacy=float(privacy.mean()),
                          utility_loss=float(utility_loss.mean()))
        if "log_prob" not in self._last:
            return fr_loss, cosine.detach()
        pg = self.policy_loss(reward)
        # The policy term carries gradient to the policy only; its value is not added to the logged loss.
        return fr_loss + (pg - pg.detach()), cosine.detach()

    def policy_loss(self, reward: torch.Tensor) -> torch.Tensor:
        """REINFORCE for the k drawn by the last `transform_batch`, given each sample's reward
        (B,): advantage against the batch-mean baseline, plus the entropy bonus."""
        advantage = reward.detach() - reward.detach().mean()
        return -(advantage * self._last["log_prob"]).mean() - self.cfg.entropy * self._last["entropy"].mean()

    def after_step(self, step, loss_value, batch):
        k = self._last["k"].float()
        out = {"k_mean": float(k.mean()), "reward": self._last["reward"], "privacy": self._last["privacy"],
               "utility_loss": self._last["utility_loss"]}
        out.update({f"k_share_{v}": float((k == v).float().mean()) for v in self.ks})
        return out

    def config(self):
        return {"k": [self.cfg.k_min, self.cfg.k_max], "k_fixed": self.cfg.k_fixed, "alpha": self.cfg.alpha,
                "policy_lr": self.cfg.policy_lr, "entropy": self.cfg.entropy,
                "utility_weight": self.cfg.utility_weight, "mix_margin": self.cfg.mix_margin}

    def state_dict(self):
        # The policy's weights; its Adam state is checkpointed by the loop (extra_optimizers).
        # The baseline is the batch mean: no state.
        return {"policy": self.policy.state_dict()}

    def load_state_dict(self, state):
        self.policy.load_state_dict(state["policy"])


def k_measures(history: list[dict], ks: list[int]) -> dict:
    """The k measures from the training history's epoch metrics: `k_histogram` over the last
    epoch's mixes, the mean k over all epochs, the first and the last."""
    last = history[-1]
    means = [h["k_mean"] for h in history]
    return {"k_histogram": {str(v): float(last[f"k_share_{v}"]) for v in ks},
            "k_mean": float(sum(means) / len(means)), "k_mean_first_epoch": float(means[0]),
            "k_mean_last_epoch": float(means[-1])}


class HybridDefense:
    config_class = HybridConfig   # its params block (params.yaml's schema reads it)
    name = "hybrid"
    privacy_knob = "alpha"


    def threat_model(self, params: dict) -> ThreatModel:
        return ThreatModel(("client_representation", "training_images"), ("representation_recovery", "model_inversion"),
                           "ppfrfd's masking on the client, and an FR model trained on frequency-domain MixUp of k "
                           "faces: its target threat is model inversion of the training faces")

    def build(self, ctx: DefenseContext) -> FrequencySystem:
        cfg = config_from(HybridConfig, ctx.params)
        if not 2 <= cfg.k_min <= cfg.k_max:
            raise ValueError(f"hybrid: need 2 <= k_min <= k_max, got {cfg.k_min}, {cfg.k_max}")
        if cfg.k_fixed is not None and cfg.k_fixed < 1:
            raise ValueError(f"hybrid: k_fixed must be None or >= 1, got {cfg.k_fixed}")
        if cfg.mix_margin not in MIX_MARGINS:
            raise ValueError(f"hybrid: mix_margin must be one of {MIX_MARGINS}, got {cfg.mix_margin!r}")
        torch.manual_seed(ctx.seed)
        keep, measures = analyse(ctx, cfg)
        front = ChannelMask(cfg.upsample, keep, cfg.masking)
        grid = front.dct.grid(*ctx.train_images.shape[1:3])[0]
        spec = frequency_spec(ctx.baseline.spec, front.channels, grid, cfg.backbone)
        policy = StrategyNet(front.channels, cfg.k_min, cfg.k_max)
        hooks = HybridHooks(front, policy, cfg)
        tcfg = train_config(ctx, {**cfg.train, "augment_flip": True})
        model = train_frequency_fr(ctx, front, spec, tcfg, hooks=hooks, front_in_model=False)
        front.to("cpu")
        if cfg.bn_public:
            recalibrate_bn(model.backbone, front, ctx.public_images)
        measures.update(k_measures(model.history, hooks.ks))
        if cfg.k_fixed is None:
            with torch.no_grad():
                probs = torch.softmax(policy.to("cpu")(front(_sample(ctx))), 1).mean(0).tolist()
            measures["policy_final"] = {str(cfg.k_min + i): float(p) for i, p in enumerate(probs)}
        return system("hybrid", front, model, spec, cfg, keep, measures,
                      extra_op={"k_range": [cfg.k_fixed] * 2 if cfg.k_fixed is not None else [cfg.k_min, cfg.k_max],
                                "alpha": cfg.alpha, "masking": cfg.masking})

    def rebuild(self, config: dict) -> FrequencySystem:
        return rebuild_masked("hybrid", config)


def recalibrate_bn(backbone: nn.Module, front: nn.Module, images, batch: int = 128) -> None:
    """Re-estimate every BatchNorm's running statistics on single masked faces (the mean of
    the per-batch statistics, torch's `update_bn`), in place; weights untouched. Training
    on mixtures leaves statistics of mixtures, which have other channel scales than the
    single faces that clients send."""
    batches = (front(to_model_tensor(images[i:i + batch])) for i in range(0, len(images), batch))
    update_bn(batches, backbone)
    backbone.eval()


def _sample(ctx: DefenseContext) -> torch.Tensor:
    return to_model_tensor(ctx.train_images[:128])


__all__ = ["HybridConfig", "HybridDefense", "HybridHooks", "StrategyNet", "k_measures", "mix", "policy_features"]
