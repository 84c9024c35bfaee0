"""The IO manager stores every kind of asset value pickle-free and atomically."""


import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.io_manager import fetch, store


def test_round_trips_frames_json_and_bundles(tmp_path):
    frames = {"a": pd.DataFrame({"x": [1, 2]}), "b": pd.DataFrame({"y": ["u", "v"]})}
    store(frames, tmp_path / "f")
    back = fetch(tmp_path / "f")
    assert set(back) == {"a", "b"} and back["a"].equals(frames["a"])
    store({"k": 1.5, "n": {"m": [1, 2]}}, tmp_path / "j")
    assert fetch(tmp_path / "j") == {"k": 1.5, "n": {"m": [1, 2]}}
    bundle = {"kind": "fr_model", "w": torch.arange(3.0), "history": [{"loss": 1.0}]}
    store(bundle, tmp_path / "b")
    assert torch.equal(fetch(tmp_path / "b")["w"], bundle["w"])


def test_a_failed_write_keeps_the_previous_value(tmp_path):
    store({"v": 1}, tmp_path / "x")
    with pytest.raises(TypeError):
        store({"v": object()}, tmp_path / "x")      # not JSON-serialisable: fails mid-write
    assert fetch(tmp_path / "x") == {"v": 1}
    # no temp folder left behind (the swap's lock file may stay)
    assert [p.name for p in tmp_path.iterdir() if p.name != ".x.lock"] == ["x"]


def test_an_interrupt_or_a_kill_between_the_two_renames_keeps_the_previous_value(tmp_path, monkeypatch):
    import os

    from components import atomic

    store({"v": 1}, tmp_path / "x")
    real = os.replace
    calls = []

    def interrupted(src, dst):   # Ctrl-C lands right after the old folder was moved aside
        real(src, dst)
        calls.append(dst)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store({"v": 2}, tmp_path / "x")
    monkeypatch.setattr(atomic.os, "replace", real)
    assert fetch(tmp_path / "x") == {"v": 1}
    # a SIGKILL at the same moment leaves the old value aside and no folder: the next read
    # puts it back
    aside = tmp_path / ".x.old-killed"
    aside.mkdir()
    real(tmp_path / "x", aside / "x")
    assert fetch(tmp_path / "x") == {"v": 1} and not aside.exists()
    store({"v": 3}, tmp_path / "x")
    assert fetch(tmp_path / "x") == {"v": 3}
    assert [p.name for p in tmp_path.iterdir() if p.name != ".x.lock"] == ["x"]


def test_unknown_types_and_missing_values_are_named(tmp_path):
    with pytest.raises(TypeError, match="cannot store"):
        store(np.zeros(3), tmp_path / "z")
    with pytest.raises(FileNotFoundError, match="materialize the upstream asset first"):
        fetch(tmp_path / "missing")
