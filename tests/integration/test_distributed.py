"""Data-parallel training: 2 CPU ranks with gloo through a real torchrun subprocess give
the model single-process training gives, and the Dagster asset launches them.

Why the tolerance is tight: with each rank taking its half of every global batch, DDP
averaging the gradients and BatchNorm using global-batch statistics, the two runs compute
the same function of the same numbers; only float32 summation order differs (two
half-batch sums added instead of one sum), a relative error near 1e-7 per operation that
grows over the 12 SGD steps here to about 2e-5 on the weights (measured). A broken split
differs by orders of magnitude more: the test shows that training on half batches (what a
rank does alone without gradient averaging) moves the weights by more than 100 times the
tolerance, and every rank training on everything shows up in samples_per_rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import mlflow
import numpy as np
import pytest
import torch

from components.data.synthetic import SyntheticConfig, render_identity
from components.models.fr_model import FRModel, from_bundle, make_spec, train_fr_model
from components.training.checkpoint import load_checkpoint
from components.training.ddp_entry import train_fr_model_torchrun
from components.training.distributed import DataParallel, GlobalBatchNorm, run_streaming, sync_batchnorm
from pipelines.assets.data_assets import dataset_splits, face_dataset
from pipelines.assets.model_assets import baseline_fr_model
from pipelines.checks import baseline_model_sane
from pipelines.definitions import build_resources

pytestmark = pytest.mark.integration

ATOL = 1e-3          # on weights; measured difference about 2e-5 (see the module docstring)
TRAIN = {"epochs": 3, "batch_size": 32, "lr": 0.05, "warmup_epochs": 0, "seed": 0}
IDENTITIES, PER_IDENTITY = 16, 8


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, np.ndarray]:
    """16 synthetic identities x 8 images at 32 px (128 images: 4 global batches of 32)."""
    cfg = SyntheticConfig(identities=IDENTITIES, images_per_identity=PER_IDENTITY, size=32, seed=0)
    images, labels = [], []
    for i in range(IDENTITIES):
        shots, _ = render_identity(cfg, i)
        images += shots
        labels += [i] * len(shots)
    return np.stack(images).astype(np.uint8), np.asarray(labels)


@pytest.fixture()
def one_thread():
    """In-process reference training on one thread, like each torchrun rank here: on a busy
    2-core machine two threads per process mostly wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _spec() -> dict:
    return make_spec({"name": "resnet_small", "embedding_dim": 16, "widths": [4, 8, 8, 8]},
                     {"name": "arcface", "s": 16.0, "m": 0.2}, num_classes=IDENTITIES, input_size=32)


def _state(model: FRModel) -> dict[str, torch.Tensor]:
    return {**{f"backbone.{k}": v for k, v in model.backbone.state_dict().items()},
            **{f"head.{k}": v for k, v in model.head.state_dict().items()}}


def _max_float_diff(a: FRModel, b: FRModel) -> float:
    sa, sb = _state(a), _state(b)
    return max((sa[k] - sb[k]).abs().max().item() for k in sa if sa[k].is_floating_point())


def test_two_gloo_ranks_under_torchrun_match_single_process_training(faces, tmp_path, one_thread):
    images, labels = faces
    single = train_fr_model(images, labels, _spec(), TRAIN, progress=False)

    epochs, lines = [], []
    ckpt = tmp_path / "ckpt"
    ddp, report = train_fr_model_torchrun(images, labels, _spec(), TRAIN, world_size=2, device="cpu",
                                          checkpoint_dir=ckpt, on_epoch_end=lambda e, m: epochs.append((e, m)),
                                          log=lines.append, work_dir=tmp_path / "runs")

    assert report["world_size"] == 2 and report["backend"] == "gloo"
    # each rank trained on its half of every epoch, not on all of it
    assert report["samples_per_rank"] == [TRAIN["epochs"] * len(labels) // 2] * 2
    # rank 0 alone reported the epochs, with the global (both ranks') loss
    assert [e for e, _ in epochs] == [1, 2, 3]
    for (_, m), ref in zip(epochs, single.history):
        assert m["loss"] == pytest.approx(ref["loss"], rel=1e-4)
        assert m["lr"] == pytest.approx(ref["lr"])           # same number of steps: same schedule
        assert m["train_acc"] == pytest.approx(ref["train_acc"], abs=1.5 / len(labels))
    assert [h["loss"] for h in ddp.history] == [m["loss"] for _, m in epochs]

    # same weights and BatchNorm statistics as single-process training
    s_ddp, s_single = _state(ddp), _state(single)
    assert s_ddp.keys() == s_single.keys()
    for key, value in s_single.items():
        if value.is_floating_point():
            torch.testing.assert_close(s_ddp[key], value, atol=ATOL, rtol=0, msg=key)
        else:  # num_batches_tracked: the same number of optimizer steps
            assert torch.equal(s_ddp[key], value), key
    assert _max_float_diff(ddp, single) > 0    # it really ran elsewhere, not a copy of the reference

    # the tolerance discriminates: half-size batches (a rank alone) end far from both
    half = train_fr_model(images, labels, _spec(), {**TRAIN, "batch_size": 16}, progress=False)
    assert _max_float_diff(half, single) > 100 * ATOL

    # rank 0 checkpointed every epoch; single-process training resumes from it (here: is done)
    saved = load_checkpoint(ckpt / "last.pt")
    assert saved["epoch"] == 3 and len(saved["history"]) == 3
    resumed = train_fr_model(images, labels, _spec(), TRAIN, checkpoint_dir=ckpt, progress=False)
    assert _max_float_diff(resumed, ddp) == 0.0
    assert not list((tmp_path / "runs").iterdir())   # the launcher's temp folder is gone


def test_sharding_splits_each_global_batch_between_ranks():
    """DistributedSampler's split of the epoch permutation: step k's shares of all ranks
    are disjoint and together exactly global batch k (so the global batch is unchanged)."""
    for world, global_batch, steps in ((2, 32, 4), (3, 12, 5), (4, 64, 2)):
        shares = [DataParallel(rank=r, world_size=world).positions(steps * global_batch) for r in range(world)]
        local = global_batch // world
        for k in range(steps):
            batch = torch.cat([s[k * local:(k + 1) * local] for s in shares])
            assert sorted(batch.tolist()) == list(range(k * global_batch, (k + 1) * global_batch))
    with pytest.raises(ValueError, match="do not split evenly"):
        DataParallel(rank=0, world_size=3).positions(32)


def test_sync_batchnorm_swaps_in_place_and_keeps_state():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    net[1].running_mean.fill_(0.5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    weight = net[1].weight
    assert sync_batchnorm(net, torch.device("cpu")) is net and isinstance(net[1], GlobalBatchNorm)
    assert net[1].weight is weight              # the optimizer's parameter, not a copy
    after = net.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    # outside a process group it is plain BatchNorm
    x = torch.randn(6, 3, 8, 8)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    plain.load_state_dict(before)
    torch.testing.assert_close(net(x), plain(x))
    torch.testing.assert_close(net[1].running_var, plain[1].running_var)


def test_run_streaming_hands_over_lines_and_reports_failure():
    seen = []
    run_streaming([sys.executable, "-c", "print('a'); print('b')"], seen.append)
    assert seen == ["a", "b"]
    with pytest.raises(RuntimeError, match=r"exited with status 3(.|\n)*boom"):
        run_streaming([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], lambda line: None)


def test_torchrun_worker_failure_fails_the_launcher(faces, tmp_path):
    """A batch that does not split over the ranks stops every rank, and the launcher
    raises with the workers' error instead of hanging or returning a model."""
    images, labels = faces
    with pytest.raises(RuntimeError, match="does not split over world_size=3"):
        train_fr_model_torchrun(images, labels, _spec(), {**TRAIN, "epochs": 1}, world_size=3, device="cpu",
                                log=lambda line: None, work_dir=tmp_path)


def test_entry_module_under_the_torchrun_cli_resumes_a_single_process_checkpoint(faces, tmp_path, one_thread):
    """The documented command line (`python -m torch.distributed.run ... -m
    components.training.ddp_entry`) picks up a checkpoint written by single-process
    training, and rank 0 writes a weights_only-loadable bundle equal to an uninterrupted run."""
    images, labels = faces[0][:64], faces[1][:64]
    train = {**TRAIN, "epochs": 2, "schedule": "step"}   # a step schedule lets a run be extended
    ckpt = tmp_path / "ckpt"
    train_fr_model(images, labels, _spec(), {**train, "epochs": 1}, checkpoint_dir=ckpt, progress=False)
    uninterrupted = train_fr_model(images, labels, _spec(), train, progress=False)

    np.savez(tmp_path / "data.npz", images=images, labels=labels)
    (tmp_path / "job.json").write_text(json.dumps({"spec": _spec(), "train": train}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "components.training.ddp_entry", "--job", str(tmp_path / "job.json"),
           "--data", str(tmp_path / "data.npz"), "--out", str(tmp_path / "model.pt"),
           "--report", str(tmp_path / "report.json"), "--checkpoint-dir", str(ckpt), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["resumed_from"] == 1 and report["samples_per_rank"] == [32, 32]   # only epoch 2 ran here
    assert done.stdout.count("@privface-epoch ") == 1                              # reported by rank 0 only
    bundle = torch.load(tmp_path / "model.pt", weights_only=True)
    assert bundle["kind"] == "fr_model" and len(bundle["history"]) == 2
    assert _max_float_diff(from_bundle(bundle), uninterrupted) < ATOL


def test_dagster_asset_trains_with_world_size_2(tmp_path, ci_data, dagster_home, mlflow_uri):
    """baseline_fr_model with params' baseline.world_size = 2 on the ci profile: real
    dg.materialize with its upstream assets and its blocking sanity check."""
    resources = build_resources(profile="ci", data_dir=str(ci_data), workdir=str(tmp_path / "work"),
                                reports_dir=str(tmp_path / "reports"), mlflow_uri=mlflow_uri, device="cpu",
                                progress=False, overrides=json.dumps({"baseline": {"world_size": 2}}))
    instance = dg.DagsterInstance.get()
    result = dg.materialize([face_dataset, dataset_splits, baseline_fr_model, baseline_model_sane],
                            resources=resources, instance=instance)
    assert result.success
    # trained by torchrun with 2 ranks, its output streamed into the step's log
    messages = [e.user_message for e in instance.all_logs(result.run_id) if e.step_key == "baseline_fr_model"]
    assert any("torch.distributed.run" in m and "--nproc_per_node 2" in m for m in messages), messages
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks.get("baseline_model_sane") is True, checks
    meta = result.asset_materializations_for_node("baseline_fr_model")[0].metadata
    assert meta["world_size"].value == 2 and meta["epochs"].value == 2
    bundle = result.output_for_node("baseline_fr_model")
    assert bundle["kind"] == "fr_model" and len(bundle["history"]) == 2
    # rank 0's epoch lines became the MLflow run's per-epoch metrics
    run = mlflow.MlflowClient(mlflow_uri, mlflow_uri).get_run(meta["mlflow_run_id"].value)
    assert run.data.params["world_size"] == "2"
    history = mlflow.MlflowClient(mlflow_uri, mlflow_uri).get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx([h["loss"] for h in bundle["history"]])
