"""A generic folder of images, for users' own OK/NG data.

Three ways to label, first match wins:

1. ``labels_csv`` with columns ``image`` (path relative to ``root``) and ``label`` (``0``/``1``/``ok``/``ng``/
   ``good``/``normal`` or a defect-type name), optional ``defect_type``, ``object``, ``mask``, ``caption``,
   ``group`` (the physical part an image shows: ``DefectDataModule(group_key="group")`` keeps a part in one split);
2. sub-folders: either one per class (``good``/``ok``/``normal`` for defect-free, any other name is a defect
   type), or groups of image + mask pairs (e.g. KolektorSDD's ``kos01/Part0.jpg`` + ``kos01/Part0_label.bmp``,
   one folder per part): then the folder names mean nothing, and an image is defective when its mask is not
   empty (see ``subfolders``);
3. flat images, labelled by their masks (non-empty mask = defective) or unlabelled when there are none.

Masks are looked up in ``mask_dir`` by image stem (with or without the suffix), or, without ``mask_dir``, beside
their images: ``<stem><suffix>.<ext>`` next to ``<stem>.<ext>``. Such mask files are paired with their image
and are never read as images themselves. Hidden and system files/folders (``.*``, ``__MACOSX``, ``Thumbs.db``,
``desktop.ini``; :func:`~common.data.io.is_ignored`) are never classes, groups or images.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from common.data.errors import DataError
from common.data.io import is_ignored, list_images, read_mask_array
from common.data.readers.base import Reader, require_images
from common.data.types import NORMAL, SampleRecord

log = logging.getLogger(__name__)
NORMAL_NAMES = {"good", "ok", "normal", "0", "pass", "free"}
DEFECT_NAMES = {"ng", "1", "bad", "defect", "defective", "anomaly", "fail"}
MASK_SUFFIXES = ("_mask", "_label", "_labels", "_gt", "_seg", "_annotation")
"""Mask file stem suffixes recognised when ``mask_suffix`` is not given (compared case-insensitively)."""
SUBFOLDER_MODES = ("auto", "classes", "groups")

Pair = tuple[Path, Path | None]  # an image and its mask (or None)


class FolderReader(Reader):
    """Reads a generic image folder.

    Args:
        root: The folder.
        mask_dir: Folder of masks (relative to ``root`` or absolute); ``None``: masks, if any, lie beside
            their images.
        mask_suffix: Mask file stem suffix, e.g. ``"_mask"``, ``"_label"``, ``"_GT"`` (case-insensitive).
            ``None`` recognises the usual ones (:data:`MASK_SUFFIXES`) when the image they belong to is there
            too. A given suffix beside the images makes every file ending with it a mask (one without its
            image is an error).
        labels_csv: CSV of labels (relative to ``root`` or absolute).
        object_name: Object name when the CSV gives none.
        default_defect_type: Defect type of samples labelled only as defective (by ``ng``/``1``, or by a
            non-empty mask).
        mask_threshold: A mask pixel above this value is a defect (0 suits 0/1 and 0/255 PNG masks; use 127
            for masks saved as JPEG).
        subfolders: What sub-folders of ``root`` are: ``"classes"`` (one per class, the folder name is the
            defect type), ``"groups"`` (any grouping, e.g. one folder per part; labels come from the masks) or
            ``"auto"``: groups when the sub-folders hold image + mask pairs, none is named like a normal class
            (``good``/``ok``/...) and some masks are empty (normal images are then known by their empty mask,
            not by a folder); classes otherwise.
        skip_unmasked: Flat layout with ``mask_dir`` only: leave out images that have no mask (e.g. unlabelled
            extras beside a labelled set) instead of listing them as unlabelled; a warning gives their number, and
            ``left_out`` lists them.
    """

    layout = "generic folder"
    expected = (
        "one sub-folder per class (good/, scratch/, ...), sub-folders of image + mask pairs, or images directly "
        "in the folder; optional masks folder or masks beside the images (<name>_mask.png); optional labels CSV"
    )

    def __init__(
        self,
        root: str | Path,
        mask_dir: str | None = None,
        mask_suffix: str | None = None,
        labels_csv: str | None = None,
        object_name: str = "object",
        default_defect_type: str = "defect",
        mask_threshold: int = 0,
        subfolders: str = "auto",
        skip_unmasked: bool = False,
    ) -> None:
        super().__init__(root)
        if subfolders not in SUBFOLDER_MODES:
            raise ValueError(f"subfolders must be one of {SUBFOLDER_MODES}, got {subfolders!r}")
        self.mask_dir = (self.root / mask_dir) if mask_dir else None
        self.mask_suffix = mask_suffix or None
        self.labels_csv = (self.root / labels_csv) if labels_csv else None
        self.object_name = object_name
        self.default_defect_type = default_defect_type
        self.mask_threshold = mask_threshold
        self.subfolders = subfolders
        self.skip_unmasked = skip_unmasked
        self.left_out: list[Path] = []
        self.subfolder_mode: str | None = None
        """What the sub-folders were read as (``"classes"``/``"groups"``), ``None`` for flat or CSV data."""

    # ------------------------------------------------------------------ masks
    @property
    def _suffixes(self) -> tuple[str, ...]:
        return (self.mask_suffix,) if self.mask_suffix else MASK_SUFFIXES

    def _mask_for(self, image: Path, required: bool = False) -> Path | None:
        """The mask of ``image`` in ``mask_dir`` (by stem, with or without a mask suffix)."""
        if self.mask_dir is None:
            return None
        for stem in (*(f"{image.stem}{s}" for s in self._suffixes), image.stem):
            for ext in (".png", image.suffix, ".bmp"):
                for cand in (self.mask_dir / f"{stem}{ext}", self.mask_dir / f"{stem}{ext.upper()}"):
                    if cand.exists():
                        return cand
        if required:
            raise DataError(f"{image}: no mask in {self.mask_dir}")
        return None

    def _pairs(self, folder: Path) -> list[Pair]:
        """The images directly in ``folder`` with their masks (from ``mask_dir``, or beside them)."""
        files = list_images(folder)
        if self.mask_dir is not None:
            return [(p, self._mask_for(p)) for p in files]
        stems: dict[str, list[Path]] = {}
        for p in files:
            stems.setdefault(p.stem.lower(), []).append(p)
        masks: dict[Path, Path] = {}  # image -> mask
        for p in files:
            stem = p.stem.lower()
            suffix = next((s for s in self._suffixes if stem.endswith(s.lower()) and len(stem) > len(s)), None)
            if suffix is None:
                continue
            owners = [q for q in stems.get(stem[: -len(suffix)], []) if q != p]
            if not owners:
                if self.mask_suffix:  # the user said files ending with it are masks: an orphan is an error
                    raise DataError(f"mask {p} has no image beside it (expected {stem[: -len(suffix)]}.<ext>)")
                continue  # auto mode: an image that happens to end in "_mask"
            if len(owners) > 1:
                raise DataError(f"mask {p} matches several images ({', '.join(q.name for q in owners)})")
            if owners[0] in masks:
                raise DataError(f"{owners[0]} has two masks beside it: {masks[owners[0]].name} and {p.name}")
            masks[owners[0]] = p
        mask_files = set(masks.values())
        return [(p, masks.get(p)) for p in files if p not in mask_files]

    def _is_defective(self, mask: Path, cache: dict[Path, bool]) -> bool:
        if mask not in cache:
            cache[mask] = bool((read_mask_array(mask) > self.mask_threshold).any())
        return cache[mask]

    # ------------------------------------------------------------------ labels
    def _parse_label(self, value: str, where: str) -> tuple[bool, str]:
        v = value.strip()
        if v.lower() in NORMAL_NAMES:
            return False, NORMAL
        if v.lower() in DEFECT_NAMES:
            return True, self.default_defect_type
        if not v:
            raise DataError(f"{where}: empty label")
        return True, v

    def _by_mask(self, image: Path, mask: Path | None, cache: dict[Path, bool], **extra: str) -> SampleRecord:
        """A record labelled by its mask (non-empty = defective), or unlabelled without one."""
        if mask is None:
            return SampleRecord(image, self.object_name, NORMAL, None, extra=dict(extra))
        anomalous = self._is_defective(mask, cache)
        return SampleRecord(image, self.object_name, self.default_defect_type if anomalous else NORMAL, anomalous,
                            mask_path=mask, mask_threshold=self.mask_threshold, extra=dict(extra))

    # ------------------------------------------------------------------ listing
    def _list(self) -> list[SampleRecord]:
        if self.mask_dir is not None and not self.mask_dir.is_dir():
            raise DataError(f"mask folder {self.mask_dir} does not exist")
        if self.labels_csv is not None:
            return self._from_csv()
        subdirs = sorted(
            p for p in self.root.iterdir() if p.is_dir() and not is_ignored(p) and p != self.mask_dir
        )
        flat = self._pairs(self.root)
        if flat:
            nested = [d.name + "/" for d in subdirs if list_images(d, recursive=True)]
            if nested:
                raise DataError(
                    f"{self.root} holds images both directly ({len(flat)}) and in sub-folders "
                    f"({', '.join(nested[:5])}{' ...' if len(nested) > 5 else ''}); put every image in a class "
                    "sub-folder (good/, scratch/, ...) or all directly in the folder, or list them in labels_csv "
                    "(a sub-folder of masks is given as mask_dir)"
                )
            return self._from_flat(flat)
        if not subdirs:
            return []  # the base class reports "no images found"
        pairs = {d: self._pairs(d) for d in subdirs}
        if not any(pairs.values()):
            deeper = next((p for d in subdirs for p in list_images(d, recursive=True)), None)
            if deeper is not None:
                raise DataError(
                    f"{self.root}: no recognised classes: no image lies directly in the folder or in its "
                    f"sub-folders ({', '.join(d.name + '/' for d in subdirs[:5])}), only deeper, e.g. "
                    f"{deeper.relative_to(self.root)}; point root at the folder whose sub-folders are the "
                    "classes (good/, scratch/, ...), or list the images in labels_csv"
                )
            return []
        cache: dict[Path, bool] = {}
        self.subfolder_mode = self._subfolder_mode(pairs, cache)
        if self.subfolder_mode == "groups":
            return self._from_groups(pairs, cache)
        return self._from_class_folders(pairs)

    def _subfolder_mode(self, pairs: dict[Path, list[Pair]], cache: dict[Path, bool]) -> str:
        if self.subfolders != "auto":
            return self.subfolders
        masks = [m for ps in pairs.values() for _, m in ps if m is not None]
        if self.mask_dir is not None or not masks or any(d.name.lower() in NORMAL_NAMES for d in pairs):
            return "classes"
        # masks beside the images and no normal folder: normal images are known by an empty mask -> groups;
        # every mask non-empty: one folder per defect type (a data set without normal images) -> classes
        return "groups" if any(not self._is_defective(m, cache) for m in masks) else "classes"

    def _from_csv(self) -> list[SampleRecord]:
        path = self.labels_csv
        if not path.is_file():
            raise DataError(f"labels CSV {path} does not exist")
        records = []
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if "image" not in (reader.fieldnames or []) or "label" not in (reader.fieldnames or []):
                raise DataError(f"{path}: needs columns 'image' and 'label'; found {reader.fieldnames}")
            for lineno, row in enumerate(reader, start=2):
                where = f"{path}:{lineno}"
                image = self.root / row["image"]
                if not image.is_file():
                    raise DataError(f"{where}: image {image} does not exist")
                anomalous, dtype = self._parse_label(row["label"], where)
                dtype = row.get("defect_type") or dtype
                mask = (self.root / row["mask"]) if row.get("mask") else self._mask_for(image)
                if mask is not None and not mask.is_file():
                    raise DataError(f"{where}: mask {mask} does not exist")
                records.append(
                    SampleRecord(image, row.get("object") or self.object_name, dtype if anomalous else NORMAL,
                                 anomalous, mask_path=mask, mask_threshold=self.mask_threshold,
                                 caption=row.get("caption") or None,
                                 extra={"group": row["group"]} if row.get("group") else {})
                )
        return records

    def _from_class_folders(self, pairs: dict[Path, list[Pair]]) -> list[SampleRecord]:
        records = []
        for d, ps in pairs.items():
            anomalous, dtype = self._parse_label(d.name, str(d))
            require_images(d, [p for p, _ in ps], f"class '{d.name}'")
            records += [SampleRecord(img, self.object_name, dtype, anomalous, mask_path=mask,
                                     mask_threshold=self.mask_threshold) for img, mask in ps]
        return records

    def _from_groups(self, pairs: dict[Path, list[Pair]], cache: dict[Path, bool]) -> list[SampleRecord]:
        records = []
        for d, ps in pairs.items():
            require_images(d, [p for p, _ in ps], f"group '{d.name}'")
            records += [self._by_mask(img, mask, cache, group=d.name) for img, mask in ps]
        return records

    def _from_flat(self, pairs: list[Pair]) -> list[SampleRecord]:
        cache: dict[Path, bool] = {}
        skip = self.skip_unmasked and self.mask_dir is not None
        self.left_out = [img for img, mask in pairs if skip and mask is None]
        if self.left_out:
            log.warning("%s: %d images without a mask in %s left out (skip_unmasked)", self.root, len(self.left_out),
                        self.mask_dir)
        return [self._by_mask(img, mask, cache) for img, mask in pairs if not (skip and mask is None)]
