"""A directory laid out like a Kubernetes Secret volume, updated the way the kubelet does it."""

from __future__ import annotations

import os
from pathlib import Path


class SecretVolume:
    """A directory laid out like a mounted Kubernetes Secret: `secret -> ..data/secret`, with
    `..data` a symlink to a timestamped directory that an update replaces atomically."""

    def __init__(self, root: Path, value: str) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.generation = 0
        self._publish(value)
        (root / "secret").symlink_to(Path("..data") / "secret")

    @property
    def path(self) -> Path:
        """The file the broker is configured with."""
        return self.root / "secret"

    def _publish(self, value: str) -> None:
        self.generation += 1
        target = self.root / f"..2026_{self.generation:02d}"
        target.mkdir()
        (target / "secret").write_text(value + "\n")
        link = self.root / "..data_tmp"
        link.symlink_to(target.name)
        os.rename(link, self.root / "..data")  # atomic, as the kubelet does

    def update(self, value: str) -> None:
        """Replace the secret by swapping `..data` to a new directory."""
        self._publish(value)
