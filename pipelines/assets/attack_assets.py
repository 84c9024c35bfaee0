"""The attack battery against one defended system (partition): every registered attack
that applies runs, logs its parameters, strength and measures to MLflow; the others are
recorded with the reason they do not apply."""


import dagster as dg
import mlflow

from components.attacks import ATTACKS, AttackContext, NotApplicable
from components.attacks.sharing import SharedWork, context_digest
from components.attacks.variants import run_variants
from components.data.ingest import FaceDataset
from components.defenses import load_system
from components.metrics.intervals import as_lists
from components.models.fr_model import from_bundle
from pipelines.metadata import meta_json
from pipelines.assets.model_assets import defense_partitions
from pipelines.refusals import require_one_dataset
from pipelines.resources import ComputeResource, MLflowResource, PrivfaceSettings
from pipelines.tracking import log_params, log_training_data


@dg.asset(group_name="attacks", pool="gpu", partitions_def=defense_partitions, kinds={"pytorch", "mlflow"},
          description="Privacy attacks (template inversion, representation recovery, model inversion, "
                      "membership and attribute inference) against one defended system.")
def attack_results(context: dg.AssetExecutionContext, settings: PrivfaceSettings, compute: ComputeResource,
                   mlflow_tracking: MLflowResource, protected_system: dict, face_dataset: FaceDataset,
                   dataset_splits: dict, evaluation_fr_model: dict) -> dict:
    name = context.partition_key
    version = require_one_dataset(face_dataset=face_dataset, dataset_splits=dataset_splits,
                                  protected_system=protected_system, evaluation_fr_model=evaluation_fr_model)
    params = settings.params()
    system = load_system(protected_system)
    evaluation = from_bundle(evaluation_fr_model)
    measures, strengths, not_applicable, artifacts, replicates = {}, {}, {}, {}, {}
    device, workdir = compute.device(), settings.workdir() / "attacks" / name
    shared = shared_attacker_work(settings, face_dataset.images, dataset_splits["manifest"], dataset_splits["pairs"],
                                  evaluation)
    bootstrap = settings.bootstrap(dataset_splits["manifest"])
    with mlflow_tracking.run(context, "attack_results", tags={"defense": name}):
        log_training_data(settings, mlflow_tracking, face_dataset, dataset_splits["manifest"], ("public",))
        for attack_name, attack in ATTACKS.items():
            reason = attack.applies_to(system)
            if reason:
                not_applicable[attack_name] = reason
                continue
            ctx = AttackContext(defense=name, system=system, images=face_dataset.images,
                                manifest=dataset_splits["manifest"], pairs=dataset_splits["pairs"],
                                evaluation=evaluation, params=params.get("attacks", {}).get(attack_name, {}),
                                device=device, workdir=workdir / attack_name,
                                seed=params["seed"], progress=settings.progress, shared=shared,
                                bootstrap=bootstrap, extra={"attack_params": params.get("attacks", {})})
            try:
                result = run_variants(attack, ctx)
            except NotApplicable as why:
                not_applicable[attack_name] = str(why)
                continue
            measures[attack_name] = result.measures
            replicates[attack_name] = as_lists(result.replicates)
            strengths[attack_name] = result.strength
            log_params(result.strength, prefix=f"{attack_name}.")
            mlflow.log_metrics(_flat_metrics(result.measures, f"{attack_name}."))
            for label, path in result.artifacts.items():
                mlflow.log_artifact(str(path), artifact_path=f"attacks/{attack_name}")
            artifacts[attack_name] = {label: str(path) for label, path in result.artifacts.items()}
        mlflow.set_tags({f"not_applicable.{k}": v for k, v in not_applicable.items()})
    context.add_output_metadata({
        "attacks_run": len(measures),
        "attacks_registered": len(ATTACKS),
        "measures": meta_json(measures),
        "not_applicable": dg.MetadataValue.json(not_applicable),
        "shared_work_reused": dg.MetadataValue.json(shared.hits),
    })
    return {"attacks": measures, "strength": strengths, "not_applicable": not_applicable, "artifacts": artifacts,
            "replicates": replicates, "bootstrap": bootstrap.fingerprint, "data_version": version}


def shared_attacker_work(settings: PrivfaceSettings, images, manifest, pairs, evaluation) -> SharedWork:
    """The store of attacker work shared between systems of one workdir (the battery and the
    sweeps use the same one, so a sweep point meets the battery's attackers)."""
    return SharedWork(settings.workdir() / "attacks" / "_shared", context_digest(images, manifest, pairs, evaluation))


def _flat_metrics(d: dict, prefix: str) -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_metrics(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)):
            out[f"{prefix}{k}".replace("@", "_at_")] = float(v)
    return out
