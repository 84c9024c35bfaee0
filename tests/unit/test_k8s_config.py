"""deploy/k8s against the real schemas: the executor run config against dagster-k8s's
k8s_job_executor (through Dagster's run-config validation of the real job), each step's
Kubernetes Job built by dagster-k8s's own constructor (which checks every key against the
kubernetes client models), and the instance config against Dagster's instance schema and
K8sRunLauncher's config schema. Nothing here talks to a cluster."""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

from components.config import load_params
from pipelines.definitions import ASSETS, build_definitions

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
TRAINING_STEPS = {"baseline_fr_model": "baseline", "evaluation_fr_model": "evaluation"}


@pytest.fixture(scope="module")
def run_config() -> dict:
    return yaml.safe_load((K8S / "run_config.yaml").read_text())


@pytest.fixture(scope="module")
def k8s_job(tmp_path_factory) -> dg.JobDefinition:
    """full_pipeline of the project's definitions, on the (unconfigured) k8s executor."""
    work = tmp_path_factory.mktemp("k8s")
    local = build_definitions(profile="ci", workdir=str(work / "w"), reports_dir=str(work / "r"),
                              mlflow_uri=f"sqlite:///{work / 'mlflow.db'}")
    return dg.Definitions.merge(local, dg.Definitions(executor=k8s_job_executor)).resolve_job_def("full_pipeline")


@pytest.fixture(scope="module")
def executor_config(k8s_job, run_config) -> dict:
    return dg.validate_run_config(k8s_job, run_config)["execution"][k8s_job_executor.name]  # defaults filled in


def _env(cfg: dict) -> dict[str, str]:
    return dict(item.split("=", 1) for item in cfg["env_vars"])


def test_run_config_validates_against_the_k8s_executor_schema(k8s_job, run_config, executor_config):
    assert executor_config["job_image"] and executor_config["job_namespace"]
    # the validation is real: a misspelt field or a wrong type is refused
    for bad in ({"job_imagee": "x"}, {"max_concurrent": "many"}, {"env_vars": "A=1"}):
        broken = {"execution": {"config": {**run_config["execution"]["config"], **bad}}}
        with pytest.raises(dg.DagsterInvalidConfigError):
            dg.validate_run_config(k8s_job, broken)


def _step_job(cfg: dict, step: str):
    """The Kubernetes Job dagster-k8s would create for `step`: the container context built
    from the executor config as k8s_job_executor builds it, merged with the step's
    per_step_k8s_config as K8sStepHandler merges it, then construct_dagster_k8s_job."""
    context = K8sContainerContext(
        image_pull_policy=cfg.get("image_pull_policy"), image_pull_secrets=cfg.get("image_pull_secrets"),
        service_account_name=cfg.get("service_account_name"), env_config_maps=cfg.get("env_config_maps"),
        env_secrets=cfg.get("env_secrets"), env_vars=cfg.get("env_vars"), volume_mounts=cfg.get("volume_mounts"),
        volumes=cfg.get("volumes"), labels=cfg.get("labels"), namespace=cfg.get("job_namespace"),
        resources=cfg.get("resources"), scheduler_name=cfg.get("scheduler_name"),
        security_context=cfg.get("security_context"),
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(cfg.get("step_k8s_config", {})))
    context = context.merge(K8sContainerContext(
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(cfg["per_step_k8s_config"].get(step, {}))))
    job_config = DagsterK8sJobConfig(job_image=cfg["job_image"], dagster_home="/opt/dagster/dagster_home",
                                     instance_config_map="dagster-instance")
    return construct_dagster_k8s_job(job_config, ["dagster", "api", "execute_step"], f"dagster-step-{step}",
                                     user_defined_k8s_config=context.run_k8s_config, pod_name=f"step-{step}",
                                     component="step_worker", labels={"dagster/op": step})


def test_each_step_gets_a_valid_kubernetes_job(executor_config):
    steps = {a.op.name for a in ASSETS}
    assert set(executor_config["per_step_k8s_config"]) <= steps   # no config for a step that does not exist
    for step in sorted(steps):
        pod = _step_job(executor_config, step).spec.template.spec
        container = pod.containers[0]
        env = {e.name: e.value for e in container.env}
        assert container.image == executor_config["job_image"]
        assert env["MLFLOW_TRACKING_URI"].startswith("http") and env["PRIVFACE_WORKDIR"].startswith("/shared")
        assert "/shared" in {m.mount_path for m in container.volume_mounts}
        claims = {v.name: v.persistent_volume_claim for v in pod.volumes}
        assert claims["shared"].claim_name
        gpus = (container.resources.limits or {}).get("nvidia.com/gpu")
        assert (gpus is not None) == (step in executor_config["per_step_k8s_config"] and step != "face_dataset"), step

    # face_dataset pulls the data version of data.dvc from the DVC remote into the pod first
    pod = _step_job(executor_config, "face_dataset").spec.template.spec
    init = {c.name: c for c in pod.init_containers}["dvc-pull"]
    assert "dvc pull data.dvc" in init.command[-1] and init.image == executor_config["job_image"]
    remote = {e.name: e.value for e in init.env}["DVC_REMOTE_URL"]
    assert remote == _env(executor_config)["DVC_REMOTE_URL"]
    data_mounts = {m.mount_path for m in pod.containers[0].volume_mounts} & {m.mount_path for m in init.volume_mounts}
    assert data_mounts == {"/app/data"}

    # the kubernetes models check the keys: a misspelt field inside a pod spec is refused
    bad = copy.deepcopy(executor_config)
    bad["per_step_k8s_config"]["face_dataset"]["pod_spec_config"]["initContainerz"] = []
    with pytest.raises(Exception, match="initContainerz"):
        _step_job(bad, "face_dataset")


def test_gpu_requests_cover_the_gpu_pool_and_the_training_world_size(executor_config):
    gpu_pool = {a.op.name for a in ASSETS if a.op.pool == "gpu"}
    with_gpu = {s for s in (a.op.name for a in ASSETS)
                if (_step_job(executor_config, s).spec.template.spec.containers[0].resources.limits or {})
                .get("nvidia.com/gpu")}
    assert with_gpu == gpu_pool
    params = load_params(ROOT / "params.yaml", _env(executor_config)["PRIVFACE_PROFILE"])
    for step, block in TRAINING_STEPS.items():   # torchrun takes one GPU per rank
        limits = _step_job(executor_config, step).spec.template.spec.containers[0].resources.limits
        assert int(limits["nvidia.com/gpu"]) == int(params[block].get("world_size", 1)), step


def test_env_vars_are_the_ones_the_definitions_read(executor_config):
    source = (ROOT / "pipelines" / "definitions.py").read_text()
    read = set(re.findall(r'os\.environ\.get\("([A-Z_]+)"', source))
    env = _env(executor_config)
    ours = {k for k in env if k.startswith("PRIVFACE_") or k == "MLFLOW_TRACKING_URI"}
    assert {"PRIVFACE_PROFILE", "PRIVFACE_WORKDIR", "PRIVFACE_REPORTS_DIR", "MLFLOW_TRACKING_URI"} <= ours
    assert ours <= read, ours - read                  # a misspelt name would be silently ignored
    assert load_params(ROOT / "params.yaml", env["PRIVFACE_PROFILE"])["profile"] == env["PRIVFACE_PROFILE"]


def test_instance_config_validates_against_dagster_and_the_k8s_run_launcher(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(K8S / "dagster.yaml", home / "dagster.yaml")
    config, _ = dagster_instance_config(str(home))
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    assert validate_config(K8sRunLauncher.config_type(), launcher["config"]).success
    assert "postgres" in config["storage"]
    # the launcher schema check is real
    assert not validate_config(K8sRunLauncher.config_type(), {**launcher["config"], "job_imag": "x"}).success
    assert not validate_config(K8sRunLauncher.config_type(),
                               {k: v for k, v in launcher["config"].items() if k != "instance_config_map"}).success


def test_k8s_definitions_module_runs_the_jobs_on_the_configured_k8s_executor():
    spec = importlib.util.spec_from_file_location("privface_k8s_definitions", K8S / "definitions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    job = module.defs.resolve_job_def("full_pipeline")
    assert job.executor_def.name == "privface_k8s"
    assert {a.key for a in ASSETS} <= set(module.defs.resolve_asset_graph().get_all_asset_keys())
