"""The one data layer: readers for every layout, the DataModule, transforms and the demo data."""

from common.data.datamodule import DefectDataModule
from common.data.dataset import DefectDataset, collate_samples
from common.data.errors import DataError
from common.data.readers import (
    ClassIdSegReader,
    FolderReader,
    KSDD2Reader,
    MagneticTileReader,
    ManifestReader,
    MVTecReader,
    Reader,
    VisAReader,
)
from common.data.types import NORMAL, DefectBatch, Sample, SampleRecord

__all__ = [
    "NORMAL",
    "ClassIdSegReader",
    "DataError",
    "DefectBatch",
    "DefectDataModule",
    "DefectDataset",
    "FolderReader",
    "KSDD2Reader",
    "MVTecReader",
    "MagneticTileReader",
    "ManifestReader",
    "Reader",
    "Sample",
    "SampleRecord",
    "VisAReader",
    "collate_samples",
]
