"""The lab's choice of where terminals keep their flash (lab/poslab/flash.py): memory while it fits, else disk.

The flash itself (tmpfs or an ext4 image on a loop device) is exercised on the lab: tests/integration/test_lab.py.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lab"))
from poslab import flash


@pytest.fixture
def available_mb(monkeypatch):
    def set_available(megabytes):
        monkeypatch.setattr(flash, "meminfo_kib", lambda: {"MemAvailable": megabytes * 1024})
    return set_available


@pytest.mark.parametrize(("terminals", "expected"), [(6, "memory"), (100, "memory"), (160, "disk"), (500, "disk")])
def test_auto_keeps_flash_in_memory_while_the_fleet_s_fits_in_half_the_available_memory(available_mb, terminals,
                                                                                         expected):
    available_mb(22000)  # a 24 GB machine with a lab of nothing yet
    sizes = [96, 64, 48] * (terminals // 3) + [96] * (terminals % 3)
    assert flash.choose("auto", sizes) == expected


def test_the_boundary_is_half_of_the_available_memory(available_mb):
    available_mb(2000)
    assert flash.choose("auto", [100] * 10) == "memory"
    assert flash.choose("auto", [100] * 10 + [1]) == "disk"


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_an_explicit_choice_is_taken_whatever_the_memory(available_mb, kind):
    available_mb(1)
    assert flash.choose(kind, [96] * 500) == kind
