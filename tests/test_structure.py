"""Tests mirror the packages: every module of policies/, rewards/, rlhf/ and jobs/ has a test file."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = ("policies", "rewards", "rlhf", "jobs")


def test_every_module_has_a_mirrored_test() -> None:
    missing = []
    for package in PACKAGES:
        for module in sorted((ROOT / package).glob("*.py")):
            if module.name == "__init__.py":
                continue
            if not list((ROOT / "tests" / package).glob(f"test_{module.stem}*.py")):
                missing.append(f"{package}/{module.name} -> tests/{package}/test_{module.stem}.py")
    assert not missing, "modules without tests:\n" + "\n".join(missing)


def test_test_folders_match_packages() -> None:
    folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    assert folders <= set(PACKAGES), f"test folders without a package: {folders - set(PACKAGES)}"
