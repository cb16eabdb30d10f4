from __future__ import annotations

import pytest

from policies.atomic_io import atomic_dir, atomic_write_text


def test_atomic_dir_replaces_and_cleans_up(tmp_path) -> None:
    with atomic_dir(tmp_path / "ckpt") as staging:
        (staging / "a.txt").write_text("one")
    with atomic_dir(tmp_path / "ckpt") as staging:
        (staging / "b.txt").write_text("two")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_failed_write_leaves_the_old_folder(tmp_path) -> None:
    with atomic_dir(tmp_path / "ckpt") as staging:
        (staging / "a.txt").write_text("one")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "ckpt") as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("crash mid-write")
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_a_killed_runs_leftover_does_not_block_the_next(tmp_path) -> None:
    """A run killed while deleting the replaced copy leaves it behind; the next write must still land."""
    import os

    with atomic_dir(tmp_path / "ckpt") as staging:
        (staging / "a.txt").write_text("one")
    leftover = tmp_path / f".ckpt.old-{os.getpid()}"  # the name the old copy had before names were unique
    leftover.mkdir()
    (leftover / "stale.txt").write_text("stale")
    with atomic_dir(tmp_path / "ckpt") as staging:
        (staging / "b.txt").write_text("two")
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["b.txt"]


def test_atomic_write_text(tmp_path) -> None:
    atomic_write_text(tmp_path / "x" / "f.json", "{}")
    assert (tmp_path / "x" / "f.json").read_text() == "{}"
