from __future__ import annotations

import pytest

from rlhf.transfer import read_folder, write_folder


def test_a_folder_round_trips_through_bytes(tmp_path) -> None:
    src = tmp_path / "src"
    (src / "experts" / "a").mkdir(parents=True)
    (src / "persona_config.json").write_text("{}")
    (src / "experts" / "a" / "adapter_model.safetensors").write_bytes(b"\x00\x01")
    files = read_folder(src)
    assert files == {"experts/a/adapter_model.safetensors": b"\x00\x01", "persona_config.json": b"{}"}
    write_folder(tmp_path / "dst", files)
    assert read_folder(tmp_path / "dst") == files


def test_write_folder_stays_inside(tmp_path) -> None:
    with pytest.raises(ValueError, match="outside"):
        write_folder(tmp_path / "dst", {"../escape.txt": b"x"})
    assert not (tmp_path / "escape.txt").exists()
