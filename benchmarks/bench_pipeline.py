"""Pipeline overhead: the same FR training and evaluation run (a) through the Dagster
asset with MLflow tracking and (b) as a plain call of the components, in one process on
the same data. Reports the time ratio (goal <= 1.05) to reports/bench.json.

    python -m benchmarks.bench_pipeline [--epochs 3] [--profile demo]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from pipelines import telemetry  # noqa: F401

import dagster as dg  # noqa: E402

from benchmarks.report import record  # noqa: E402
from components.config import load_params  # noqa: E402
from components.data.synthetic import SyntheticConfig, write_dataset  # noqa: E402
from components.data.views import split_view  # noqa: E402
from components.metrics.utility import evaluate_system  # noqa: E402
from components.models.fr_model import make_spec, train_fr_model  # noqa: E402
from pipelines.definitions import ASSETS, build_resources  # noqa: E402
from pipelines.io_manager import fetch  # noqa: E402
from pipelines.resources import PROJECT_ROOT  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--epochs", type=int, default=0, help="0: the profile's epochs")
    args = ap.parse_args(argv)
    params = load_params(PROJECT_ROOT / "params.yaml", args.profile)
    epochs = args.epochs or params["baseline"]["train"]["epochs"]
    overrides = json.dumps({"baseline": {"train": {"epochs": epochs}}})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["DAGSTER_HOME"] = str(tmp / "home")
        (tmp / "home").mkdir()
        (tmp / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        data_dir = PROJECT_ROOT / params["data"]["dir"]
        if not data_dir.exists():
            data_dir = tmp / "data"
            write_dataset(data_dir, SyntheticConfig(**params["data"]["synthetic"]), progress=False)
        resources = build_resources(profile=args.profile, data_dir=str(data_dir), workdir=str(tmp / "work"),
                                    reports_dir=str(tmp / "reports"), mlflow_uri=f"sqlite:///{tmp}/mlflow.db",
                                    progress=False, overrides=overrides)
        instance = dg.DagsterInstance.get()
        resources["mlflow_tracking"].client()   # create the store's schema once, outside the timing
        dg.materialize(ASSETS, selection=dg.AssetSelection.assets("face_dataset", "dataset_splits"),
                       resources=resources, instance=instance)

        start = time.perf_counter()
        dg.materialize(ASSETS, selection=dg.AssetSelection.assets("baseline_fr_model"), resources=resources,
                       instance=instance)
        through_dagster = time.perf_counter() - start

        store = tmp / "work" / "store"
        ds = fetch(store / "face_dataset" / "__all__")
        splits = fetch(store / "dataset_splits" / "__all__")
        manifest, pairs = splits["manifest"], splits["pairs"]
        start = time.perf_counter()
        images, labels, _ = split_view(ds.images, manifest, "train")
        block = resources["settings"].params()["baseline"]
        spec = make_spec(block["backbone"], block["head"], num_classes=int(labels.max()) + 1,
                         input_size=params["data"]["image_size"])
        model = train_fr_model(images, labels, spec, block["train"], checkpoint_dir=tmp / "plain-ckpt",
                               progress=False)
        evaluate_system(lambda x: model.backbone(x), ds.images, manifest, pairs)
        plain = time.perf_counter() - start
    ratio = through_dagster / plain
    print(f"{'path':<34}{'seconds':>10}")
    print(f"{'Dagster asset + MLflow tracking':<34}{through_dagster:>10.2f}")
    print(f"{'plain component call':<34}{plain:>10.2f}")
    print(f"overhead ratio: {ratio:.3f} (goal <= 1.05)")
    record("pipeline_overhead", {"dagster_s": through_dagster, "plain_s": plain, "ratio": ratio,
                                 "epochs": epochs, "profile": args.profile, "goal": 1.05})
    return 0


if __name__ == "__main__":
    sys.exit(main())
