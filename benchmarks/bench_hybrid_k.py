"""Hybrid's strategy network against fixed k and ppfrfd on the demo: each variant is built
from the stored demo dataset, splits and baseline (a `make demo` store; read only) at the
same training budget and scored on verification accuracy, optionally on model inversion
(the hybrid's target threat; the evaluation model from the same store; a Wilson 95%
interval over its targets) too. Prints one line per variant with the k histogram of
hybrid's last epoch.

    python -m benchmarks.bench_hybrid_k [--store artifacts/demo/store] [--epochs 32]
        [--variants policy,k2,k4,ppfrfd] [--set '{"utility_weight": 0.1}'] [--mi] [--mi-steps 200]

`policy` is hybrid as configured (the policy chooses k), `kN` hybrid with k_fixed = N,
`ppfrfd` the masking alone (trained for the baseline's epochs unless --ppfrfd-epochs).
Expensive on CPU: a 32-epoch hybrid takes about 2 minutes on 2 cores, model inversion more.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from scipy.stats import binomtest

from benchmarks.demo_store import bench_parser, load_store
from components.attacks.variants import split_variants
from components.defenses import get_defense
from components.metrics.utility import evaluate_system


def main(argv=None) -> int:
    ap = bench_parser(__doc__)
    ap.add_argument("--epochs", type=int, default=0, help="hybrid's FR epochs; 0: the profile's")
    ap.add_argument("--ppfrfd-epochs", type=int, default=0, help="0: the profile's")
    ap.add_argument("--variants", default="policy,k2,ppfrfd")
    ap.add_argument("--set", default="{}", help="JSON merged over the hybrid block")
    ap.add_argument("--mi", action="store_true", help="run model inversion too")
    ap.add_argument("--mi-steps", type=int, default=0, help="0: the profile's")
    args = ap.parse_args(argv)

    store = load_store(args.store, args.profile)
    params = store.params

    for variant in args.variants.split(","):
        name = "ppfrfd" if variant == "ppfrfd" else "hybrid"
        block = json.loads(json.dumps(params.get(name, {})))
        if name == "hybrid":
            block.update(json.loads(args.set))
            if args.epochs:
                block["train"] = {**block.get("train", {}), "epochs": args.epochs}
            if variant.startswith("k"):
                block["k_fixed"] = int(variant[1:])
        elif args.ppfrfd_epochs:
            block["train"] = {**block.get("train", {}), "epochs": args.ppfrfd_epochs}
        ctx = store.defense_context(block, args.seed, on_epoch_end=_show_epoch)
        t0 = time.perf_counter()
        system = get_defense(name).build(ctx).to("cpu").eval()
        built = time.perf_counter() - t0
        torch.manual_seed(0)
        utility, _ = evaluate_system(system, store.images, store.manifest, store.pairs, device="cpu")
        line = {"variant": variant, "verification_accuracy": round(float(utility["verification_accuracy"]), 4),
                "build_s": round(built, 1)}
        m = system.measures()
        if "k_histogram" in m:
            line["k_histogram"] = {k: round(v, 3) for k, v in m["k_histogram"].items()}
            line["k_mean_first_epoch"] = round(m["k_mean_first_epoch"], 3)
        print(json.dumps(line), flush=True)
        if args.mi:
            mi_params, _ = split_variants(params.get("attacks", {}).get("model_inversion", {}))   # the plain attack
            if args.mi_steps:
                mi_params["steps"] = args.mi_steps
            result = store.attack("model_inversion", name, system, mi_params, args.seed, variants=False)
            top1, n = float(result.measures["top1"]), int(result.strength["targets"])
            ci = binomtest(round(top1 * n), n).proportion_ci(method="wilson")   # one outcome per target
            print(json.dumps({"variant": variant, "model_inversion_top1": round(top1, 4), "targets": n,
                              "ci95": [round(ci.low, 4), round(ci.high, 4)]}), flush=True)
    return 0


def _show_epoch(epoch: int, metrics: dict) -> None:
    """The epoch's loss and k metrics on stderr (the pipeline logs them to MLflow)."""
    shown = {k: round(v, 3) for k, v in metrics.items() if k == "loss" or k.startswith(("k_", "reward", "privacy",
                                                                                       "utility"))}
    print(f"epoch {epoch}: {shown}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
