"""What a cheap `stat` says about a watched file, so a reloader can tell that it changed.

Kubernetes updates a mounted Secret by swapping a symlink (`..data`) to a new directory (the
file keeps its path and gets a new inode); other tools rewrite a file in place (new size or
mtime). A stamp that follows symlinks sees both. Used by the TLS certificate reload
(`app/transport/tls.py`) and the client secret reload (`app/upstream/credentials.py`).
"""

from __future__ import annotations

import os
from pathlib import Path

FileStamp = tuple[int, int, int, int] | None  # device, inode, size, mtime; None if unreadable


def file_stamp(path: Path) -> FileStamp:
    """The stamp of `path` now; None when it cannot be read (missing for a moment mid-swap)."""
    try:
        info = os.stat(path)  # follows symlinks: a swapped ..data link changes the inode
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
