"""The reader interface: a reader lists the records of one on-disk layout and loads them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from common.data.errors import DataError
from common.data.io import load_sample
from common.data.types import Sample, SampleRecord


class Reader:
    """Base class of every dataset reader.

    Subclasses implement :meth:`_list` and set :attr:`layout`; listing is done once and cached. Iterating a
    reader yields loaded :class:`~common.data.types.Sample` s.

    Args:
        root: Dataset root folder.
    """

    layout: str = "abstract"
    expected: str = ""
    """One line describing the expected layout, used in error messages."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self._records: list[SampleRecord] | None = None

    def records(self) -> list[SampleRecord]:
        """All records, sorted by image path (so listing order never depends on the file system)."""
        if self._records is None:
            if not self.root.exists():
                raise DataError(f"dataset root {self.root} does not exist (expected the {self.layout} layout: {self.expected})")
            recs = self._list()
            if not recs:
                raise DataError(f"{self.root}: no images found for the {self.layout} layout ({self.expected})")
            self._records = sorted(recs, key=lambda r: str(r.image_path))
        return self._records

    def _list(self) -> list[SampleRecord]:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.records())

    def __iter__(self) -> Iterator[Sample]:
        for rec in self.records():
            yield load_sample(rec)

    def layout_error(self, found: str) -> DataError:
        """A :class:`DataError` saying which layout was expected and what was found."""
        return DataError(f"{self.root} does not look like the {self.layout} layout: expected {self.expected}; found {found}")

    def found_entries(self, folder: Path | None = None, limit: int = 8) -> str:
        """A short listing of ``folder`` (default: the root) for error messages."""
        folder = folder or self.root
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
        more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
        return ("[" + ", ".join(names[:limit]) + more + "]") if names else "an empty folder"


def require_images(folder: Path, images: list[Path], what: str) -> list[Path]:
    """Raises a :class:`DataError` when a class folder holds no images (an empty class is never skipped)."""
    if not images:
        raise DataError(f"{folder}: {what} has no images; remove the folder or add images to it")
    return images
