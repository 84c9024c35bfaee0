"""The defense registry. Adding a defense = one module here + one entry in DEFENSES; the
Dagster partitions, the report and metrics.json read this mapping and nothing else."""

from __future__ import annotations

import importlib

from components.defenses.base import Defense, DefenseContext, ProtectedSystem, sweep_systems, system_bundle


class LazyDefense:
    """A registry entry that imports its module on first use. Defenses may use attack
    helpers (shadow decoders, probes) and attacks import the defense protocol, so importing
    every defense when the package loads would be circular."""

    def __init__(self, name: str, target: str):
        self.name = name
        self._target = target
        self._obj = None

    def _load(self):
        if self._obj is None:
            module, cls = self._target.split(":")
            self._obj = getattr(importlib.import_module(module), cls)()
        return self._obj

    def __getattr__(self, item):
        if item.startswith("_"):
            raise AttributeError(item)
        return getattr(self._load(), item)


DEFENSES: dict[str, Defense] = {
    "baseline": LazyDefense("baseline", "components.defenses.baseline:BaselineDefense"),
    "dctdp": LazyDefense("dctdp", "components.defenses.dctdp:DCTDPDefense"),
    "ppfrfd": LazyDefense("ppfrfd", "components.defenses.ppfrfd:PPFRFDDefense"),
    "hybrid": LazyDefense("hybrid", "components.defenses.hybrid:HybridDefense"),
    "facemae": LazyDefense("facemae", "components.defenses.facemae:FaceMAEDefense"),
    "advface": LazyDefense("advface", "components.defenses.advface:AdvFaceDefense"),
    "dvpf": LazyDefense("dvpf", "components.defenses.dvpf:DVPFDefense"),
}


def get_defense(name: str) -> Defense:
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; known: {', '.join(DEFENSES)}")
    return DEFENSES[name]


def load_system(bundle: dict) -> ProtectedSystem:
    """Rebuild a saved system from `system_bundle` output."""
    if bundle.get("kind") != "protected_system":
        raise ValueError(f"not a protected-system bundle (kind={bundle.get('kind')!r})")
    system = get_defense(bundle["defense"]).rebuild(bundle["config"])
    system.load_state_dict(bundle["state"])
    return system.eval()


__all__ = ["DEFENSES", "Defense", "DefenseContext", "ProtectedSystem", "get_defense",
           "load_system", "sweep_systems", "system_bundle"]
