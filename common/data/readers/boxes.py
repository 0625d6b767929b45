"""Images with bounding-box annotations: Pascal VOC XML files or text lines ``x1 y1 x2 y2 type``.

Boxes become filled box masks flagged as coarse (``mask_quality="box"``); the DataModule serves them like
any class-id mask. Defect-free images (e.g. DeepPCB's templates) are listed by a second pattern. Layouts are
configured, not coded::

    # Pascal VOC
    BoxReader(root, images="JPEGImages/*.jpg", annotation="Annotations/{stem}.xml",
              split_files={"train": "ImageSets/Main/train.txt", "test": "ImageSets/Main/test.txt"})
    # DeepPCB: <group>/<id>/<n>_test.png, annotations <group>/<id>_not/<n>.txt, templates <n>_temp.png
    BoxReader(root, images="*/*/*_test.png", image_suffix="_test", annotation="{dir}_not/{stem}.txt",
              normal_images="*/*/*_temp.png", normal_suffix="_temp", class_names={1: "open", 2: "short"},
              split_files={"train": "trainval.txt", "test": "test.txt"})

Coordinates: text boxes are pixel corners, ``x1 <= x < x2``; VOC boxes are 1-based and inclusive
(``xmin..xmax``), converted to the same convention. Text lines may separate values by spaces, tabs or commas;
``#`` starts a comment. Parsing is hand-written with the standard library (``xml.etree``, ``re``): a VOC box is
four numbers under ``<bndbox>``, not worth a dependency.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

from common.data.errors import DataError
from common.data.io import is_image_file
from common.data.readers.base import Reader
from common.data.types import NORMAL, SampleRecord

_SEPARATORS = re.compile(r"[,\s]+")
Box = tuple[int, int, int, int, str]


def parse_text_boxes(path: Path) -> list[Box]:
    """``x1 y1 x2 y2 type`` per line (space, tab or comma separated; ``#`` comments) -> boxes with raw types."""
    boxes = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read annotation ({e})") from e
    for lineno, line in enumerate(lines, start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = _SEPARATORS.split(line)
        if len(parts) != 5:
            raise DataError(f"{path}:{lineno}: expected 'x1 y1 x2 y2 type' (5 values), got {len(parts)}: {line!r}")
        try:
            x1, y1, x2, y2 = (round(float(v)) for v in parts[:4])
        except ValueError as e:
            raise DataError(f"{path}:{lineno}: box corners must be numbers, got {line!r}") from e
        boxes.append(_checked((x1, y1, x2, y2, parts[4]), f"{path}:{lineno}"))
    return boxes


def parse_voc_boxes(path: Path) -> list[Box]:
    """Pascal VOC XML -> boxes (``<object><name>`` and ``<bndbox>``, 1-based inclusive corners converted)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise DataError(f"{path}: not a readable Pascal VOC XML file ({e})") from e
    boxes = []
    for i, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        where = f"{path}: object {i}"
        if not name or bb is None:
            raise DataError(f"{where}: needs <name> and <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (float(bb.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
            box = (round(xmin) - 1, round(ymin) - 1, round(xmax), round(ymax), name)
        except ValueError as e:
            raise DataError(f"{where}: <bndbox> needs numeric xmin, ymin, xmax, ymax") from e
        boxes.append(_checked(box, where))
    return boxes


def _checked(box: Box, where: str) -> Box:
    if box[2] <= box[0] or box[3] <= box[1]:
        raise DataError(f"{where}: empty box {box[:4]} (need x2 > x1 and y2 > y1)")
    return box


class BoxReader(Reader):
    """Reads images with box annotations; boxes become coarse box masks.

    Args:
        root: Dataset root.
        images: Glob of the annotated images, relative to ``root`` (``**`` allowed).
        annotation: Annotation file of an image, relative to ``root``: ``{dir}`` is the image's folder
            relative to ``root``, ``{stem}`` its stem without ``image_suffix``, ``{name}`` its file name.
            ``.xml`` files are read as Pascal VOC, anything else as ``x1 y1 x2 y2 type`` text lines.
        image_suffix: Stem suffix of annotated images, removed for ``{stem}`` and for matching split files.
        normal_images: Glob of defect-free images (``None``: none).
        normal_suffix: Stem suffix of defect-free images, removed for matching split files.
        class_names: How box types become defect names: a map type -> name (``{1: open, 2: short}``; keys
            are compared as text, so numeric ids and names both work), a list naming ids 1..K, or ``None``
            to use the types as written (they must then be names, not numbers).
        object_name: Object name for prompts and captions.
        split_files: Split name -> list file relative to ``root``. The first token of each line is an image
            path relative to ``root`` (or a bare stem); extension and suffixes are ignored, so
            ``group1/1/0001.jpg`` matches both ``group1/1/0001_test.png`` and ``group1/1/0001_temp.png``.
            Images in no list have no split.
    """

    layout = "box annotations"
    expected = "images matching a pattern, one annotation file per image (Pascal VOC .xml or 'x1 y1 x2 y2 type' text)"

    def __init__(
        self,
        root: str | Path,
        images: str = "images/*",
        annotation: str = "annotations/{stem}.txt",
        image_suffix: str = "",
        normal_images: str | None = None,
        normal_suffix: str = "",
        class_names: Mapping[str, str] | Sequence[str] | None = None,
        object_name: str = "object",
        split_files: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(root)
        self.images, self.annotation, self.image_suffix = images, annotation, image_suffix
        self.normal_images, self.normal_suffix = normal_images, normal_suffix
        if isinstance(class_names, Mapping):
            self._type_map = {str(k): str(v) for k, v in class_names.items()}
            self._declared = list(dict.fromkeys(self._type_map[k] for k in sorted(self._type_map, key=_natural)))
        elif class_names is not None:
            self._type_map = {str(i): str(v) for i, v in enumerate(class_names, start=1)} | {str(v): str(v) for v in class_names}
            self._declared = list(dict.fromkeys(str(v) for v in class_names))
        else:
            self._type_map, self._declared = None, []
        self._names: tuple[str, ...] = ()
        self.object_name = object_name
        self.split_files = dict(split_files or {})
        self.expected = f"images {images} with annotations {annotation}" + (
            f" and defect-free images {normal_images}" if normal_images else "")

    # ------------------------------------------------------------------ helpers
    def _glob(self, pattern: str) -> list[Path]:
        return sorted(p for p in self.root.glob(pattern)
                      if p.is_file() and is_image_file(p) and not any(s.startswith(".") for s in p.relative_to(self.root).parts))

    def _key(self, path: Path, suffix: str) -> str:
        rel = path.relative_to(self.root).with_suffix("")
        stem = rel.name[: -len(suffix)] if suffix and rel.name.endswith(suffix) else rel.name
        return (rel.parent / stem).as_posix()

    def _split_of(self) -> tuple[dict[str, str], dict[str, str]]:
        """``(key -> split, stem -> split)`` from the split files."""
        by_key: dict[str, str] = {}
        by_stem: dict[str, str] = {}
        for split, rel in self.split_files.items():
            path = self.root / rel
            if not path.is_file():
                raise DataError(f"split file {path} for split '{split}' does not exist")
            for lineno, line in enumerate(path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                token = Path(line.split()[0]).with_suffix("").as_posix()
                table = by_key if "/" in token else by_stem
                if table.get(token, split) != split:
                    raise DataError(f"{path}:{lineno}: {token} is already in split '{table[token]}'")
                table[token] = split
        return by_key, by_stem

    def _name(self, raw: str, where: str) -> str:
        if self._type_map is None:
            if re.fullmatch(r"\d+", raw):
                raise DataError(f"{where}: box type {raw} is a number; give class_names to name it")
            return raw
        if raw not in self._type_map:
            raise DataError(f"{where}: unknown box type {raw!r}; class_names knows {sorted(self._type_map, key=_natural)}")
        return self._type_map[raw]

    # ------------------------------------------------------------------ listing
    def _list(self) -> list[SampleRecord]:
        annotated = self._glob(self.images)
        normals = self._glob(self.normal_images) if self.normal_images else []
        if not annotated and not normals:
            raise self.layout_error(self.found_entries())
        both = sorted(set(annotated) & set(normals))
        if both:
            raise DataError(f"{both[0]}: matches both images={self.images!r} and normal_images={self.normal_images!r}")
        by_key, by_stem = self._split_of()

        def split(path: Path, suffix: str) -> str | None:
            key = self._key(path, suffix)
            return by_key.get(key, by_stem.get(key.rsplit("/", 1)[-1]))

        parsed = []
        for img in annotated:
            rel = img.relative_to(self.root)
            stem = self._key(img, self.image_suffix).rsplit("/", 1)[-1]
            ann = self.root / self.annotation.format(dir=rel.parent.as_posix(), stem=stem, name=rel.name)
            if not ann.is_file():
                raise DataError(f"{img}: no annotation; expected {ann}")
            boxes = parse_voc_boxes(ann) if ann.suffix.lower() == ".xml" else parse_text_boxes(ann)
            parsed.append((img, ann, [(*b[:4], self._name(b[4], str(ann))) for b in boxes]))
        names = tuple(self._declared or sorted({b[4] for _, _, boxes in parsed for b in boxes}))
        index = {n: i for i, n in enumerate(names, start=1)}
        self._names = names

        records = [SampleRecord(img, self.object_name, NORMAL, False, split=split(img, self.normal_suffix))
                   for img in normals]
        for img, ann, boxes in parsed:
            area: dict[str, int] = {}
            for x1, y1, x2, y2, n in boxes:
                area[n] = area.get(n, 0) + (x2 - x1) * (y2 - y1)
            present = sorted(area, key=index.get)
            records.append(SampleRecord(
                img, self.object_name, max(present, key=area.get) if present else NORMAL, bool(present),
                mask_path=ann, mask_kind="boxes", class_names=names, split=split(img, self.image_suffix),
                boxes=tuple((x1, y1, x2, y2, index[n]) for x1, y1, x2, y2, n in boxes), mask_quality="box",
                extra={"classes": tuple(present)},
            ))
        return records

    @property
    def class_names(self) -> tuple[str, ...]:
        """Defect names of box classes 1..K (declared ones, or those found in the annotations)."""
        if self._declared:
            return tuple(self._declared)
        self.records()
        return self._names


def _natural(key: str) -> tuple[int, int | str]:
    return (0, int(key)) if key.isdigit() else (1, key)
