"""common.data.io.list_images: sorted images, hidden and system files and folders ignored, optional recursion."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from common.data.io import list_images
from tests.conftest import write_image


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    img = np.zeros((4, 4, 3), np.uint8)
    root = tmp_path / "line"
    for rel in ("b.png", "a.JPG", "sub/c.bmp", "sub/deeper/d.tif",  # kept
                ".hidden.png", "._a.JPG", ".ipynb_checkpoints/x.png", "__MACOSX/sub/._c.png",
                "sub/.cache/e.png", "Thumbs.db", "desktop.ini"):  # ignored
        path = root / rel
        if path.suffix in (".db", ".ini"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\0")
        else:
            write_image(path, img)
    (root / "notes.txt").write_text("not an image")
    return root


def test_flat_listing_ignores_hidden_and_system_files(messy: Path) -> None:
    assert [p.name for p in list_images(messy)] == ["a.JPG", "b.png"]


def test_recursive_listing_walks_sub_folders_but_not_hidden_or_system_ones(messy: Path) -> None:
    found = [p.relative_to(messy).as_posix() for p in list_images(messy, recursive=True)]
    assert found == ["a.JPG", "b.png", "sub/c.bmp", "sub/deeper/d.tif"]


def test_recursive_listing_survives_a_symlink_loop(messy: Path) -> None:
    os.symlink(messy, messy / "sub" / "loop")
    found = [p.relative_to(messy).as_posix() for p in list_images(messy, recursive=True)]
    assert found == ["a.JPG", "b.png", "sub/c.bmp", "sub/deeper/d.tif"]
