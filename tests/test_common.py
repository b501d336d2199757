"""The bottom-layer helpers (common/): atomic writes with one file mode, checksums, and
the CPUs a process may really use."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common import cpus
from common.files import FILE_MODE, atomic_path, atomic_write_bytes, atomic_write_text, sha256_file

ROOT = Path(__file__).resolve().parents[1]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_writes_get_the_mode_open_would_give(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "c.txt", "été")
    with open(tmp_path / "plain.txt", "w") as fh:
        fh.write("x")
    plain = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert plain == FILE_MODE & ~_umask()  # FILE_MODE is what open() uses
    for name in ("a/b.bin", "c.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == plain, name  # not mkstemp's 0600
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.txt").read_text(encoding="utf-8") == "été"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_sha256_of_a_file_read_in_chunks(tmp_path):
    data = os.urandom(3 * 1024 + 5)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk=1024) == hashlib.sha256(data).hexdigest()


def test_available_cpus_follows_the_affinity_mask():
    # a child pinned to one CPU sees one CPU, whatever the machine has
    probe = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
             "from common.cpus import available_cpus; print(available_cpus())")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "1"
    assert cpus.available_cpus() <= len(os.sched_getaffinity(0))


def test_available_cpus_takes_the_environment_limit(monkeypatch):
    monkeypatch.setenv("SELECTIVITY_CPUS", "1")
    assert cpus.available_cpus() == 1
    monkeypatch.setenv("SELECTIVITY_CPUS", "many")
    with pytest.raises(ValueError, match="SELECTIVITY_CPUS='many'"):
        cpus.available_cpus()


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2: 1.5 CPUs
    ({"cpu.max": "max 100000\n"}, None),  # no quota
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_the_cgroup_quota(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpus._cgroup_quota(tmp_path) == expected


def test_a_quota_below_the_mask_limits_the_cpus(monkeypatch):
    monkeypatch.delenv("SELECTIVITY_CPUS", raising=False)
    monkeypatch.setattr(cpus, "_cgroup_quota", lambda: 0.5)
    assert cpus.available_cpus() == 1  # half a CPU still runs one thread


def test_file_lock_makes_a_second_process_wait_for_the_first(tmp_path):
    """Two processes making one cached file take turns: the second finds the first's."""
    import time

    from common.files import file_lock

    target = tmp_path / "cache" / "net.pt"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from common.files import file_lock\n"
        f"target = Path({str(target)!r})\n"
        "with file_lock(target):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(1.0)\n"
        "    target.write_text('made by the first')\n")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    with file_lock(target):
        waited = time.monotonic() - started
        assert target.read_text() == "made by the first"   # made while we waited
    assert waited > 0.3
    holder.wait(10)
    with file_lock(target):                                  # free again: no wait
        pass
