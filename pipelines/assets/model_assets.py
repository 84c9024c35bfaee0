"""Model assets: the baseline FR model, the independent evaluation model, and one
defended system per defense partition. Each trains through `components`, tracks its
MLflow run, and returns a pickle-free bundle."""


import hashlib
import json
import shutil

import dagster as dg
import mlflow
import numpy as np

from components.data.ingest import FaceDataset
from components.data.splits import split_digest
from components.data.views import split_attributes, split_view
from components.defenses import DEFENSES, DefenseContext, get_defense, system_bundle
from components.metrics.embeddings import to_model_tensor
from components.metrics.plots import roc_plot
from components.metrics.utility import evaluate_system, pair_scores, scalars
from components.models.fr_model import FRModel, from_bundle, make_spec, to_bundle, train_fr_model
from components.reporting.model_card import model_card
from components.training.ddp_entry import train_fr_model_torchrun
from pipelines.metadata import meta_float, meta_json
from pipelines.refusals import require_one_dataset
from pipelines.resources import ComputeResource, MLflowResource, PrivfaceSettings, code_version, content_hash
from pipelines.tracking import epoch_logger, log_params, log_system_model, log_training_data

defense_partitions = dg.StaticPartitionsDefinition(list(DEFENSES))


class TrainingConfig(dg.Config):
    """Per-run choices. How many processes train is params.yaml's `<block>.world_size`
    (beside `train`, not in it: it says how to train, not what, so it changes neither the
    checkpoint folder nor the TrainConfig the defenses reuse)."""

    force_retrain: bool = False   # drop the finished checkpoint and train again


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _train_fr(context, settings: PrivfaceSettings, compute: ComputeResource, mlflow_res: MLflowResource,
              config: TrainingConfig, ds: FaceDataset, splits: dict, block: str) -> dict:
    """Train the FR model described by params[block] on the private train split."""
    require_one_dataset(face_dataset=ds, dataset_splits=splits)
    params = settings.params()
    manifest, pairs = splits["manifest"], splits["pairs"]
    images, labels, _ = split_view(ds.images, manifest, "train")
    spec = make_spec(params[block]["backbone"], params[block]["head"], num_classes=int(labels.max()) + 1,
                     input_size=params["data"]["image_size"])
    train = params[block]["train"]
    world_size = int(params[block].get("world_size", 1))
    ckpt = settings.workdir() / "checkpoints" / block / _fingerprint(ds.version, split_digest(manifest), spec, train)
    if config.force_retrain and ckpt.exists():
        shutil.rmtree(ckpt)
    device = compute.device()
    with mlflow_res.run(context, block, tags={"data_version": ds.version}) as run:
        log_training_data(settings, mlflow_res, ds, manifest, ("train",))
        log_params({"spec": spec, "train": train, "train_images": len(images), "world_size": world_size})
        if world_size > 1:  # torchrun subprocess: data-parallel ranks, output streamed to the run's log
            model, _ = train_fr_model_torchrun(images, labels, spec, train, world_size, device=device,
                                               checkpoint_dir=ckpt, on_epoch_end=epoch_logger("train_"),
                                               log=context.log.info, work_dir=settings.workdir() / "torchrun")
        else:
            model = train_fr_model(images, labels, spec, train, device=device, checkpoint_dir=ckpt,
                                   on_epoch_end=epoch_logger("train_"), progress=settings.progress)
        utility, templates = evaluate_system(lambda x: model.backbone(x), ds.images, manifest, pairs,
                                             device=device)
        mlflow.log_metrics({f"test_{k}": v for k, v in utility.items()})
    context.add_output_metadata({
        **{k: meta_float(v) for k, v in utility.items()},
        "epochs": len(model.history),
        "final_train_acc": float(model.history[-1]["train_acc"]) if model.history else 0.0,
        "device": str(device),
        "world_size": world_size,
        "mlflow_run_id": run.info.run_id,
        "checkpoint": str(ckpt),
        "data_version": ds.version,
    })
    return {**to_bundle(model), "data_version": ds.version}


@dg.asset(group_name="models", pool="gpu", kinds={"pytorch", "mlflow"},
          description="The undefended FR model (ArcFace head) trained on the private train identities.")
def baseline_fr_model(context: dg.AssetExecutionContext, config: TrainingConfig, settings: PrivfaceSettings,
                      compute: ComputeResource, mlflow_tracking: MLflowResource,
                      face_dataset: FaceDataset, dataset_splits: dict) -> dict:
    return _train_fr(context, settings, compute, mlflow_tracking, config, face_dataset, dataset_splits, "baseline")


@dg.asset(group_name="models", pool="gpu", kinds={"pytorch", "mlflow"},
          description="An independent FR model (other seed and architecture) that judges attacks.")
def evaluation_fr_model(context: dg.AssetExecutionContext, config: TrainingConfig, settings: PrivfaceSettings,
                        compute: ComputeResource, mlflow_tracking: MLflowResource,
                        face_dataset: FaceDataset, dataset_splits: dict) -> dict:
    return _train_fr(context, settings, compute, mlflow_tracking, config, face_dataset, dataset_splits, "evaluation")


@dg.asset(group_name="defenses", pool="gpu", partitions_def=defense_partitions, kinds={"pytorch", "mlflow"},
          description="One defended FR system per defense: protect / embed / template, its utility, "
                      "its MLflow run and registered model version.")
def protected_system(context: dg.AssetExecutionContext, settings: PrivfaceSettings, compute: ComputeResource,
                     mlflow_tracking: MLflowResource, face_dataset: FaceDataset, dataset_splits: dict,
                     baseline_fr_model: dict) -> dict:
    name = context.partition_key
    require_one_dataset(face_dataset=face_dataset, dataset_splits=dataset_splits, baseline_fr_model=baseline_fr_model)
    params = settings.params()
    defense = get_defense(name)
    manifest, pairs = dataset_splits["manifest"], dataset_splits["pairs"]
    train_x, train_y, _ = split_view(face_dataset.images, manifest, "train")
    public_x, public_y, _ = split_view(face_dataset.images, manifest, "public")
    baseline: FRModel = from_bundle(baseline_fr_model)
    device = compute.device()
    ckpt = settings.workdir() / "checkpoints" / "defenses" / name / _fingerprint(   # the seeds too: `run --seed`
        face_dataset.version, split_digest(manifest), baseline_fr_model["spec"], params.get(name, {}),
        params["seed"], params["baseline"]["train"])
    with mlflow_tracking.run(context, "protected_system", tags={"defense": name,
                                                               "data_version": face_dataset.version}) as run:
        log_training_data(settings, mlflow_tracking, face_dataset, manifest, ("train", "public"))
        ctx = DefenseContext(params=params.get(name, {}), train_images=train_x, train_labels=train_y,
                             public_images=public_x, public_labels=public_y, baseline=baseline,
                             train_attributes=split_attributes(manifest, "train"),
                             public_attributes=split_attributes(manifest, "public"),
                             device=device, checkpoint_dir=ckpt, on_epoch_end=epoch_logger(f"{name}_"),
                             progress=settings.progress, seed=params["seed"],
                             extra={"baseline_train": params["baseline"]["train"]})
        system = defense.build(ctx).to("cpu").eval()
        threat = defense.threat_model(params.get(name, {})).to_dict()
        log_params({"defense": name, "operating_point": system.operating_point(), "params": params.get(name, {}),
                    "threat_model": {k: ", ".join(v) if isinstance(v, list) else v for k, v in threat.items()}})
        utility, templates = evaluate_system(system, face_dataset.images, manifest, pairs, device="cpu",
                                             probe_fn=system.probe if system.has_probe else None,
                                             bootstrap=settings.bootstrap(manifest))
        mlflow.log_metrics(scalars(utility))
        scores = pair_scores(templates, pairs)
        roc_file = settings.workdir() / "figures" / f"roc_{name}.png"
        roc_plot({name: (scores, pairs["label"].to_numpy())}, roc_file, title=f"ROC: {name}")
        mlflow.log_artifact(str(roc_file), artifact_path="figures")
        artifacts = {label: str(path) for label, path in getattr(system, "artifacts", {}).items()}
        for path in artifacts.values():
            mlflow.log_artifact(path, artifact_path="defense")
        measures = system.measures()
        if measures:
            log_params({"measures": measures})
        bundle = system_bundle(system)
        example = to_model_tensor(face_dataset.images[manifest["index"].to_numpy()[:4]]).numpy()
        model_uri = log_system_model(bundle, example, name=f"privface-{name}")
        digest = content_hash(bundle["state"])
        registered = settings.registered_model(name)
        card = model_card(name, threat, utility, data_version=face_dataset.version, code_version=code_version(),
                          data_digest=settings.data_digest(face_dataset.version))
        version = mlflow_tracking.register(registered, model_uri, run.info.run_id, digest,
                                           tags={"defense": name, "data_version": face_dataset.version},
                                           description=card)
        mlflow.set_tags({"registered_model": registered, "model_version": version})
        # the registry's record of that version: weights equal to an earlier run's reuse its
        # version, whose model and run are that run's, and the metadata must say so
        held = mlflow_tracking.client().get_model_version(registered, version)
    context.add_output_metadata({
        **{k: meta_float(v) for k, v in scalars(utility).items()},
        "ci95": meta_json(utility.get("ci95", {})),
        "operating_point": dg.MetadataValue.json(system.operating_point()),
        "threat_model": dg.MetadataValue.json(threat),
        "registered_model": registered,
        "model_version": version,
        "model_uri": held.source,
        "model_run_id": held.run_id,
        "mlflow_run_id": run.info.run_id,
        "data_version": face_dataset.version,
    })
    return {**bundle, "data_version": face_dataset.version, "threat_model": threat, "utility": utility,
            "measures": measures,
            "artifacts": artifacts, "pair_scores": scores.astype(np.float32).tolist(),
            "mlflow": {"run_id": run.info.run_id, "model_uri": held.source, "model_version": str(version),
                       "registered_model": registered}}
