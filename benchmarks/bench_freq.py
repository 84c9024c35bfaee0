"""Benchmark: the vectorised block-DCT front end (``components.freq.BlockDCT``, D @ B @ D.T over all
8x8 blocks at once) vs a per-block reference that calls ``scipy.fft.dctn(block, norm="ortho")`` on
each 8x8 block of each YCbCr channel in a Python loop (after the same colour transform).
Checks both give the same coefficients and records the throughput ratio in reports/bench.json.

    python -m benchmarks.bench_freq [--size 64] [--batch 256] [--ref-images 16] [--repeat 5]
                                    [--threads 1] [--device cpu] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import timeit

import numpy as np
import torch
from scipy.fft import dctn

from benchmarks.report import record
from components.freq import BlockDCT, rgb_to_ycbcr

BLOCK = 8
COEFF_TOLERANCE = 1e-3  # float32 vs float64, coefficients up to ~1024 in JPEG units
SPEEDUP_GOAL = 10.0


def make_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Uniform random RGB images in [-1, 1]: the transform's cost does not depend on content."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


# ----------------------------------------------------------------------------- reference (per block)


def reference_block_dct(x: torch.Tensor) -> np.ndarray:
    """Same layout as BlockDCT (channel c*64 + i*8 + j on an H/8 x W/8 grid), one scipy call per block."""
    y = rgb_to_ycbcr(x.double()).numpy()
    n, c, h, w = y.shape
    out = np.empty((n, c * BLOCK * BLOCK, h // BLOCK, w // BLOCK))
    for k in range(n):
        for ch in range(c):
            for p in range(h // BLOCK):
                for q in range(w // BLOCK):
                    block = y[k, ch, p * BLOCK : (p + 1) * BLOCK, q * BLOCK : (q + 1) * BLOCK]
                    out[k, ch * BLOCK * BLOCK : (ch + 1) * BLOCK * BLOCK, p, q] = dctn(block, norm="ortho").ravel()
    return out


# ----------------------------------------------------------------------------- main


def _best_time(fn, repeat: int, min_total: float = 0.2) -> float:
    """Best-of-`repeat` seconds per call after a warm-up call; fast calls are looped so each sample lasts ~min_total."""
    fn()  # warm-up (allocator, kernels, caches)
    timer = timeit.Timer(fn)
    number, elapsed = timer.autorange()
    number = max(1, int(number * min_total / max(elapsed, 1e-9))) if elapsed < min_total else number
    return min(timer.repeat(repeat=repeat, number=number)) / number


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="image side in pixels (multiple of 8)")
    ap.add_argument("--batch", type=int, default=256, help="images per BlockDCT.forward call")
    ap.add_argument("--ref-images", type=int, default=16, help="images for the per-block reference")
    ap.add_argument("--repeat", type=int, default=5, help="timing samples; the best is kept")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the reference is single-threaded)")
    ap.add_argument("--device", default="cpu", help="device for BlockDCT (cpu or cuda)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", default="reports/bench.json")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images = make_images(args.batch, args.size, args.seed)
    front = BlockDCT().to(device)
    x = images.to(device)

    def ours():
        with torch.no_grad():
            front(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    ref_x = images[: args.ref_images]
    t_ours = _best_time(ours, args.repeat)
    t_ref = _best_time(lambda: reference_block_dct(ref_x), max(1, min(args.repeat, 3)), min_total=0.0)
    ours_ips = args.batch / t_ours
    ref_ips = args.ref_images / t_ref
    speedup = ours_ips / ref_ips

    with torch.no_grad():
        got = front(ref_x.to(device)).double().cpu().numpy()
    max_abs_diff = float(np.abs(got - reference_block_dct(ref_x)).max())

    print(f"block DCT front end: {args.size} px, batch {args.batch}, {args.threads} thread(s), device {device}")
    print(f"{'':<30}{'images':>8}{'time (ms)':>12}{'images/s':>12}")
    print(f"{'ours (BlockDCT, vectorised)':<30}{args.batch:>8}{t_ours * 1e3:>12.3f}{ours_ips:>12.0f}")
    print(f"{'reference (scipy per block)':<30}{args.ref_images:>8}{t_ref * 1e3:>12.3f}{ref_ips:>12.0f}")
    print(f"speed-up: {speedup:.1f}x (goal >= {SPEEDUP_GOAL:.0f}x)   max |coefficient diff|: {max_abs_diff:.2e} "
          f"(tolerance {COEFF_TOLERANCE})")

    record(
        "freq_block_dct",
        {
            "ours_images_per_s": ours_ips,
            "reference_images_per_s": ref_ips,
            "speedup": speedup,
            "max_abs_diff": max_abs_diff,
            "size": args.size,
            "batch": args.batch,
            "reference_images": args.ref_images,
            "threads": args.threads,
            "device": str(device),
        },
        path=args.report,
    )
    print(f"recorded 'freq_block_dct' in {args.report}")

    ok = max_abs_diff <= COEFF_TOLERANCE
    if not ok:
        print(f"FAIL: coefficients disagree by {max_abs_diff:.2e} > {COEFF_TOLERANCE}", file=sys.stderr)
    if speedup < SPEEDUP_GOAL:
        print(f"note: speed-up {speedup:.1f}x is below the {SPEEDUP_GOAL:.0f}x goal", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
