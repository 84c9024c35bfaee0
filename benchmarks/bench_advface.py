"""AdvFace's two modes on the demo: each is built from the stored demo dataset and
baseline (a `make demo` store; read only) and judged by verification accuracy (stored
templates against clean probes, as the pipeline does) and by the battery's template
inversion, plain (decoder trained on clean templates) and adaptive (`stored`: trained on
stored templates of public faces the attacker enrols), with their 95% intervals. Prints
one JSON line per mode and eps.

    python -m benchmarks.bench_advface [--store artifacts/demo/store]
        [--modes online,offline] [--eps 0.5] [--set '{"rec_weight": 10}']

One torch thread; a mode costs its build (offline: the generator) and two decoder trainings,
a few minutes on CPU.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from benchmarks.demo_store import bench_parser, load_store, rounded
from components.defenses import get_defense
from components.metrics.utility import evaluate_system

KEEP = ("ssim", "sar_type1", "sar_type2", "advantage", "ci95")


def main(argv=None) -> int:
    ap = bench_parser(__doc__)
    ap.add_argument("--modes", default="online,offline")
    ap.add_argument("--eps", default="", help="comma-separated; empty: the profile's")
    ap.add_argument("--set", default="{}", help="JSON merged over the advface block")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    store = load_store(args.store, args.profile)
    base = store.block("advface", json.loads(args.set))
    values = [float(v) for v in args.eps.split(",")] if args.eps else [float(base["eps"])]
    for mode in args.modes.split(","):
        t0 = time.perf_counter()
        systems = get_defense("advface").build_sweep(store.defense_context({**base, "mode": mode}, args.seed), values)
        built = round(time.perf_counter() - t0, 1)
        for eps, system in zip(values, systems):
            torch.manual_seed(args.seed)
            utility, _ = evaluate_system(system, store.images, store.manifest, store.pairs, probe_fn=system.probe)
            ti = store.attack("template_inversion", "advface", system, seed=args.seed)
            variants = {name: {k: v for k, v in m.items() if k in KEEP} for name, m in ti.measures["variants"].items()}
            print(json.dumps(rounded({"mode": mode, "eps": eps, "build_s": built,
                                      "verification_accuracy": float(utility["verification_accuracy"]),
                                      "tar_at_far_1e-3": float(utility.get("tar_at_far_1e-3", float("nan"))),
                                      "headline": ti.measures["variant"], "template_inversion": variants,
                                      "measures": system.measures()})), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
