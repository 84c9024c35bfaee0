"""The defense registry. Adding a defense = one module here + one entry in DEFENSES; the
Dagster partitions, the report and metrics.json read this mapping and nothing else."""

from __future__ import annotations


from components.defenses.base import Defense, DefenseContext, ProtectedSystem, sweep_systems, system_bundle
from components.defenses.baseline import BaselineDefense
from components.defenses.dctdp import DCTDPDefense
from components.defenses.hybrid import HybridDefense
from components.defenses.ppfrfd import PPFRFDDefense


class NotImplementedDefense:
    """A registered defense whose method has not landed yet: fails loudly, never fakes."""

    def __init__(self, name: str, where: str):
        self.name = name
        self.where = where

    def _fail(self):
        raise NotImplementedError(f"defense {self.name!r} is not implemented yet ({self.where})")

    def build(self, ctx: DefenseContext) -> ProtectedSystem:
        self._fail()

    def rebuild(self, config: dict) -> ProtectedSystem:
        self._fail()


DEFENSES: dict[str, Defense] = {
    "baseline": BaselineDefense(),
    "dctdp": DCTDPDefense(),
    "ppfrfd": PPFRFDDefense(),
    "hybrid": HybridDefense(),
    "facemae": NotImplementedDefense("facemae", "FaceMAE, issue #6"),
    "advface": NotImplementedDefense("advface", "template-level defenses, issue #5"),
    "dvpf": NotImplementedDefense("dvpf", "template-level defenses, issue #5"),
}


def get_defense(name: str) -> Defense:
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; known: {', '.join(DEFENSES)}")
    return DEFENSES[name]


def is_implemented(name: str) -> bool:
    return not isinstance(get_defense(name), NotImplementedDefense)


def load_system(bundle: dict) -> ProtectedSystem:
    """Rebuild a saved system from `system_bundle` output."""
    if bundle.get("kind") != "protected_system":
        raise ValueError(f"not a protected-system bundle (kind={bundle.get('kind')!r})")
    system = get_defense(bundle["defense"]).rebuild(bundle["config"])
    system.load_state_dict(bundle["state"])
    return system.eval()


__all__ = ["DEFENSES", "Defense", "DefenseContext", "ProtectedSystem", "get_defense",
           "is_implemented", "load_system", "sweep_systems", "system_bundle"]
