"""The Haiku (JAX) backend of posenc (same public names as ``posenc.torch``)."""

from posenc.haiku.cutoff import smooth_cutoff
from posenc.haiku.encodings import (
    ENCODINGS,
    BesselEncoding,
    BSplineEncoding,
    GaussianEncoding,
    HermiteEncoding,
    LinearEncoding,
    MLPEncoding,
    QuinticHermiteEncoding,
    RawEncoding,
    SmoothCutoff,
    TableEncoding,
    encoding_dim,
    make_encoding,
    project_all,
)
from posenc.haiku.losses import smoothness_loss, total_smoothness_loss

__all__ = [
    "ENCODINGS",
    "BesselEncoding",
    "BSplineEncoding",
    "GaussianEncoding",
    "HermiteEncoding",
    "LinearEncoding",
    "MLPEncoding",
    "QuinticHermiteEncoding",
    "RawEncoding",
    "SmoothCutoff",
    "TableEncoding",
    "encoding_dim",
    "make_encoding",
    "project_all",
    "smooth_cutoff",
    "smoothness_loss",
    "total_smoothness_loss",
]
