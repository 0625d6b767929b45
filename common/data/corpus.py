"""``defectfm corpus``: many labelled data sets -> one image-text corpus with unified defect names and splits.

Each source is a reader config: a ``configs/data/<name>.yaml`` snippet (``data.init_args.reader``), an
experiment config, a ``reader:`` mapping or a bare ``class_path``/``init_args`` mapping. Its domain is the
file's stem, or ``NAME=`` before the path. The output folder gets:

``manifest.jsonl``
    One JSON object per image (keys sorted; paths relative to the manifest, or absolute with ``--absolute``),
    sorted by domain then image path: ``image``, ``domain``, ``object``, ``defect_type`` (unified; ``good`` for
    defect-free), ``label`` (0/1), ``labels`` (every defect type the mask shows), ``caption`` (the templated
    caption of :mod:`common.data.captions`), ``nouns``, ``location``, ``split`` (``train``/``val``/``test``)
    and, for images with a mask, ``mask``, ``mask_quality`` (``pixel``, or ``box`` for filled bounding boxes)
    and what decoding it needs. Masks are never copied or converted: a line references the source mask and
    says how to read it. Binary masks: ``mask_threshold``. Class-id masks: ``mask_kind: class_id``,
    ``class_names`` (unified names of classes 1..K), ``class_ids`` (pixel value of each class, when not 1..K)
    and ``ignore_ids`` (values that are background, e.g. busbars). Box masks: ``mask_kind: boxes``, ``boxes``
    (``[x1, y1, x2, y2, name]``, ``x1 <= x < x2``) and ``class_names``; ``mask`` is the annotation file.
    :class:`~common.data.readers.manifest.ManifestReader` reads all of it back, so
    ``DefectDataModule(reader=ManifestReader("corpus/manifest.jsonl"))`` serves every domain, each with its own
    objects and defect names.
``corpus.json``
    Settings, sources (reader configs as resolved), and per domain: objects, counts, splits, defect types,
    renames made by the name mapping.
``shards/<split>/shard-NNNNNN.tar`` (``--shards``)
    WebDataset-format shards (:class:`~common.data.shards.ShardWriter`) in a seeded shuffled order, one sample
    per image: the image file's bytes (``png``/``jpg``...), ``json`` (its manifest line), ``txt`` (the caption)
    and, when it has a mask, ``mask.png``: uint8 class indices (0 = background, k = ``class_names[k - 1]`` of the
    json; binary masks are class 1 = ``defect_type``), already decoded.

Splits: a source's own split is kept; images it leaves without one get a seeded, stratified split
(``--split-ratios``), and a domain without a val (or test) split gets one carved from train (``--val-fraction``,
seeded, stratified). Images whose label is unknown (unlabelled) are left out and counted. The same inputs give a
byte-identical manifest (and shards).

Command line::

    defectfm corpus configs/data/*.yaml --out corpus [--names configs/corpus/names.yaml] [--shards]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.data.captions import caption_for
from common.data.errors import DataError
from common.data.masks import image_size, record_masks
from common.data.names import DEFAULT_NAMES_FILE, DefectNames
from common.data.reader_config import Source, load_sources
from common.data.splits import stratified_split
from common.data.types import NORMAL, SampleRecord

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.jsonl"
SUMMARY = "corpus.json"


# ----------------------------------------------------------------------------- records
def unify(record: SampleRecord, names: DefectNames, domain: str | None = None) -> SampleRecord:
    """``record`` with its defect type and class names unified."""
    return dataclasses.replace(
        record,
        defect_type=names(record.defect_type, domain),
        class_names=tuple(names(n, domain) for n in record.class_names),
    )


def assign_splits(records: Sequence[SampleRecord], seed: int, ratios: Sequence[float], val_fraction: float,
                  where: str) -> tuple[list[SampleRecord], int]:
    """Every record with a split: its own, else seeded; a missing val/test split carved from train.

    Returns:
        ``(records sorted by path, number of records whose split was seeded here)``.

    Raises:
        DataError: A split name other than train/val/test.
    """
    unknown = sorted({r.split for r in records if r.split is not None and r.split not in SPLITS})
    if unknown:
        raise DataError(f"{where}: unknown split names {unknown}; expected {list(SPLITS)} (rename them in the "
                        "reader config, e.g. split_names or split_files)")
    parts: dict[str, list[SampleRecord]] = {s: [r for r in records if r.split == s] for s in SPLITS}
    unsplit = [r for r in records if r.split is None]
    seeded = len(unsplit)
    if unsplit:
        for s, part in zip(SPLITS, stratified_split(unsplit, ratios, seed), strict=True):
            parts[s] += part
    for missing in ("val", "test"):
        if not parts[missing] and len(parts["train"]) > 1:
            frac = val_fraction if missing == "val" else ratios[2] / (ratios[0] + ratios[2])
            parts["train"], parts[missing] = stratified_split(parts["train"], (1 - frac, frac), seed)
            seeded += len(parts[missing])
    out = [dataclasses.replace(r, split=s) for s in SPLITS for r in parts[s]]
    return sorted(out, key=lambda r: str(r.image_path)), seeded


def record_pixels(record: SampleRecord) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(binary mask, class indices)`` of a record without decoding its image (the header gives the size)."""
    if record.mask_path is None and record.mask_kind != "boxes":
        return None, None
    mask, class_mask = record_masks(record, image_size(record.image_path))
    if class_mask is None and mask is not None:
        class_mask = mask.astype(np.int64)  # binary: class 1 = the record's defect type
    return mask, class_mask


def manifest_entry(record: SampleRecord, base: Path | None = None, domain: str | None = None) -> dict[str, Any]:
    """The manifest line (a dict) of one record: labels, templated caption, split and how to read its mask.

    Args:
        record: The record (defect names already unified, for a corpus).
        base: Folder the paths are made relative to; ``None`` for absolute paths.
        domain: Domain name to store.
    """

    def rel(p: Path) -> str:
        p = Path(p).resolve()
        return str(p) if base is None else os.path.relpath(p, base.resolve())

    mask, class_mask = record_pixels(record)
    cap = caption_for(record, mask)
    anomalous = bool(record.is_anomalous and record.defect_type != NORMAL)
    entry: dict[str, Any] = {
        "image": rel(record.image_path),
        "caption": cap.text,
        "object": record.object_name,
        "defect_type": record.defect_type,
        "label": int(anomalous),
        "nouns": list(cap.nouns),
    }
    if domain is not None:
        entry["domain"] = domain
    if anomalous:
        labels = [record.defect_type]
        if record.mask_kind in ("class_id", "boxes") and class_mask is not None:
            labels = [record.class_names[k - 1] for k in sorted({int(k) for k in np.unique(class_mask)} - {0})]
        entry["labels"] = list(dict.fromkeys(labels)) or [record.defect_type]
    if record.mask_path is not None:
        entry["mask"] = rel(record.mask_path)
    if mask is not None:
        entry["mask_quality"] = record.mask_quality
    if record.mask_kind == "binary" and record.mask_path is not None:
        entry["mask_threshold"] = record.mask_threshold
    elif record.mask_kind in ("class_id", "boxes"):
        entry["mask_kind"] = record.mask_kind
        entry["class_names"] = list(record.class_names)
        if record.class_ids:
            entry["class_ids"] = list(record.class_ids)
        if record.ignore_ids:
            entry["ignore_ids"] = list(record.ignore_ids)
        if record.mask_kind == "boxes":
            entry["boxes"] = [[x1, y1, x2, y2, record.class_names[k - 1]] for x1, y1, x2, y2, k in record.boxes]
    if record.split is not None:
        entry["split"] = record.split
    if cap.location is not None:
        entry["location"] = cap.location
    return entry


# ----------------------------------------------------------------------------- the corpus
@dataclasses.dataclass
class DomainSummary:
    """What one domain contributed (the rows of the printed table and of ``corpus.json``)."""

    domain: str
    config: str
    reader: dict[str, Any]
    objects: list[str]
    images: int
    normal: int
    defective: int
    left_out_unlabelled: int
    seeded_split: int
    splits: dict[str, int]
    defect_types: dict[str, int]
    class_names: list[str]
    mask_quality: dict[str, int]
    renamed: dict[str, str]


def build_corpus(
    sources: Sequence[Source],
    out: str | os.PathLike,
    names: DefectNames | None = None,
    seed: int = 0,
    split_ratios: Sequence[float] = (0.6, 0.2, 0.2),
    val_fraction: float = 0.2,
    absolute: bool = False,
    shards: bool = False,
    shard_size: int = 1000,
    progress: bool | None = None,
) -> list[DomainSummary]:
    """Writes the corpus of ``sources`` into ``out`` (see the module docstring).

    Args:
        sources: From :func:`load_sources`.
        out: Output folder (created).
        names: Defect-name unification (default: the shipped ``configs/corpus/names.yaml``).
        seed: Seed of every split made here and of the shard order.
        split_ratios: Train/val/test fractions for images without a split of their own.
        val_fraction: Fraction of train carved for val in domains without a val split.
        absolute: Absolute paths in the manifest instead of paths relative to it.
        shards: Also write WebDataset-format shards per split.
        shard_size: Samples per shard.
        progress: Show progress bars (``None``: when stderr is a terminal).

    Returns:
        One summary per domain, sorted by domain.
    """
    from tqdm.auto import tqdm

    names = names if names is not None else DefectNames.load(DEFAULT_NAMES_FILE)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = None if absolute else out
    entries: list[dict[str, Any]] = []
    summaries = []
    for src in sources:
        where = f"{src.domain} ({src.config})"
        try:
            listed = src.reader.records()
        except DataError as e:
            raise DataError(f"{where}: {e}") from e
        labelled = [r for r in listed if r.is_anomalous is not None]
        if not labelled:
            raise DataError(f"{where}: all {len(listed)} images are unlabelled (no label, no mask); nothing to add")
        unified = [unify(r, names, src.domain) for r in labelled]
        records, seeded = assign_splits(unified, seed, split_ratios, val_fraction, where)
        renamed = {raw: new for r in labelled for raw in (r.defect_type, *r.class_names)
                   if (new := names(raw, src.domain)) != raw}
        for rec in tqdm(records, desc=f"corpus {src.domain}", unit="img", disable=None if progress is None else not progress):
            entries.append(manifest_entry(rec, base, src.domain))
        summaries.append(DomainSummary(
            domain=src.domain, config=src.config, reader=src.node,
            objects=sorted({r.object_name for r in records}),
            images=len(records), normal=sum(not r.is_anomalous for r in records),
            defective=sum(bool(r.is_anomalous) for r in records),
            left_out_unlabelled=len(listed) - len(labelled) + len(getattr(src.reader, "left_out", ())),
            seeded_split=seeded,
            splits={s: sum(r.split == s for r in records) for s in SPLITS},
            defect_types=dict(sorted(Counter(r.defect_type for r in records if r.is_anomalous).items())),
            class_names=list(dict.fromkeys(n for r in records for n in r.class_names)),
            mask_quality=dict(sorted(Counter(r.mask_quality if (r.mask_path or r.mask_kind == "boxes") else "none"
                                             for r in records).items())),
            renamed=dict(sorted(renamed.items())),
        ))
    (out / MANIFEST).write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    summary = {
        "settings": {"seed": seed, "split_ratios": list(split_ratios), "val_fraction": val_fraction,
                     "absolute": absolute, "names": {"synonyms": names.synonyms, "singularize": names.singularize,
                                                     "keep": sorted(names.keep), "domains": names.domains}},
        "domains": {s.domain: dataclasses.asdict(s) for s in summaries},
        "objects": {o: sorted({e["defect_type"] for e in entries if e["object"] == o} - {NORMAL}
                              | {n for e in entries if e["object"] == o for n in e.get("class_names", [])})
                    for o in sorted({e["object"] for e in entries})},
        "images": len(entries),
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    if shards:
        from common.data.corpus_shards import write_corpus_shards

        write_corpus_shards(entries, out, seed, shard_size, progress)
    return summaries


def format_table(summaries: Sequence[DomainSummary]) -> str:
    """The per-domain table printed by the command."""
    head = ("domain", "objects", "images", "normal", "defective", "left out", "train/val/test", "masks", "defect types")
    rows = []
    for s in summaries:
        rows.append((
            s.domain, ",".join(s.objects), str(s.images), str(s.normal), str(s.defective), str(s.left_out_unlabelled),
            "/".join(str(s.splits[k]) for k in SPLITS), ",".join(f"{k} {v}" for k, v in s.mask_quality.items()),
            f"{len(s.defect_types)}: " + ", ".join(f"{k} {v}" for k, v in s.defect_types.items()),
        ))
    total = ("total", str(len({o for s in summaries for o in s.objects})) + " objects",
             *(str(sum(int(r[i]) for r in rows)) for i in (2, 3, 4, 5)),
             "/".join(str(sum(s.splits[k] for s in summaries)) for k in SPLITS), "",
             f"{len({t for s in summaries for t in s.defect_types})} unified types")
    widths = [max(len(r[i]) for r in (head, *rows, total)) for i in range(len(head) - 1)]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]

    rule = "-" * (sum(widths) + 2 * len(widths) + 12)
    return "\n".join([line(head), rule, *(line(r) for r in rows), rule, line(total)])


def main(argv: Sequence[str] | None = None) -> None:
    """``defectfm corpus [NAME=]CONFIG.yaml ... --out DIR``; bad input ends with one line and exit code 2."""
    p = argparse.ArgumentParser(prog="defectfm corpus", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example: defectfm corpus configs/data/*.yaml --out corpus --shards")
    p.add_argument("sources", nargs="+", metavar="[NAME=]CONFIG",
                   help="reader configs (configs/data/*.yaml, experiment configs...); domain = NAME or the file stem")
    p.add_argument("--out", required=True, help="output folder (manifest.jsonl, corpus.json, shards/)")
    p.add_argument("--names", default=str(DEFAULT_NAMES_FILE),
                   help="defect-name mapping YAML (default: %(default)s); 'none': normalisation and plurals only")
    p.add_argument("--root", action="append", default=[], metavar="NAME=PATH", help="override a source's root")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits made here and of the shard order")
    p.add_argument("--split-ratios", type=float, nargs=3, default=(0.6, 0.2, 0.2), metavar=("TRAIN", "VAL", "TEST"),
                   help="split of images that have none of their own (default: 0.6 0.2 0.2)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="val carved from train where a source has none")
    p.add_argument("--absolute", action="store_true", help="absolute paths in the manifest")
    p.add_argument("--shards", action="store_true", help="also write WebDataset tar shards per split")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    a = p.parse_args(argv)
    try:
        names = DefectNames.load(None if a.names.lower() == "none" else a.names)
        summaries = build_corpus(load_sources(a.sources, a.root), a.out, names, a.seed, a.split_ratios,
                                 a.val_fraction, a.absolute, a.shards, a.shard_size)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(format_table(summaries))
    for s in summaries:
        if s.renamed:
            print(f"{s.domain}: renamed " + ", ".join(f"{k} -> {v}" for k, v in s.renamed.items()))
    out = Path(a.out)
    print(f"wrote {sum(s.images for s in summaries)} images to {out / MANIFEST} (summary: {out / SUMMARY}"
          + (f", shards: {out / 'shards'})" if a.shards else ")"))


if __name__ == "__main__":
    main()
