"""FaceMAE's losses on the demo: each run is built from the stored demo dataset and
baseline (a `make demo` store; read only) and judged by verification accuracy of the FR
model trained on the reconstructions and by the battery's retrieval leakage (identity-level
top-1 rescaled by chance, the scored figure, with its 95% interval; image-level beside it).
Prints one JSON line per run.

    python -m benchmarks.bench_facemae [--store artifacts/demo/store]
        --run '{"loss": "irm"}' --run '{"loss": "pixel"}' [--run '{...}' ...]

Each --run is merged over the profile's facemae block. One run trains the public IRM
network, the MAE and an FR model, one torch thread: a few minutes on CPU.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from benchmarks.demo_store import bench_parser, load_store, rounded
from components.defenses import get_defense
from components.metrics.utility import evaluate_system


def main(argv=None) -> int:
    ap = bench_parser(__doc__)
    ap.add_argument("--run", action="append", required=True, help="JSON merged over the facemae block")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    store = load_store(args.store, args.profile)
    for run in args.run:
        t0 = time.perf_counter()
        system = get_defense("facemae").build(store.defense_context(store.block("facemae", json.loads(run)),
                                                                      args.seed)).eval()
        built = round(time.perf_counter() - t0, 1)
        torch.manual_seed(args.seed)
        utility, _ = evaluate_system(system, store.images, store.manifest, store.pairs)
        leak = store.attack("retrieval_leakage", "facemae", system, seed=args.seed).measures
        m = system.measures()
        print(json.dumps(rounded({"run": json.loads(run), "build_s": built,
                                  "verification_accuracy": float(utility["verification_accuracy"]),
                                  "retrieval": {k: leak[k] for k in ("identity_top1", "identity_chance", "advantage",
                                                                     "top1", "top5", "ci95") if k in leak},
                                  "heldout": {k: m[k] for k in ("heldout_ssim", "heldout_instance",
                                                                "heldout_relation", "mae_masked_loss")}})),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
