"""dvpf's objectives on the demo: each variant is built from the stored demo dataset, splits
and baseline (a `make demo` store; read only) and scored on verification accuracy, on the
battery's attribute probe (learns from public identities, scores the test ones; the
evaluation model from the same store) and on the funnel's own measures (a fresh probe on
public identities beside the leakage bound). Prints one JSON line per point.

    python -m benchmarks.bench_dvpf [--store artifacts/demo/store]
        --run '{"release": "sample", "lams": [1, 10, 100]}' [--run '{...}' ...]

Each --run is merged over the profile's dvpf block; `lams` lists the leakage weights built
as one sweep (shared baseline features). One torch thread; about 20-60 s per point on CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from components.attacks import ATTACKS
from components.attacks.base import AttackContext
from components.attacks.variants import split_variants
from components.config import load_params
from components.data.views import split_attributes, split_view
from components.defenses import DefenseContext, get_defense
from components.metrics.utility import evaluate_system
from components.models.fr_model import from_bundle
from pipelines.io_manager import fetch


def _rounded(d: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="artifacts/demo/store")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--run", action="append", required=True, help="JSON merged over the dvpf block, with `lams`")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    params = load_params("params.yaml", args.profile)
    store = Path(args.store)
    ds = fetch(store / "face_dataset" / "__all__")
    splits = fetch(store / "dataset_splits" / "__all__")
    baseline = from_bundle(fetch(store / "baseline_fr_model" / "__all__"))
    evaluation = from_bundle(fetch(store / "evaluation_fr_model" / "__all__"))
    manifest, pairs = splits["manifest"], splits["pairs"]
    tx, ty, _ = split_view(ds.images, manifest, "train")
    px, py, _ = split_view(ds.images, manifest, "public")
    probe_params, _ = split_variants(params["attacks"]["attribute_inference"])   # the plain probe
    for run in args.run:
        block = {**params["dvpf"], **json.loads(run)}
        lams = [float(v) for v in block.pop("lams")]
        ctx = DefenseContext(params=block, train_images=tx, train_labels=ty, public_images=px, public_labels=py,
                             baseline=baseline, train_attributes=split_attributes(manifest, "train"),
                             public_attributes=split_attributes(manifest, "public"), progress=False, seed=args.seed)
        t0 = time.perf_counter()
        systems = get_defense("dvpf").build_sweep(ctx, lams)
        built = round(time.perf_counter() - t0, 1)
        for lam, system in zip(lams, systems):
            torch.manual_seed(args.seed)
            utility, _ = evaluate_system(system, ds.images, manifest, pairs)
            actx = AttackContext(defense="dvpf", system=system, images=ds.images, manifest=manifest, pairs=pairs,
                                 evaluation=evaluation, params=probe_params, seed=args.seed, progress=False)
            torch.manual_seed(args.seed)
            probe = ATTACKS["attribute_inference"].run(actx).measures
            m = system.measures()
            print(json.dumps({"run": json.loads(run), "lam": lam, "build_s": built,
                              "verification_accuracy": round(float(utility["verification_accuracy"]), 4),
                              "battery_probe": {a: round(v["balanced_accuracy"], 3) for a, v in probe.items()
                                                if isinstance(v, dict) and "balanced_accuracy" in v},
                              "fresh": {a: _rounded(v) for a, v in m.get("leakage", {}).items()},
                              "final_kl": round(m["final_kl"], 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
