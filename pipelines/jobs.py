"""Jobs: the whole graph for one defense partition, and its three stages (so the CLI and
the UI can prepare once, then run each defense, then report)."""

import dagster as dg

from pipelines.assets.model_assets import defense_partitions

PREPARE = dg.AssetSelection.assets("face_dataset", "dataset_splits", "baseline_fr_model", "evaluation_fr_model")
DEFEND = dg.AssetSelection.assets("protected_system", "attack_results", "defense_sweep")
REPORT = dg.AssetSelection.assets("privacy_utility_report", "promotion_candidates", "registered_model")

full_pipeline = dg.define_asset_job(
    "full_pipeline", selection=dg.AssetSelection.all(), partitions_def=defense_partitions,
    description="The whole graph for one defense partition: data, models, the defended system, attacks, report.")
prepare_job = dg.define_asset_job("prepare", selection=PREPARE, description="Ingest, split, train base models.")
defense_job = dg.define_asset_job("defend_and_attack", selection=DEFEND, partitions_def=defense_partitions,
                                  description="Build one defended system, run the attack battery on it, and sweep its privacy knob.")
report_job = dg.define_asset_job("report", selection=REPORT, description="Report, promotion gate and promotion.")

ALL_JOBS = [full_pipeline, prepare_job, defense_job, report_job]
