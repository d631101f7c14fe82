"""Ways a cached file gets damaged (a run killed while writing, a full disk, a bad copy), and a folder nobody can
write to, shared by the tests that show steerlib heals or refuses them."""

from __future__ import annotations

import os
from pathlib import Path

DAMAGE = ("truncated", "zeroed", "empty")


def damage(path: Path, how: str) -> None:
    """Truncate ``path`` to a third, zero a run of bytes in its middle, or empty it."""
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif how == "zeroed":
        start, length = len(data) // 2, max(64, len(data) // 8)
        path.write_bytes(data[:start] + bytes(min(length, len(data) - start)) + data[start + length:])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        raise ValueError(how)


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder where no file can be created: read-only permissions for an ordinary user; for root, who ignores
    permissions, a folder under ``/sys`` (sysfs refuses new entries even to root)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    return Path("/sys/steerlib-results")
