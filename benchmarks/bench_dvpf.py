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

import json
import sys
import time

import torch

from benchmarks.demo_store import bench_parser, load_store
from components.attacks.variants import split_variants
from components.defenses import get_defense
from components.metrics.utility import evaluate_system


def _rounded(d: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}


def main(argv=None) -> int:
    ap = bench_parser(__doc__)
    ap.add_argument("--run", action="append", required=True, help="JSON merged over the dvpf block, with `lams`")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    store = load_store(args.store, args.profile)
    probe_params, _ = split_variants(store.params["attacks"]["attribute_inference"])   # the plain probe
    for run in args.run:
        block = store.block("dvpf", json.loads(run))
        lams = [float(v) for v in block.pop("lams")]
        t0 = time.perf_counter()
        systems = get_defense("dvpf").build_sweep(store.defense_context(block, args.seed), lams)
        built = round(time.perf_counter() - t0, 1)
        for lam, system in zip(lams, systems):
            torch.manual_seed(args.seed)
            utility, _ = evaluate_system(system, store.images, store.manifest, store.pairs)
            probe = store.attack("attribute_inference", "dvpf", system, probe_params, args.seed,
                                 variants=False).measures
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
