"""Dataset readers, one per on-disk layout. Each lists :class:`~common.data.types.SampleRecord` s."""

from common.data.readers.base import Reader
from common.data.readers.boxes import BoxReader
from common.data.readers.class_id_seg import ClassIdSegReader
from common.data.readers.folder import FolderReader
from common.data.readers.images import ImageFilesReader
from common.data.readers.ksdd2 import KSDD2Reader
from common.data.readers.magnetic_tile import MagneticTileReader
from common.data.readers.manifest import ManifestReader
from common.data.readers.mvtec import MVTecReader
from common.data.readers.visa import VisAReader

__all__ = [
    "BoxReader",
    "ClassIdSegReader",
    "FolderReader",
    "ImageFilesReader",
    "KSDD2Reader",
    "MVTecReader",
    "MagneticTileReader",
    "ManifestReader",
    "Reader",
    "VisAReader",
]
