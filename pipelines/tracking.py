"""MLflow logging used by the assets: flat params, per-epoch metrics, the system model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch

from pipelines.resources import PROJECT_ROOT


def flat(d: dict, prefix: str = "") -> dict[str, str]:
    """Nested params as MLflow's flat key -> string mapping."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        else:
            out[key] = str(v)[:500]
    return out


def log_params(d: dict, prefix: str = "") -> None:
    params = flat(d, prefix)
    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params if run else {}
    # a resumed run may already hold these; MLflow refuses to change a logged param
    mlflow.log_params({k: v for k, v in params.items() if k not in existing})


def epoch_logger(prefix: str):
    """An on_epoch_end callback that logs the epoch's metrics at step=epoch."""

    def log(epoch: int, metrics: dict) -> None:
        mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in metrics.items()
                            if isinstance(v, (int, float)) and k != "epoch"}, step=epoch)

    return log


def log_system_model(bundle: dict, example: np.ndarray, name: str = "system") -> str:
    """Log a defended system as an MLflow model from code (no pickled object), with a
    signature inferred from an example batch; returns the model URI."""
    from mlflow.models import infer_signature

    from components.defenses import load_system

    system = load_system(bundle)
    with torch.inference_mode():
        out = system(torch.as_tensor(example)).numpy()
    signature = infer_signature(example, out)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "system.pt"
        torch.save(bundle, path)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(PROJECT_ROOT / "components" / "serving_entry.py"),
            artifacts={"system": str(path)},
            code_paths=[str(PROJECT_ROOT / "components")],
            signature=signature,
            pip_requirements=["torch", "numpy", "mlflow"],
        )
    return info.model_uri


def log_training_data(settings, mlflow_res, ds, manifest, splits: tuple[str, ...]) -> None:
    """The dataset splits the active run learns from, as MLflow inputs with the data's digest."""
    folder = str(settings.path(settings.params()["data"]["dir"]))
    mlflow_res.log_dataset(manifest, ds.name, settings.data_digest(ds.version), folder, splits)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text)).strip("_") or "file"


def report_artifacts(shared: list, attack_artifacts: dict, defense_artifacts: dict) -> list[tuple[str, str]]:
    """(file, MLflow artifact folder) for the report run: the report's own files under
    `report/`, each attack's files under `report/<defense>/<attack>/<label>/` and each
    defense's under `report/<defense>/defense/<label>/`, so that files of one name (every
    defense's membership ROC, every grid) never overwrite each other."""
    out = [(str(p), "report") for p in shared]
    for d, attacks in attack_artifacts.items():
        for attack, files in attacks.items():
            out += [(str(p), f"report/{_slug(d)}/{_slug(attack)}/{_slug(label)}") for label, p in files.items()]
    for d, files in defense_artifacts.items():
        out += [(str(p), f"report/{_slug(d)}/defense/{_slug(label)}") for label, p in files.items()]
    return out
