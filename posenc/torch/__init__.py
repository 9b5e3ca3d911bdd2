"""The PyTorch backend of posenc (same public names as ``posenc.haiku``)."""

from posenc.torch.cutoff import smooth_cutoff
from posenc.torch.encodings import (
    ENCODINGS,
    BesselEncoding,
    GaussianEncoding,
    HermiteEncoding,
    LinearEncoding,
    MLPEncoding,
    RawEncoding,
    SmoothCutoff,
    TableEncoding,
    make_encoding,
)
from posenc.torch.losses import smoothness_loss, total_smoothness_loss

__all__ = [
    "ENCODINGS",
    "BesselEncoding",
    "GaussianEncoding",
    "HermiteEncoding",
    "LinearEncoding",
    "MLPEncoding",
    "RawEncoding",
    "SmoothCutoff",
    "TableEncoding",
    "make_encoding",
    "smooth_cutoff",
    "smoothness_loss",
    "total_smoothness_loss",
]
