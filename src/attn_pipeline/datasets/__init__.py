"""Custom Kedro datasets: what kedro-datasets does not ship."""

from .idx_dataset import IDXDataset, IDXFormatError, encode_idx, parse_idx, read_idx_file
from .torch_dataset import TorchDataset

__all__ = [
    "IDXDataset",
    "IDXFormatError",
    "TorchDataset",
    "encode_idx",
    "parse_idx",
    "read_idx_file",
]
