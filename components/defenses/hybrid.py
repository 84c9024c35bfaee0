"""Adaptive hybrid masking: PPFR-FD frequency masking plus frequency-domain MixUp of k
images, with k chosen by a strategy network trained by REINFORCE (the adaptive hybrid
masking paper). Target threat: model inversion of the training faces; the classifier
never sees a single training face, only masked mixtures of k of them.

Training, per batch: every image is masked (components.defenses.ppfrfd: the same analysis
step and channel mask), the strategy network reads the batch's mean absolute masked
coefficients per channel and samples k in {k_min..k_max} from a categorical policy; each
sample is mixed with k - 1 others of the batch (random permutations) by weights drawn from
Dirichlet(alpha * 1_k); the labels are mixed by the same weights (the loss is the
cross-entropy against that soft label). The FR network minimises that loss; the strategy network
maximises it (reward = the FR loss on the mixed batch, a privacy reward: harder mixtures
hide more) by REINFORCE with a moving-average baseline and an entropy bonus. The two
players alternate within every step: the policy's update uses the reward measured with
the FR network before the FR network's own update of that step. The chosen k is logged
per epoch (`k_mean`) and its history kept in measures.

At inference the client sends one masked image (no mixing): the system is a PPFR-FD system
whose FR model was trained on mixtures.

Variant (CPU scale): k per batch (not per sample), the policy is a 2-layer MLP on batch
statistics, 32 px with u=4 as for ppfrfd. The loss on a mixture (`mix_margin`) is the
soft-label cross-entropy of margin logits in which each class's ArcFace margin is scaled
by its weight in the mixture, s * cos(theta + w m) (`weighted`, the default; the head's
`soft_logits`): the face that dominates a mixture is pulled toward its class with nearly
the full margin, a minor face with little. The two others are kept for comparison: `each`
(the full margin toward every mixed face, which asks the impossible of a mixture) and
`none` (scaled cosines, no margin). After training, every BatchNorm's statistics are
re-estimated on single masked PUBLIC faces (`bn_public`): the network trained on
mixtures, whose channels have other scales than the single faces clients send; the
server's own faces set them, so no statistic of a private face enters the model (and a
model-inversion attacker's BN prior describes public faces, not training ones).

Measured on the demo (32 px, seed 0, 32 epochs, public BN statistics unless said;
baseline 0.928, ppfrfd alone with the same mask 0.927): the margin on a mixture is what
decided it: `each` 0.593 (16 epochs, no BN step), `none` 0.837, `weighted` 0.867 with
Dirichlet alpha 1 and 0.882 / 0.891 (two runs) with alpha 0.5, the default: a smaller
alpha lets one face dominate more mixtures, and the weighted margin then trains the
network on nearly-single faces with nearly the full margin, while no face is ever seen
alone. Model-inversion top-1 of the training identities at alpha 0.5: 0.122 (baseline
0.867). With the weighted margin the policy settles on k = 2 (p > 0.999): the FR loss,
its reward, is largest there (the dominant face of a 2-mixture carries the largest
margin), so the strategy network follows the paper's objective to the smallest k.
Before the weighted margin (`none`; verification without -> with public BN
statistics): 16 epochs 0.726 -> 0.796, 32 epochs 0.803 -> 0.837, 48 epochs 0.854 ->
0.864, 64 epochs 0.839 -> 0.853; alpha 0.3 0.796 -> 0.755 (16 ep), 0.820 -> 0.847 (40
ep); standardising each mixture again 0.727 -> 0.749; a warm start of 10 epochs on single
masked public faces 0.773 -> 0.758; u=2 0.582 (with `each`); k fixed at 2 0.842, at 3
0.834 (the policy out of play).
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
    upsample: int = 2
    energy_removed: float = 0.9
    max_channels: int = 64
    w_vis: float = 5.0
    analysis_epochs: int = 3
    k_min: int = 2
    k_max: int = 6
    alpha: float = 1.0              # Dirichlet concentration of the mixing weights
    policy_lr: float = 0.01
    entropy: float = 0.01           # entropy bonus of the policy
    baseline_momentum: float = 0.9  # moving-average reward baseline
    mix_margin: Literal["weighted", "each", "none"] = "weighted"    # margin on a mixture: weighted (per face, by its weight) | each | none
    bn_public: bool = True          # BatchNorm statistics re-estimated on single masked public faces
    train: dict = field(default_factory=dict)
    backbone: dict = field(default_factory=dict)


class StrategyNet(nn.Module):
    """Batch statistics (mean |coefficient| per channel) -> logits over k_min..k_max."""

    def __init__(self, channels: int, k_min: int, k_max: int, hidden: int = 32):
        super().__init__()
        self.k_min, self.k_max = k_min, k_max
        self.net = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, k_max - k_min + 1))

    def forward(self, rep: torch.Tensor) -> torch.Tensor:
        return self.net(rep.abs().mean(dim=(0, 2, 3))[None])[0]


def mix(rep: torch.Tensor, y: torch.Tensor, k: int, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MixUp of k: sample i mixes itself with k-1 others (random permutations of the batch),
    weights per sample from Dirichlet(alpha). Returns (mixed, labels (B, k), weights (B, k))."""
    b = rep.shape[0]
    perms = [torch.arange(b, device=rep.device)] + [torch.randperm(b).to(rep.device) for _ in range(k - 1)]
    idx = torch.stack(perms, 1)                                              # (B, k)
    w = torch.distributions.Dirichlet(torch.full((k,), float(alpha))).sample((b,)).to(rep.device)
    mixed = (rep[idx] * w[:, :, None, None, None]).sum(1)
    return mixed, y[idx], w


class HybridHooks(TrainHooks):
    """Masks and mixes each batch (k from the policy) and trains the policy by REINFORCE."""

    def __init__(self, front: ChannelMask, policy: StrategyNet, cfg: HybridConfig):
        self.front, self.policy, self.cfg = front, policy, cfg
        self.opt = torch.optim.Adam(policy.parameters(), lr=cfg.policy_lr)
        self.baseline = None
        self.k_history: list[int] = []
        self._last: dict = {}

    def extra_optimizers(self):
        return [self.opt]

    def transform_batch(self, x, y, step):
        self.front.to(x.device)
        self.policy.to(x.device)
        with torch.no_grad():
            rep = self.front(x)
        logits = self.policy(rep)
        dist = torch.distributions.Categorical(logits=logits)
        choice = dist.sample()
        k = self.policy.k_min + int(choice)
        mixed, labels, w = mix(rep, y, k, self.cfg.alpha)
        self._last = {"k": k, "log_prob": dist.log_prob(choice), "entropy": dist.entropy()}
        return mixed, (labels[:, 0], labels, w)   # first: each sample's own label (train accuracy)

    def loss(self, model, head, x, y):
        _, labels, w = y
        emb = model(x)
        cosine = head.cosine(emb)

        if self.cfg.mix_margin == "weighted":   # soft label: each face's margin in proportion to its weight
            target = torch.zeros_like(cosine).scatter_add_(1, labels, w.to(cosine.dtype))      # (B, C)
            fr_loss = -(target * F.log_softmax(head.soft_logits(cosine, target), dim=1)).sum(1).mean()
        else:   # "each": the full margin toward every mixed face; "none": scaled cosines
            def logits(j):
                return head(emb, labels[:, j]) if self.cfg.mix_margin == "each" else head.s * cosine

            per = torch.stack([F.cross_entropy(logits(j), labels[:, j], reduction="none")
                               for j in range(labels.shape[1])], 1)                  # (B, k)
            fr_loss = (per * w).sum(1).mean()
        reward = float(fr_loss.detach())
        if self.baseline is None:
            self.baseline = reward
        advantage = reward - self.baseline
        self.baseline = self.cfg.baseline_momentum * self.baseline + (1 - self.cfg.baseline_momentum) * reward
        pg = -(advantage * self._last["log_prob"] + self.cfg.entropy * self._last["entropy"])
        # The policy term carries gradient to the policy only; its value is not added to the logged loss.
        self._last["reward"] = reward
        return fr_loss + (pg - pg.detach()), cosine.detach()

    def after_step(self, step, loss_value, batch):
        self.k_history.append(self._last["k"])
        return {"k_mean": float(self._last["k"]), "reward": self._last["reward"]}

    def config(self):
        return {"k": [self.cfg.k_min, self.cfg.k_max], "alpha": self.cfg.alpha, "policy_lr": self.cfg.policy_lr,
                "mix_margin": self.cfg.mix_margin}

    def state_dict(self):
        return {"policy": self.policy.state_dict(), "baseline": self.baseline, "k_history": list(self.k_history)}

    def load_state_dict(self, state):
        self.policy.load_state_dict(state["policy"])
        self.baseline = state["baseline"]
        self.k_history = list(state["k_history"])


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
        if cfg.mix_margin not in MIX_MARGINS:
            raise ValueError(f"hybrid: mix_margin must be one of {MIX_MARGINS}, got {cfg.mix_margin!r}")
        torch.manual_seed(ctx.seed)
        keep, measures = analyse(ctx, cfg)
        front = ChannelMask(cfg.upsample, keep)
        grid = front.dct.grid(*ctx.train_images.shape[1:3])[0]
        spec = frequency_spec(ctx.baseline.spec, front.channels, grid, cfg.backbone)
        policy = StrategyNet(front.channels, cfg.k_min, cfg.k_max)
        hooks = HybridHooks(front, policy, cfg)
        tcfg = train_config(ctx, {**cfg.train, "augment_flip": True})
        model = train_frequency_fr(ctx, front, spec, tcfg, hooks=hooks, front_in_model=False)
        front.to("cpu")
        if cfg.bn_public:
            recalibrate_bn(model.backbone, front, ctx.public_images)
        ks = torch.tensor(hooks.k_history, dtype=torch.float32)
        n = max(1, len(ks) // 10)
        with torch.no_grad():
            probs = torch.softmax(policy.to("cpu")(front(_sample(ctx))), 0).tolist()
        measures.update({"k_mean": float(ks.mean()), "k_mean_first_10pct": float(ks[:n].mean()),
                         "k_mean_last_10pct": float(ks[-n:].mean()),
                         "policy_final": {str(cfg.k_min + i): float(p) for i, p in enumerate(probs)}})
        return system("hybrid", front, model, spec, cfg, keep, measures,
                      extra_op={"k_range": [cfg.k_min, cfg.k_max], "alpha": cfg.alpha})

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


__all__ = ["HybridConfig", "HybridDefense", "HybridHooks", "StrategyNet", "mix"]
