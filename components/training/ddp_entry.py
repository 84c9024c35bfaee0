"""Train an FR model data-parallel under torchrun, and the launcher that runs it.

Worker side (one process per rank, started by torchrun)::

    python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        -m components.training.ddp_entry --job job.json --data data.npz --out bundle.pt \\
        [--report report.json] [--checkpoint-dir DIR] [--device auto|cpu|cuda]

job.json holds ``{"spec": <make_spec()>, "train": <TrainConfig fields>, "progress": false}``,
data.npz the uint8 ``images`` (N, H, W, C) and integer ``labels`` (N,). Every rank loads
both and runs the shared training loop (which splits the batches between ranks); rank 0
prints one ``EVENT`` line per epoch and writes the bundle (``fr_model.to_bundle``: tensors,
numbers and strings only, so ``torch.load(weights_only=True)`` reads it) atomically.

Parent side: ``train_fr_model_torchrun`` writes those inputs to a temp folder, runs
torchrun, streams its output line by line (epoch lines to ``on_epoch_end``, the rest to
``log``) and reads the model back.
"""

from __future__ import annotations

import logging

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from components.atomic import atomic_write, atomic_write_text
from components.models.fr_model import FRModel, from_bundle, to_bundle, train_fr_model_and_result
from components.training.distributed import init_process_group, run_streaming, torchrun_command, worker_env

logger = logging.getLogger(__name__)

EVENT = "@privface-epoch "  # prefix of the per-epoch JSON lines rank 0 prints


@record  # a failing rank's traceback goes into torchrun's failure summary (the launcher's error)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="components.training.ddp_entry", description=__doc__.split("\n")[0])
    parser.add_argument("--job", required=True, help="JSON file: spec, train, progress")
    parser.add_argument("--data", required=True, help=".npz with images (uint8 NHWC) and labels")
    parser.add_argument("--out", required=True, help="where rank 0 writes the model bundle (.pt)")
    parser.add_argument("--report", help="where rank 0 writes a JSON summary of the run")
    parser.add_argument("--checkpoint-dir", help="resume from / checkpoint to this folder (rank 0 writes)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (each rank takes cuda:LOCAL_RANK)")
    args = parser.parse_args(argv)

    device = init_process_group(args.device)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        job = json.loads(Path(args.job).read_text())
        with np.load(args.data) as data:
            images, labels = data["images"], data["labels"]

        def emit(epoch: int, metrics: dict) -> None:
            sys.stdout.write(EVENT + json.dumps({**metrics, "epoch": epoch}) + "\n")   # the parent reads these
            sys.stdout.flush()

        model, result = train_fr_model_and_result(images, labels, job["spec"], job["train"], device=device,
                                                  checkpoint_dir=args.checkpoint_dir, on_epoch_end=emit,
                                                  progress=bool(job.get("progress", False)) and rank == 0)
        samples = [None] * world
        dist.all_gather_object(samples, result.samples_seen)
        if rank == 0:
            bundle = to_bundle(model)
            atomic_write(args.out, lambda fh: torch.save(bundle, fh))
            if args.report:
                atomic_write_text(args.report, json.dumps({
                    "world_size": world, "backend": dist.get_backend(), "device": device.type,
                    "samples_per_rank": samples, "resumed_from": result.resumed_from,
                    "history": result.history}, indent=1))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


def train_fr_model_torchrun(images: np.ndarray, labels: np.ndarray, spec: dict, train: dict, world_size: int,
                            device: torch.device | str = "cpu", checkpoint_dir: str | Path | None = None,
                            on_epoch_end: Callable[[int, dict], None] | None = None,
                            log: Callable[[str], None] | None = None, progress: bool = False,
                            work_dir: str | Path | None = None) -> tuple[FRModel, dict]:
    """``fr_model.train_fr_model`` in ``world_size`` processes on this machine (torchrun,
    one GPU per rank on CUDA). The inputs go through a temp folder in ``work_dir``; the
    returned model has its history, the dict is the run's report (world_size, backend,
    samples_per_rank). A failed run raises RuntimeError with the end of its output."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.device_count() < world_size:
        raise RuntimeError(f"world_size={world_size} needs {world_size} GPUs; {torch.cuda.device_count()} visible")
    log = log or logger.info
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="torchrun-", dir=work_dir) as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "data.npz", images=np.asarray(images), labels=np.asarray(labels))
        (tmp / "job.json").write_text(json.dumps({"spec": spec, "train": train, "progress": progress}))
        args = ["--job", str(tmp / "job.json"), "--data", str(tmp / "data.npz"), "--out", str(tmp / "bundle.pt"),
                "--report", str(tmp / "report.json"), "--device", device.type]
        if checkpoint_dir is not None:
            args += ["--checkpoint-dir", str(checkpoint_dir)]

        def on_line(line: str) -> None:
            if line.startswith(EVENT):
                metrics = json.loads(line[len(EVENT):])
                if on_epoch_end is not None:
                    on_epoch_end(int(metrics.pop("epoch")), metrics)
            elif line.strip():
                log(line)

        cmd = torchrun_command(world_size, "components.training.ddp_entry", args)
        log("launching: " + " ".join(cmd))
        env = {**worker_env(world_size, device), "TMPDIR": str(tmp)}  # torchrun's log folders go with it
        run_streaming(cmd, on_line, env=env)
        bundle = torch.load(tmp / "bundle.pt", map_location="cpu", weights_only=True)
        report = json.loads((tmp / "report.json").read_text())
    return from_bundle(bundle), report


__all__ = ["EVENT", "main", "train_fr_model_torchrun"]


if __name__ == "__main__":
    sys.exit(main())
