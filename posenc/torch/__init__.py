"""The PyTorch backend of posenc (same public names as ``posenc.haiku``)."""

from posenc.torch.cutoff import smooth_cutoff
from posenc.torch.encodings import (
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
from posenc.torch.losses import smoothness_loss, total_smoothness_loss
from posenc.torch import triton_kernel as _triton_kernel

# Fused Triton kernels on CUDA tensors when available (POSENC_KERNEL=auto|torch|triton).
_triton_kernel.configure()

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
