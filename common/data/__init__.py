"""The one data layer: readers for every layout, the DataModule, transforms and the demo data."""

from common.data.datamodule import DefectDataModule
from common.data.dataset import DefectDataset, collate_samples
from common.data.errors import DataError
from common.data.image_text import ImageTextBatch, ImageTextDataModule
from common.data.readers import (
    BoxReader,
    ClassIdSegReader,
    FolderReader,
    ImageFilesReader,
    KSDD2Reader,
    MagneticTileReader,
    ManifestReader,
    MVTecReader,
    Reader,
    VisAReader,
)
from common.data.shards import EpochDataLoader, ShardDataset, ShardWriter
from common.data.types import NORMAL, DefectBatch, Sample, SampleRecord

__all__ = [
    "NORMAL",
    "BoxReader",
    "ClassIdSegReader",
    "DataError",
    "DefectBatch",
    "DefectDataModule",
    "DefectDataset",
    "EpochDataLoader",
    "FolderReader",
    "ImageFilesReader",
    "ImageTextBatch",
    "ImageTextDataModule",
    "KSDD2Reader",
    "MVTecReader",
    "MagneticTileReader",
    "ManifestReader",
    "Reader",
    "Sample",
    "SampleRecord",
    "ShardDataset",
    "ShardWriter",
    "VisAReader",
    "collate_samples",
]
