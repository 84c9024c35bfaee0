"""Resources: the pipeline settings (profile and params), the compute device, MLflow."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import dagster as dg
import yaml
from pydantic import PrivateAttr

from components.config import deep_merge, load_params, resolve_path
from pipelines.io_manager import PrivfaceIOManager

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class PrivfaceSettings(dg.ConfigurableResource):
    """Which profile of params.yaml to run, optionally on the user's own folder of faces."""

    profile: str = "demo"
    params_path: str = str(PROJECT_ROOT / "params.yaml")
    data_dir: str = ""            # a folder of identity sub-folders; empty: the profile's data
    defenses: str = ""            # comma list overriding the profile's run list
    workdir_override: str = ""    # overrides params' workdir (tests use temp dirs)
    reports_override: str = ""    # overrides params' reports_dir
    overrides: str = ""           # JSON object deep-merged over the profile (benchmarks, experiments)
    dvc_file: str = "data.dvc"    # the DVC file data_change_sensor watches (relative: to the project)
    progress: bool = True

    def params(self) -> dict:
        overrides = json.loads(self.overrides) if self.overrides else {}
        if self.data_dir:
            d = Path(self.data_dir).expanduser().resolve()
            # a user's folder gets its own store and reports, keyed by its full path: two
            # folders of one base name (data/a/faces, data/b/faces) never share them
            key = dataset_key(d)
            base = load_params(self.params_path, self.profile)   # checked: its paths are used right here
            overrides = deep_merge(overrides, {"data": {"source": "folder", "dir": str(d), "name": d.name},
                                               "workdir": f"{base['workdir'].rstrip('/')}-{key}",
                                               "reports_dir": f"{base['reports_dir'].rstrip('/')}/"
                                                              f"{self.profile}-{key}"})
        if self.defenses:
            overrides["defenses"] = [x.strip() for x in self.defenses.split(",") if x.strip()]
        return load_params(self.params_path, self.profile, overrides)

    def path(self, value: str) -> Path:
        return resolve_path(value, PROJECT_ROOT)

    def workdir(self) -> Path:
        return self.path(self.workdir_override or self.params()["workdir"])

    def reports_dir(self) -> Path:
        return self.path(self.reports_override or self.params()["reports_dir"])

    def dataset_key(self) -> str:
        """Who the data is: the user's folder by its full path, else the profile's dataset name."""
        if self.data_dir:
            return dataset_key(Path(self.data_dir).expanduser().resolve())
        return _safe(self.params()["data"]["name"])

    def bootstrap(self, manifest):
        """The run's bootstrap over identities (components.metrics.intervals): one table over
        every identity of the dataset, seeded by `seed`, shared by every figure."""
        from components.metrics.intervals import IdentityBootstrap

        p = self.params()
        return IdentityBootstrap(manifest["identity"].to_numpy(), p["intervals"]["replicates"], p["seed"])

    def data_digest(self, version: str) -> str:
        """The digest of the run's dataset for MLflow: the DVC md5 of data/ where DVC tracks
        the dataset (it lies under data/ and data.dvc records an md5), else its content
        version `version` (a user's folder elsewhere)."""
        folder = self.path(self.params()["data"]["dir"]).resolve()
        md5 = dvc_data_md5(self.path(self.dvc_file))
        tracked = (PROJECT_ROOT / "data").resolve()
        return md5 if md5 != "none" and folder.is_relative_to(tracked) else version

    def experiment(self) -> str:
        """The MLflow experiment of this dataset and profile (params' mlflow.experiment, a
        template of {dataset} and {profile}): demo, ci and a user's folder never share one."""
        return self.params()["mlflow"]["experiment"].format(dataset=self.dataset_key(), profile=self.profile)

    def registered_model(self, defense: str) -> str:
        """The registry name of a defense's models on this dataset at this image size (the
        canonical images differ with it): a champion is only ever compared with versions
        trained on the same data."""
        params = self.params()
        return (f"{params['mlflow']['registered_model_prefix']}-{self.dataset_key()}-"
                f"{params['data']['image_size']}px-{defense}")


def _safe(name: str) -> str:
    """A name usable in paths and in MLflow model URIs (models:/<name>@alias)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "data"


def dataset_key(folder: Path) -> str:
    """`<base name>-<8 hex of the full path>`: readable, and distinct for same-named folders."""
    return f"{_safe(folder.name)}-{hashlib.sha256(str(folder).encode()).hexdigest()[:8]}"


class ComputeResource(dg.ConfigurableResource):
    """The torch device: CUDA when present (preference "auto"), else the CPU."""

    preference: str = "auto"
    threads: int = 0

    def device(self):
        import torch

        from components.training.device import pick_device

        if self.threads:
            torch.set_num_threads(self.threads)
        return pick_device(self.preference)


def code_version() -> str:
    """The git commit of the code (with "+dirty" for local changes), else "unknown"."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=PROJECT_ROOT, capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_data_md5(dvc_file: Path = PROJECT_ROOT / "data.dvc") -> str:
    """The md5 of data/ recorded in data.dvc ("none" when the file is absent)."""
    if not dvc_file.is_file():
        return "none"
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", [])
    return str(outs[0].get("md5", "none")) if outs else "none"


def _interrupted(exc: BaseException) -> bool:
    """An interrupt (not an Exception), or an error raised while one was being handled (an
    interrupt inside torch.save surfaces as a RuntimeError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if not isinstance(exc, Exception):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _sqlite_path(uri: str) -> Path | None:
    """The file of a `sqlite:////abs/path` store URI, else None (a server, a database)."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _store_lock(uri: str):
    """An inter-process lock beside a sqlite store (a no-op for servers). MLflow creates and
    migrates a new sqlite db's tables without a lock (SqlAlchemyStore.__init__), so two
    processes opening a fresh store at once (two runs, or two steps of one multiprocess
    run) fail with "index ... already exists" or "database is locked"; registering the
    same content twice at once would also make two versions."""
    from components.atomic import path_lock

    path = _sqlite_path(uri)
    return path_lock(path) if path is not None else contextlib.nullcontext()


def _use_wal(uri: str) -> None:
    """Switch a sqlite store to write-ahead logging (persistent in the file), so readers no
    longer block the writer of another run; MLflow already waits 20 s on a busy db."""
    import sqlite3

    path = _sqlite_path(uri)
    if path is None:
        return
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            pass  # in use by a process holding a transaction; WAL is an optimisation


def _retry(call, attempts: int = 8, first_wait: float = 0.25):
    """`call()`, called again after a growing pause while the store reports itself busy
    (a sqlite "database is locked" arrives as an MlflowException TEMPORARILY_UNAVAILABLE;
    a failed call was rolled back, so calling again is safe)."""
    import random
    import time

    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001  (re-raised unless it is a busy store)
            busy = getattr(exc, "error_code", "") == "TEMPORARILY_UNAVAILABLE" or "database is locked" in str(exc)
            if not busy or attempt == attempts - 1:
                raise
            time.sleep(first_wait * 2 ** attempt * (0.5 + random.random()))


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking and registry: one run per asset partition, models registered once
    per content hash, aliases moved only by the promotion gate.

    Safe for several runs at once on one store: a local sqlite store is created under a file
    lock and switched to WAL, and the calls made here are retried while the store is busy."""

    tracking_uri: str = ""         # empty: params' mlflow.tracking_uri (or MLFLOW_TRACKING_URI)
    artifact_root: str = ""
    experiment: str = "privface"

    _client = PrivateAttr(default=None)

    def resolved_uri(self) -> str:
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow/mlflow.db"
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            rel = uri[len("sqlite:///"):]
            path = resolve_path(rel, PROJECT_ROOT)
            path.parent.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{path}"
        return uri

    def client(self):
        import mlflow

        if self._client is None:
            uri = self.resolved_uri()
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            with _store_lock(uri):
                # opening the tracking store (in MlflowClient()) and the registry store (first
                # registry call) creates and migrates a new sqlite db's tables
                client = mlflow.MlflowClient(uri, uri)
                _retry(lambda: client.search_registered_models(max_results=1))
                if _retry(lambda: client.get_experiment_by_name(self.experiment)) is None:
                    try:
                        client.create_experiment(self.experiment, artifact_location=self._artifact_location())
                    except Exception:  # created by a concurrent run in between (on a server)
                        if _retry(lambda: client.get_experiment_by_name(self.experiment)) is None:
                            raise
                _use_wal(uri)
            self._client = client
        return self._client

    def _artifact_location(self) -> str | None:
        """Local stores keep artifacts beside the sqlite db; a server chooses its own."""
        uri = self.resolved_uri()
        if not uri.startswith("sqlite:///"):
            return None
        if self.artifact_root:
            root = resolve_path(self.artifact_root, PROJECT_ROOT)
        else:
            root = Path(uri[len("sqlite:///"):]).parent / "artifacts"
        root.mkdir(parents=True, exist_ok=True)
        return root.as_uri()

    @contextlib.contextmanager
    def run(self, context: dg.AssetExecutionContext, asset: str, tags: dict | None = None):
        """The MLflow run of this (Dagster run, asset, partition); reused if it exists, so a
        retried step never duplicates it. Marked FAILED when the body raises, KILLED when it
        is interrupted (the `privface` command also closes runs its interrupt left RUNNING)."""
        import mlflow

        client = self.client()
        partitioned = context.has_partition_key and context.assets_def.partitions_def is not None
        partition = context.partition_key if partitioned else "all"
        exp = _retry(lambda: client.get_experiment_by_name(self.experiment))
        query = (f"tags.dagster_run_id = '{context.run_id}' and tags.asset = '{asset}' "
                 f"and tags.partition = '{partition}'")
        found = _retry(lambda: client.search_runs([exp.experiment_id], filter_string=query, max_results=1))
        all_tags = {"dagster_run_id": context.run_id, "asset": asset, "partition": partition,
                    "code_version": code_version(), "dvc_data_md5": dvc_data_md5(), **(tags or {})}
        run_name = f"{asset}[{partition}]"
        if found:
            active = _retry(lambda: mlflow.start_run(run_id=found[0].info.run_id))
        else:
            active = _retry(lambda: mlflow.start_run(experiment_id=exp.experiment_id, run_name=run_name,
                                                     tags=all_tags))
        try:
            with active as r:
                _retry(lambda: mlflow.set_tags(all_tags))
                yield r
        except BaseException as exc:
            if _interrupted(exc):   # Ctrl-C / SIGTERM (Dagster's interrupt): KILLED, not FAILED
                with contextlib.suppress(Exception):
                    _retry(lambda: client.set_terminated(active.info.run_id, "KILLED"), attempts=3)
            raise

    def log_dataset(self, manifest, name: str, digest: str, source: str, splits: tuple[str, ...]) -> None:
        """The active run's input datasets: per split, that split's rows of the manifest as an
        MLflow dataset named by the data and split, its digest the data's (the DVC md5 where
        DVC tracks it), so the UI's dataset column and lineage show what the run learnt from."""
        import mlflow
        import mlflow.data

        columns = [c for c in ("index", "identity", "identity_name", "path", "split") if c in manifest.columns]
        for split in splits:
            rows = manifest.loc[manifest["split"] == split, columns].reset_index(drop=True)
            dataset = mlflow.data.from_pandas(rows, source=source, name=f"{name}:{split}", digest=digest[:36])
            _retry(lambda: mlflow.log_input(dataset, context=split))

    def register(self, name: str, model_uri: str, run_id: str, content_hash: str, tags: dict,
                 description: str = "") -> str:
        """The registered version for this content; created only if no version holds it.
        `description` is its model card (components.reporting.model_card). A
        `models:/<model_id>` source (a logged model) is registered with its model_id,
        which an MLflow server requires (a local store accepts it without)."""
        from mlflow.exceptions import MlflowException

        client = self.client()
        ref = model_uri[len("models:/"):] if model_uri.startswith("models:/") else ""
        model_id = ref if ref and "/" not in ref and "@" not in ref else None
        with _store_lock(self.resolved_uri()):   # two runs registering the same weights: one version
            try:
                _retry(lambda: client.create_registered_model(name))
            except MlflowException:
                pass  # exists
            for mv in _retry(lambda: client.search_model_versions(f"name = '{name}'")):
                if mv.tags.get("content_hash") == content_hash:
                    return mv.version
            mv = _retry(lambda: client.create_model_version(name, model_uri, run_id=run_id, model_id=model_id,
                                                            tags={"content_hash": content_hash, **tags},
                                                            description=description or None))
            return mv.version

    def alias_version(self, name: str, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return _retry(lambda: self.client().get_model_version_by_alias(name, alias)).version
        except MlflowException:
            return None


def content_hash(state: dict) -> str:
    """sha256 over a state dict's tensors (names, shapes, bytes), for deduplication."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def build_resources(profile: str = "demo", data_dir: str = "", defenses: str = "", workdir: str = "",
                    reports_dir: str = "", mlflow_uri: str = "", device: str = "auto",
                    progress: bool = True, overrides: str = "", params_path: str = "") -> dict:
    """The resources of one configuration (tests pass temp dirs here)."""
    settings = PrivfaceSettings(profile=profile, data_dir=data_dir, defenses=defenses,
                                workdir_override=workdir, reports_override=reports_dir, progress=progress,
                                overrides=overrides, **({"params_path": params_path} if params_path else {}))
    params = settings.params()
    store = settings.workdir() / "store"
    return {
        "settings": settings,
        "compute": ComputeResource(preference=device, threads=int(params.get("threads", 0))),
        "mlflow_tracking": MLflowResource(tracking_uri=mlflow_uri or params["mlflow"]["tracking_uri"],
                                          artifact_root="" if mlflow_uri else params["mlflow"]["artifact_root"],
                                          experiment=settings.experiment()),
        "io_manager": PrivfaceIOManager(base_dir=str(store)),
    }
