"""Telling a full disk from other write failures, and naming the device that is full.

A full disk reaches the run as `OSError` (errno ENOSPC or EDQUOT), as safetensors'
`... No space left on device (os error 28)`, or as torch.save's zip writer's `[enforce fail at
inline_container.cc:672] . unexpected pos N vs M`, which says nothing about why. So besides the
error itself, the filesystem is asked: one with less than `NEARLY_FULL` bytes (or no inodes) left
for this user is full.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

NEARLY_FULL = 1 << 20
_MOUNTINFO = Path("/proc/self/mountinfo")
_OCTAL = re.compile(r"\\([0-7]{3})")


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def device_of(path: Path) -> str:
    """The device and mount point holding `path`, e.g. `/dev/sda1 (ext4, mounted at /)`; just the
    mount point where /proc/self/mountinfo cannot be read."""
    target = _existing(path).resolve()
    best: tuple[int, str] | None = None
    try:
        lines = _MOUNTINFO.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 2:
            continue
        # mountinfo escapes spaces, tabs, newlines and backslashes in octal.
        point = _OCTAL.sub(lambda m: chr(int(m[1], 8)), fields[4])
        inside = target == Path(point) or Path(point) in target.parents
        if inside and (best is None or len(point) > best[0]):
            best = (len(point), f"{tail[1]} ({tail[0]}, mounted at {point})")
    if best is not None:
        return best[1]
    mount = target
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    return f"the filesystem mounted at {mount}"


def disk_full(path: Path, error: BaseException) -> bool:
    """Whether the write of `path` that raised `error` failed for lack of space."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if f"os error {errno.ENOSPC}" in str(error) or "No space left" in str(error):
        return True
    try:
        stats = os.statvfs(_existing(path))
    except OSError:
        return False
    no_inodes = stats.f_files > 0 and stats.f_favail == 0
    return stats.f_bavail * stats.f_frsize < NEARLY_FULL or no_inodes
