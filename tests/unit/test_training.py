"""The training loop: it learns, is deterministic, resumes exactly (also after SIGKILL),
refuses to mix runs, and fails loudly."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from components.models import CosFace, ResNetSmall, get_head
from components.training import (
    TrainConfig, TrainHooks, TrainResult, load_checkpoint, pick_device, save_checkpoint, train_classifier,
)

REPO = Path(__file__).resolve().parents[2]
N_CLASSES = 8


def toy_data(n_per_class: int = 24, size: int = 16, seed: int = 0):
    """8 classes of coloured noise: each class has its own colour and stripe direction."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, (N_CLASSES, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    images, labels = [], []
    for c in range(N_CLASSES):
        stripes = np.sin((xx if c % 2 else yy) * (0.6 + 0.25 * (c // 2)))[..., None] * 35
        base = colours[c] + stripes
        noise = rng.normal(0, 20, (n_per_class, size, size, 3))
        images.append(np.clip(base + noise, 0, 255).astype(np.uint8))
        labels += [c] * n_per_class
    return np.concatenate(images), np.array(labels, dtype=np.int64)


def tiny_model(seed: int = 0, **kw) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    model = ResNetSmall(widths=(8, 16, 16, 32), embedding_dim=16, **kw)
    head = CosFace(16, N_CLASSES, s=16.0, m=0.2)
    return model, head


FAST = dict(batch_size=32, lr=0.05, progress=False, weight_decay=5e-4)


def weights(*modules) -> list[torch.Tensor]:
    return [t.detach().clone() for m in modules for t in m.state_dict().values()]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


# ---------------------------------------------------------------- learning

def test_learns_separable_toy_problem():
    images, labels = toy_data()
    model, head = tiny_model()
    seen = []
    result = train_classifier(model, head, images, labels, TrainConfig(epochs=6, **FAST),
                              on_epoch_end=lambda e, m: seen.append((e, m["loss"])))
    h = result.history
    assert isinstance(result, TrainResult) and result.resumed_from == 0
    assert [r["epoch"] for r in h] == list(range(1, 7)) and [e for e, _ in seen] == list(range(1, 7))
    assert h[-1]["train_acc"] > 0.6, h  # chance is 0.125
    assert h[-1]["loss"] < 0.6 * h[0]["loss"], h
    assert all(set(r) >= {"epoch", "loss", "train_acc", "lr", "seconds", "images_per_s"} for r in h)
    assert h[0]["lr"] == pytest.approx(0.05) and h[-1]["lr"] < h[0]["lr"]  # cosine decays
    assert not model.training  # returned in eval mode
    # the embeddings really separate the classes (nearest class centre by cosine, no margin)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        acc = (head.cosine(model(x)).argmax(1).numpy() == labels).mean()
    assert acc > 0.6


def test_adamw_step_schedule_and_warmup_run():
    images, labels = toy_data(8)
    model, head = tiny_model()
    cfg = TrainConfig(epochs=3, optimizer="adamw", lr=1e-3, schedule="step", milestones=(2,), warmup_epochs=1,
                      batch_size=16, progress=False)
    h = train_classifier(model, head, images, labels, cfg).history
    steps = len(labels) // 16
    assert h[0]["lr"] == pytest.approx(1e-3 / steps)  # first warm-up step
    assert h[1]["lr"] == pytest.approx(1e-3) and h[2]["lr"] == pytest.approx(1e-4)


# ---------------------------------------------------------------- determinism and resume

def test_same_seed_same_weights_different_seed_different_weights():
    images, labels = toy_data(8)
    runs = []
    for seed in (0, 0, 1):
        model, head = tiny_model(0, dropout=0.2)  # same init; dropout draws from the global RNG
        train_classifier(model, head, images, labels, TrainConfig(epochs=2, seed=seed, **FAST))
        runs.append(weights(model, head))
    assert_same(runs[0], runs[1])
    assert any(not torch.equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_resume_equals_uninterrupted_run(tmp_path):
    images, labels = toy_data(8)
    cfg = dict(schedule="step", milestones=(3,), warmup_epochs=1, **FAST)

    model, head = tiny_model(dropout=0.2)
    full = train_classifier(model, head, images, labels, TrainConfig(epochs=4, **cfg))
    expected = weights(model, head)

    model, head = tiny_model(dropout=0.2)
    first = train_classifier(model, head, images, labels, TrainConfig(epochs=2, **cfg), checkpoint_dir=tmp_path)
    assert first.resumed_from == 0 and len(first.history) == 2
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2

    model, head = tiny_model(seed=123, dropout=0.2)  # fresh objects: all state must come from the file
    calls = []
    second = train_classifier(model, head, images, labels, TrainConfig(epochs=4, **cfg), checkpoint_dir=tmp_path,
                              on_epoch_end=lambda e, m: calls.append(e))
    assert second.resumed_from == 2 and calls == [3, 4]
    assert_same(weights(model, head), expected)
    assert [r["loss"] for r in second.history] == [r["loss"] for r in full.history]

    # a finished run returns at once with the stored history and the trained weights
    model, head = tiny_model(seed=7, dropout=0.2)
    again = train_classifier(model, head, images, labels, TrainConfig(epochs=4, **cfg), checkpoint_dir=tmp_path)
    assert again.resumed_from == 4 and again.history == second.history
    assert_same(weights(model, head), expected)


def test_checkpoint_from_another_config_is_refused(tmp_path):
    images, labels = toy_data(4)
    model, head = tiny_model()
    train_classifier(model, head, images, labels, TrainConfig(epochs=1, **FAST), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"different training run.*lr: 0\.05 -> 0\.01"):
        train_classifier(model, head, images, labels, TrainConfig(epochs=2, **{**FAST, "lr": 0.01}),
                         checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="different training run.*labels"):
        train_classifier(model, head, images, labels[::-1].copy(), TrainConfig(epochs=2, **FAST),
                         checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="cosine schedule over 1 epochs"):  # would bend the lr curve
        train_classifier(model, head, images, labels, TrainConfig(epochs=3, **FAST), checkpoint_dir=tmp_path)


def test_checkpoint_is_plain_data(tmp_path):
    images, labels = toy_data(4)
    model, head = tiny_model()
    train_classifier(model, head, images, labels, TrainConfig(epochs=1, **FAST), checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"model", "head", "optimizer", "scheduler", "epoch", "history", "hooks", "fingerprint"} <= set(state)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp files left behind
    with pytest.raises(TypeError, match=r"\['hooks'\]\['rng'\].*Random"):
        import random
        save_checkpoint(tmp_path / "bad.pt", {"hooks": {"rng": random.Random(0)}})
    assert not (tmp_path / "bad.pt").exists()


KILL_SCRIPT = """
import sys, time
import numpy as np, torch
sys.path.insert(0, {repo!r})
from components.models import CosFace, ResNetSmall
from components.training import TrainConfig, train_classifier
data = np.load({data!r})
torch.manual_seed(0)
model = ResNetSmall(widths=(8, 16, 16, 32), embedding_dim=16)
head = CosFace(16, 8, s=16.0, m=0.2)
cfg = TrainConfig(epochs={epochs}, batch_size=32, lr=0.05, progress=False, schedule="step")
train_classifier(model, head, data["images"], data["labels"], cfg, checkpoint_dir={ckpt!r},
                 on_epoch_end=lambda e, m: time.sleep(0.5))  # slow enough to be killed mid-run
"""


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    images, labels = toy_data(8)
    epochs = 6
    np.savez(tmp_path / "data.npz", images=images, labels=labels)
    ckpt_dir = tmp_path / "ckpt"
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT.format(repo=str(REPO), data=str(tmp_path / "data.npz"),
                                                         epochs=epochs, ckpt=str(ckpt_dir))))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (ckpt_dir / "last.pt").exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = load_checkpoint(ckpt_dir / "last.pt")["epoch"]
    assert 1 <= done < epochs  # really killed mid-run

    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=0.05, progress=False, schedule="step")
    model, head = tiny_model()
    resumed = train_classifier(model, head, images, labels, cfg, checkpoint_dir=ckpt_dir)
    assert resumed.resumed_from == done
    got = weights(model, head)
    model, head = tiny_model()
    train_classifier(model, head, images, labels, cfg)
    for a, b in zip(got, weights(model, head)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)  # bit-equal in practice; other process


# ---------------------------------------------------------------- hooks

class FrontEnd(nn.Module):
    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1, 3, 1, 1))

    def forward(self, x):
        return x * self.gain


class DefenseHooks(TrainHooks):
    """A front end with its own optimizer, MixUp labels, an extra metric and some state."""

    def __init__(self, front: FrontEnd):
        self.front = front
        self.opt = torch.optim.SGD(front.parameters(), lr=0.01)
        self.count = 0

    def extra_optimizers(self):
        return [self.opt]

    def transform_batch(self, x, y, step):
        perm = torch.randperm(len(y))
        return 0.7 * x + 0.3 * x[perm], (y, y[perm], 0.7)

    def after_step(self, step, loss_value, batch):
        self.count += 1
        return {"gain_mean": float(self.front.gain.detach().mean()), "step_no": float(step)}

    def config(self):
        return {"mix": 0.7}

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def test_hooks_front_end_optimizer_mixup_metrics_and_state(tmp_path):
    images, labels = toy_data(8)
    cfg = dict(FAST, schedule="step")
    model, head = tiny_model()
    front = FrontEnd()
    hooks = DefenseHooks(front)
    result = train_classifier(nn.Sequential(front, model), head, images, labels, TrainConfig(epochs=2, **cfg),
                              checkpoint_dir=tmp_path, hooks=hooks)
    steps = len(labels) // 32
    state = load_checkpoint(tmp_path / "last.pt")
    n_main = sum(len(g["params"]) for g in state["optimizer"]["param_groups"])
    assert n_main == len(list(model.parameters())) + 1  # backbone + head, not the front end's gain
    assert len(state["extra_optimizers"]) == 1 and state["hooks"] == {"count": 2 * steps}
    assert not torch.equal(front.gain.detach(), torch.ones(1, 3, 1, 1))  # the extra optimizer stepped it
    h = result.history
    assert h[1]["step_no"] == pytest.approx(steps + (steps - 1) / 2)  # averaged over the epoch
    assert np.isfinite(h[1]["loss"]) and 0 <= h[1]["train_acc"] <= 1
    gain_after_2 = front.gain.detach().clone()

    # resume with fresh hooks: hook state and the front end's weights come back from the file
    model, head = tiny_model()
    hooks2 = DefenseHooks(FrontEnd())
    r = train_classifier(nn.Sequential(hooks2.front, model), head, images, labels, TrainConfig(epochs=3, **cfg),
                         checkpoint_dir=tmp_path, hooks=hooks2)
    assert r.resumed_from == 2 and hooks2.count == 3 * steps
    assert not torch.equal(hooks2.front.gain.detach(), gain_after_2)  # restored, then trained on

    # different hook settings are refused
    hooks3 = DefenseHooks(FrontEnd())
    hooks3.config = lambda: {"mix": 0.5}
    with pytest.raises(ValueError, match="mix"):
        train_classifier(nn.Sequential(hooks3.front, model), head, images, labels, TrainConfig(epochs=4, **cfg),
                         checkpoint_dir=tmp_path, hooks=hooks3)


class Recorder(TrainHooks):
    def __init__(self):
        self.batches = []

    def transform_batch(self, x, y, step):
        self.batches.append((step, x[:, 0, 0, 0].clone(), y.clone()))
        return x, y


def test_shuffle_and_flips_vary_by_epoch_and_seed_and_cover_the_data():
    images, labels = toy_data(8)
    steps = len(labels) // 32

    def orders(seed, flip=True):
        rec = Recorder()
        model, head = tiny_model()
        train_classifier(model, head, images, labels, TrainConfig(epochs=2, seed=seed, augment_flip=flip, **FAST),
                         hooks=rec)
        return [torch.cat([y for s, _, y in rec.batches if s // steps == e]) for e in range(2)], rec

    (e0, e1), rec = orders(0)
    assert len(e0) == len(labels) and sorted(e0.tolist()) == sorted(labels.tolist())  # each sample once
    assert not torch.equal(e0, e1)  # reshuffled every epoch
    (f0, _), _ = orders(1)
    assert not torch.equal(e0, f0) and not torch.equal(e0, e1[: len(e0)]) and not torch.equal(f0, e1)
    # flips: the corner pixel of a flipped image is the original top-right pixel
    (_, _), rec_noflip = orders(0, flip=False)
    corners = torch.cat([c for _, c, _ in rec.batches[:steps]])
    plain = torch.cat([c for _, c, _ in rec_noflip.batches[:steps]])
    assert 0 < (corners != plain).float().mean() < 1


def test_hook_loss_replaces_default():
    images, labels = toy_data(4)
    model, head = tiny_model()

    class L2(TrainHooks):
        def loss(self, model, head, x, y):
            return model(x).pow(2).mean()

    h = train_classifier(model, head, images, labels, TrainConfig(epochs=1, **FAST), hooks=L2()).history
    assert np.isnan(h[0]["train_acc"])  # no scores given, so no accuracy
    assert h[0]["loss"] < 5


def test_flip_is_horizontal():
    images = np.zeros((64, 16, 16, 3), dtype=np.uint8)
    images[:, :, 8:] = 255  # left half black, right half white
    labels = np.arange(64) % N_CLASSES
    rec = Recorder()
    model, head = tiny_model()
    train_classifier(model, head, images, labels, TrainConfig(epochs=1, **FAST), hooks=rec)
    left = torch.cat([c for _, c, _ in rec.batches])  # x[:, 0, 0, 0]: the top-left pixel
    assert set(left.tolist()) == {-1.0, 1.0}  # some images mirrored left-right, some not


# ---------------------------------------------------------------- failing loudly

def test_nan_loss_raises_naming_epoch_and_step():
    images, labels = toy_data(4)
    model, head = tiny_model()

    class Poison(nn.Module):
        def forward(self, x):
            return x * float("nan")

    with pytest.raises(FloatingPointError, match=r"epoch 1/2, step 1/"):
        train_classifier(nn.Sequential(Poison(), model), head, images, labels, TrainConfig(epochs=2, **FAST))


def test_bad_inputs_are_rejected():
    images, labels = toy_data(4)
    model, head = tiny_model()
    with pytest.raises(ValueError, match="uint8"):
        train_classifier(model, head, images.astype(np.float32), labels, TrainConfig(epochs=1, **FAST))
    with pytest.raises(ValueError, match="8 classes"):
        train_classifier(model, head, images, labels + 1, TrainConfig(epochs=1, **FAST))
    with pytest.raises(ValueError, match="optimizer"):
        train_classifier(model, head, images, labels, TrainConfig(epochs=1, optimizer="lbfgs"))


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device("cuda")


def test_components_do_not_import_dagster():
    code = "import sys, components.models, components.training; assert 'dagster' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_head_registry_with_loop():
    """Every registered head trains through the loop (the loop relies only on forward/cosine)."""
    images, labels = toy_data(4)
    for name in ("arcface", "cosface"):
        model, _ = tiny_model()
        head = get_head(name, 16, N_CLASSES, s=16.0)
        h = train_classifier(model, head, images, labels, TrainConfig(epochs=1, **FAST)).history
        assert np.isfinite(h[0]["loss"])
