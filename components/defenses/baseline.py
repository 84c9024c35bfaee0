"""The undefended baseline: protect = identity, embed = the baseline FR backbone,
template = L2-normalised features. Every defense is measured against it."""

from __future__ import annotations

import copy

from components.defenses.base import DefenseContext, ProtectedSystem, ThreatModel
from components.models.fr_model import build_fr_model


class BaselineSystem(ProtectedSystem):
    defense = "baseline"

    def __init__(self, backbone, head, fr_spec: dict):
        super().__init__()
        self.backbone = backbone
        self.head = head          # the training head: white-box attacks invert the classifier
        self.fr_spec = fr_spec

    def embed(self, representation):
        return self.backbone(representation)

    def config(self) -> dict:
        return {"fr_spec": self.fr_spec}


class BaselineDefense:
    name = "baseline"
    config_class = None   # no block of its own: params' `baseline` block is the FR model it serves


    def threat_model(self, params: dict) -> ThreatModel:
        return ThreatModel((), (), "the undefended reference: it claims no protection, so its privacy score is "
                           "taken over every attack")

    def build(self, ctx: DefenseContext) -> BaselineSystem:
        return BaselineSystem(copy.deepcopy(ctx.baseline.backbone).eval(), copy.deepcopy(ctx.baseline.head).eval(),
                              ctx.baseline.spec)

    def rebuild(self, config: dict) -> BaselineSystem:
        model = build_fr_model(config["fr_spec"])
        return BaselineSystem(model.backbone.eval(), model.head.eval(), config["fr_spec"])
