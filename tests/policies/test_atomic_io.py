from __future__ import annotations

import pytest

from policies.atomic_io import atomic_dir, atomic_write_text


@pytest.mark.parametrize("can_exchange", [True, False], ids=["exchange", "two-renames"])
def test_atomic_dir_replaces_and_cleans_up(tmp_path, monkeypatch, can_exchange: bool) -> None:
    if not can_exchange:  # the fallback where renameat2 is missing (not Linux, old C library, some file systems)
        monkeypatch.setattr("policies.atomic_io.exchange", lambda a, b: False)
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


def test_an_existing_folder_is_exchanged_in_one_step(tmp_path) -> None:
    """On Linux the new folder takes the old one's place in one renameat2(RENAME_EXCHANGE): never a moment without
    a folder at the target, as the two-rename fallback has."""
    from policies.atomic_io import exchange

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b").mkdir()
    assert exchange(tmp_path / "a", tmp_path / "b")  # this CI and dev host: Linux with glibc >= 2.28
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["x"] and not any((tmp_path / "a").iterdir())
    with pytest.raises(OSError, match="No such file"):
        exchange(tmp_path / "missing", tmp_path / "a")
