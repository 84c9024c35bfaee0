"""The privacy-utility sweep of one defense partition: one system per value of the
defense's privacy knob (params `sweeps.<defense>`), each measured for utility and by the
attacks that target what the defense protects. `sweeps.<defense>.params` is merged over the
defense's own block for the sweep points only (e.g. shorter training, to fit the demo's
time budget); it is logged and reported with the points. `sweeps.<defense>.series` names
further overrides, each swept over the same values as a curve of its own (e.g. dctdp's two
modes); each point then carries its `series`. Partitions without a sweep return an empty
record at once."""


import dagster as dg
import mlflow

from components.attacks import ATTACKS, AttackContext, NotApplicable
from components.config import deep_merge
from components.data.ingest import FaceDataset
from components.data.splits import split_digest
from components.data.views import split_attributes, split_view
from components.defenses import DefenseContext, get_defense, sweep_systems
from components.metrics.utility import evaluate_system
from components.models.fr_model import from_bundle
from components.attacks.variants import run_variants
from pipelines.metadata import meta_json
from pipelines.assets.attack_assets import shared_attacker_work
from pipelines.assets.model_assets import _fingerprint, defense_partitions
from pipelines.refusals import require_one_dataset
from pipelines.resources import ComputeResource, MLflowResource, PrivfaceSettings
from pipelines.tracking import log_params, log_training_data


@dg.asset(group_name="defenses", pool="gpu", partitions_def=defense_partitions, kinds={"pytorch", "mlflow"},
          description="Utility and targeted attack success of a defense at each value of its privacy knob.")
def defense_sweep(context: dg.AssetExecutionContext, settings: PrivfaceSettings, compute: ComputeResource,
                  mlflow_tracking: MLflowResource, face_dataset: FaceDataset, dataset_splits: dict,
                  baseline_fr_model: dict, evaluation_fr_model: dict) -> dict:
    name = context.partition_key
    version = require_one_dataset(face_dataset=face_dataset, dataset_splits=dataset_splits,
                                  baseline_fr_model=baseline_fr_model, evaluation_fr_model=evaluation_fr_model)
    params = settings.params()
    sweep = (params.get("sweeps") or {}).get(name) or {}
    values = list(sweep.get("values", []))
    defense = get_defense(name)
    knob = getattr(defense, "privacy_knob", "")
    if not values or not knob:
        context.add_output_metadata({"points": 0, "reason": "no sweep configured for this defense"})
        return {"knob": knob, "points": [], "attacks": [], "data_version": version}
    manifest, pairs = dataset_splits["manifest"], dataset_splits["pairs"]
    train_x, train_y, _ = split_view(face_dataset.images, manifest, "train")
    public_x, public_y, _ = split_view(face_dataset.images, manifest, "public")
    device = compute.device()
    base_params = deep_merge(params.get(name, {}), sweep.get("params", {}))
    series = {k: deep_merge(base_params, v or {}) for k, v in (sweep.get("series") or {}).items()} or {"": base_params}
    evaluation = from_bundle(evaluation_fr_model)
    shared = shared_attacker_work(settings, face_dataset.images, manifest, pairs, evaluation)
    bootstrap = settings.bootstrap(manifest)
    attack_names = list(sweep.get("attacks", []))
    unknown = [a for a in attack_names if a not in ATTACKS]
    if unknown:
        raise dg.Failure(f"sweeps.{name}.attacks names unknown attacks {unknown}; known: {list(ATTACKS)}")
    all_attack_params = deep_merge(params.get("attacks", {}), sweep.get("attack_params", {}))
    points = []
    with mlflow_tracking.run(context, "defense_sweep", tags={"defense": name}):
        log_training_data(settings, mlflow_tracking, face_dataset, dataset_splits["manifest"], ("train", "public"))
        log_params({"knob": knob, "values": values, "attacks": attack_names,
                    "attack_params": sweep.get("attack_params", {}), "params": sweep.get("params", {}),
                    "series": sweep.get("series", {})})
        step = 0
        for label, defense_params in series.items():
            ckpt = settings.workdir() / "checkpoints" / "sweeps" / name / _fingerprint(
                face_dataset.version, split_digest(manifest), baseline_fr_model["spec"], defense_params,
                params["seed"], params["baseline"]["train"])
            ctx = DefenseContext(params=defense_params, train_images=train_x, train_labels=train_y,
                                 public_images=public_x, public_labels=public_y,
                                 baseline=from_bundle(baseline_fr_model),
                                 train_attributes=split_attributes(manifest, "train"),
                                 public_attributes=split_attributes(manifest, "public"),
                                 device=device, checkpoint_dir=ckpt, progress=settings.progress, seed=params["seed"],
                                 extra={"baseline_train": params["baseline"]["train"]})
            for value, system in zip(values, sweep_systems(defense, ctx, values)):
                system = system.to("cpu").eval()
                utility, _ = evaluate_system(system, face_dataset.images, manifest, pairs, device="cpu",
                                             probe_fn=system.probe if system.has_probe else None,
                                             bootstrap=bootstrap)
                workdir = settings.workdir() / "sweeps" / name / label / f"{knob}={value}"
                attacks, strength = {}, {}
                for attack_name in attack_names:
                    attack = ATTACKS[attack_name]
                    if attack.applies_to(system):
                        continue
                    actx = AttackContext(defense=name, system=system, images=face_dataset.images, manifest=manifest,
                                         pairs=pairs, evaluation=evaluation,
                                         params=all_attack_params.get(attack_name, {}), device=device,
                                         workdir=workdir / attack_name, seed=params["seed"],
                                         progress=settings.progress, shared=shared, bootstrap=bootstrap,
                                         extra={"attack_params": all_attack_params})
                    try:
                        result = run_variants(attack, actx)
                    except NotApplicable:
                        continue
                    attacks[attack_name], strength[attack_name] = result.measures, result.strength
                point = {"value": value, "operating_point": system.operating_point(), "utility": utility,
                         "attacks": attacks, "strength": strength, "measures": system.measures(),
                         **({"series": label} if label else {})}
                points.append(point)
                mlflow.log_metric("sweep_verification_accuracy", utility["verification_accuracy"], step=step)
                for attack_name, m in attacks.items():
                    for k, v in m.items():
                        if isinstance(v, (int, float)):
                            mlflow.log_metric(f"sweep_{attack_name}.{k}", float(v), step=step)
                step += 1
                context.log.info(f"{name} sweep {label + ' ' if label else ''}{knob}={value}: accuracy "
                                 f"{utility['verification_accuracy']:.4f}, attacks {attacks}")
    context.add_output_metadata({"points": len(points), "knob": knob,
                                 "shared_work_reused": dg.MetadataValue.json(shared.hits),
                                 "sweep": meta_json(points)})
    return {"knob": knob, "points": points, "attacks": attack_names, "params": sweep.get("params", {}),
            "attack_params": sweep.get("attack_params", {}), "series": sweep.get("series", {}),
            "data_version": version}
