"""What mutation testing of provisioning/locks.py found unpinned: the one-line refusals, word for word.

A planted symlinked lock folder, a FIFO or a hard link at a lock's path is refused by the
probe (:func:`lock_held`, used by gc and --dry-run) with one line saying what it is and to
remove it; nothing is created, and the planted file is left as it is.
"""

from __future__ import annotations

import os

import pytest

from provisioning.errors import UnsafePathError
from provisioning.locks import check_lock_path, lock_held, safe_lock


def _refused(probe, path) -> str:
    with pytest.raises(UnsafePathError) as caught:
        probe(path)
    return str(caught.value)


@pytest.mark.parametrize("probe", [lock_held, check_lock_path, safe_lock])
def test_a_symlinked_lock_folder_is_refused_in_one_line(tmp_path, probe):
    (tmp_path / "outside").mkdir()
    (tmp_path / ".locks").symlink_to(tmp_path / "outside")
    lock = tmp_path / ".locks" / "x.engine.lock"
    assert _refused(probe, lock) == (f"lock folder {tmp_path / '.locks'} is a symlink (not followed; nothing in the "
                                     "cache creates one); remove it")
    assert os.listdir(tmp_path / "outside") == []


@pytest.mark.parametrize("probe", [lock_held, check_lock_path])
def test_a_fifo_at_a_lock_path_is_refused_in_one_line(tmp_path, probe):
    fifo = tmp_path / "x.engine.lock"
    os.mkfifo(fifo)
    assert _refused(probe, fifo) == (f"lock file {fifo} is not a regular file (a FIFO or a device; nothing in the "
                                     "cache creates one); not used; remove it")


@pytest.mark.parametrize("probe", [lock_held, check_lock_path])
def test_a_hard_linked_lock_file_is_refused_in_one_line(tmp_path, probe):
    outside = tmp_path / "precious"
    outside.write_bytes(b"keep me")
    lock = tmp_path / "x.engine.lock"
    os.link(outside, lock)
    assert _refused(probe, lock) == (f"lock file {lock} has 2 hard links (another name of a file that may live "
                                     "outside the cache; nothing in the cache creates one); not used; remove it")
    assert outside.read_bytes() == b"keep me"
