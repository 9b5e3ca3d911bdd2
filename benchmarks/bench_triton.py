"""GPU speed of the fused Triton Hermite kernels against the torch reference and a Gaussian RBF.

Needs a CUDA device. Without one (or with ``TRITON_INTERPRET=1``, which would time Triton's
CPU interpreter) it prints why and exits with status 0 having timed nothing: CPU or interpreter
timings are never presented as GPU performance. Status 1 means a kernel disagreed with the
reference (nothing is timed then either).

Implementations (all float32, x uniform in [X_MIN, X_MAX]):

* ``torch``: ``posenc.torch.spline.interpolate`` with no kernel registered (embedding_bag
  forward; table gradient by a sparse-dense product).
* ``triton``: ``posenc.torch.triton_kernel.interpolate``: forward and every backward are kernels
  (what ``POSENC_KERNEL=auto`` registers on a GPU machine).
* ``rbf50+linear``: ``GaussianEncoding(50)`` then ``nn.Linear(50, dim)`` (the fixed-basis baseline).

Workloads (h = encoding(x) ``[E, dim]``, G ``[E, dim]`` and r ``[E]`` fixed random tensors):

* ``fwd``: h.
* ``fwd+bwd``: h, then the gradients of <h, G> w.r.t. x and the table (or Linear weights).
* ``double``: forces-style: f = d<h, G>/dx with ``create_graph``, then the gradient of
  <f, r> w.r.t. the table (or Linear weights).

``bound`` is the time the bytes that any implementation must move take at the measured copy
bandwidth (``dst.copy_(src)`` of 1 GiB, counting read + write). Bytes, with s = 4 per float:
fwd ``E dim s + E s``; fwd+bwd ``2 E dim s + 2 E s``; double ``2 E dim s + 2 E s``
(write h, read G; read x, r or write dL/dx; the small tables are ignored).

A second table times the table-gradient scatter alone (``_triton_kernels.scatter``), unsorted
and sorted by bin, for uniform x and for all x in one bin (the contended case), to tune
``SCATTER_MAX_BINS`` and the sorting rule.

Usage: ``python benchmarks/bench_triton.py [--quick] [--write]`` (``--write`` saves the tables
to ``benchmarks/results/triton_gpu.md``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from collections.abc import Callable

import torch
from torch import nn

X_MIN, X_MAX = 0.0, 5.0
METHODS = ("torch", "triton", "rbf50+linear")
MODES = ("fwd", "fwd+bwd", "double")


def cuda_time(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn`` on the current CUDA stream (CUDA events), after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Device copy bandwidth in bytes/s: (read + write) bytes of a 1 GiB copy over its time."""
    src = torch.empty(2**28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / cuda_time(lambda: dst.copy_(src), 10)


def must_move(mode: str, n: int, dim: int) -> int:
    """Bytes any implementation of the workload must move (see the module docstring)."""
    s = 4
    return {"fwd": n * dim * s + n * s, "fwd+bwd": 2 * (n * dim * s + n * s), "double": 2 * (n * dim * s + n * s)}[mode]


def encoders(n_bin: int, dim: int) -> dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], list[torch.Tensor]]]:
    """Per method: (x -> h, the parameters whose gradients the workloads ask for).

    No input checks (they synchronise with the host): each is the encoding's arithmetic only.
    """
    from posenc.spline import HERMITE_POWER_COEFFS
    from posenc.torch import GaussianEncoding, HermiteEncoding, spline, triton_kernel

    enc = HermiteEncoding(n_bin, dim, X_MIN, X_MAX, device="cuda")
    offsets = torch.tensor(enc.row_offsets(), device="cuda")
    coeffs = spline.all_derivative_coeffs(HERMITE_POWER_COEFFS)
    grid = (X_MIN, enc.delta, n_bin)
    gauss = GaussianEncoding(50, X_MIN, X_MAX, device="cuda")
    linear = nn.Linear(50, dim, device="cuda")

    def reference(x: torch.Tensor) -> torch.Tensor:
        return spline.interpolate(x, enc.stacked_table(), offsets, coeffs, *grid, 0)

    def fused(x: torch.Tensor) -> torch.Tensor:
        return triton_kernel.interpolate(x, enc.stacked_table(), offsets, coeffs, *grid, 0)

    def rbf(x: torch.Tensor) -> torch.Tensor:
        return linear(torch.exp(-gauss.gamma * (x[:, None] - gauss.centres) ** 2))

    tables = [enc.values, enc.slopes]
    return {"torch": (reference, tables), "triton": (fused, tables), "rbf50+linear": (rbf, [linear.weight])}


def workload(mode: str, f: Callable, params: list[torch.Tensor], x: torch.Tensor, g: torch.Tensor,
             r: torch.Tensor) -> Callable[[], object]:
    if mode == "fwd":
        return lambda: f(x)
    if mode == "fwd+bwd":
        xg = x.clone().requires_grad_()
        return lambda: torch.autograd.grad(f(xg), [xg, *params], grad_outputs=g)

    xg = x.clone().requires_grad_()

    def double() -> object:
        (force,) = torch.autograd.grad(f(xg), xg, grad_outputs=g, create_graph=True)
        return torch.autograd.grad(force, params, grad_outputs=r)

    return double


def check_agreement(n_bin: int, dim: int) -> float:
    """Largest relative difference of ``triton`` from ``torch`` over the workloads' results."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = X_MIN + (X_MAX - X_MIN) * torch.rand(4097, generator=gen, device="cuda")
    g = torch.randn(4097, dim, generator=gen, device="cuda")
    r = torch.randn(4097, generator=gen, device="cuda")
    enc = encoders(n_bin, dim)
    worst = 0.0
    for mode in MODES:
        results = {}
        for method in ("torch", "triton"):
            out = workload(mode, *enc[method], x, g, r)()
            results[method] = (out if isinstance(out, torch.Tensor) else torch.cat([t.flatten() for t in out])).detach()
        want = results["torch"]
        worst = max(worst, float((results["triton"] - want).abs().max() / (1 + want.abs().max())))
    return worst


def main_table(sizes: list[int], dims: list[int], n_bins: list[int], bandwidth: float) -> list[str]:
    lines = [
        "| E | dim | n_bin | workload | torch ms | triton ms | rbf50+linear ms | bound ms "
        "| torch ÷ triton | triton ÷ bound |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    print(lines[0], flush=True)
    for n in sizes:
        for dim in dims:
            for n_bin in n_bins:
                gen = torch.Generator(device="cuda").manual_seed(0)
                try:
                    x = X_MIN + (X_MAX - X_MIN) * torch.rand(n, generator=gen, device="cuda")
                    g = torch.randn(n, dim, generator=gen, device="cuda")
                    r = torch.randn(n, generator=gen, device="cuda")
                except torch.cuda.OutOfMemoryError:
                    print(f"| {n:.0e} | {dim} | {n_bin} | inputs do not fit |", flush=True)
                    continue
                enc = encoders(n_bin, dim)
                repeats = max(3, min(20, int(2e9 // (n * dim))))
                for mode in MODES:
                    ms = {}
                    for method in METHODS:
                        try:
                            ms[method] = 1e3 * cuda_time(workload(mode, *enc[method], x, g, r), repeats)
                        except torch.cuda.OutOfMemoryError:
                            ms[method] = float("nan")
                        torch.cuda.empty_cache()
                    bound = 1e3 * must_move(mode, n, dim) / bandwidth
                    cells = " | ".join("OOM" if v != v else f"{v:.3f}" for v in ms.values())
                    line = (f"| {n:.0e} | {dim} | {n_bin} | {mode} | {cells} | {bound:.3f} "
                            f"| {ms['torch'] / ms['triton']:.2f} | {ms['triton'] / bound:.2f} |")
                    lines.append(line)
                    print(line, flush=True)
                del x, g, r, enc
                torch.cuda.empty_cache()
    return lines


def scatter_table(n: int, dim: int, n_bins: list[int]) -> list[str]:
    from posenc.spline import HERMITE_POWER_COEFFS
    from posenc.torch import _triton_kernels as kernels

    lines = ["| x | n_bin | unsorted ms | sorted ms | default ms (sorts?) |", "|---|---|---|---|---|"]
    print(lines[0], flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    g = torch.randn(n, dim, generator=gen, device="cuda")
    for n_bin in n_bins:
        delta = (X_MAX - X_MIN) / (n_bin - 1)
        offsets = torch.tensor([0, 1, n_bin, n_bin + 1], device="cuda")
        for name, x in [("uniform", X_MIN + (X_MAX - X_MIN) * torch.rand(n, generator=gen, device="cuda")),
                        ("one bin", X_MIN + delta * (3 + torch.rand(n, generator=gen, device="cuda")))]:
            args = (x, g, offsets, HERMITE_POWER_COEFFS, 0, X_MIN, delta, n_bin, 2 * n_bin)
            ms = [1e3 * cuda_time(lambda s=s, args=args: kernels.scatter(*args, sort=s), 10)
                  for s in (False, True, None)]
            block_e, _ = kernels._blocks(dim, max_d=64)
            sorts = block_e * (n_bin - 1) <= (kernels.SCATTER_MAX_BINS - 1) * n
            line = f"| {name} | {n_bin} | {ms[0]:.3f} | {ms[1]:.3f} | {ms[2]:.3f} ({'yes' if sorts else 'no'}) |"
            lines.append(line)
            print(line, flush=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="E in {1e4, 1e6}, dim 64 only")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/triton_gpu.md")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("TRITON_INTERPRET=1 is set: Triton would run on its CPU interpreter; not timing that as GPU speed.")
        return 0
    if not torch.cuda.is_available():
        print("No CUDA device: this GPU benchmark measures nothing on this machine (CPU timings are not GPU speed).")
        return 0
    from posenc.torch import triton_kernel

    triton_kernel.disable()  # "torch" times the reference even where POSENC_KERNEL=auto enabled the kernels
    torch.manual_seed(0)
    n_bins = [64, 1024]
    worst = max(check_agreement(n_bin, dim) for n_bin in n_bins for dim in (3, 65))
    if worst > 1e-4:
        print(f"triton and torch disagree (max relative difference {worst:.2e}); not timing a wrong kernel")
        return 1
    import triton

    bandwidth = copy_bandwidth()
    sizes = [10**4, 10**6] if args.quick else [10**4, 10**5, 10**6, 10**7, 10**8]
    dims = [64] if args.quick else [32, 128, 256]
    header = (
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, float32. "
        f"Copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write). Median of 3-20 runs after a warm-up; "
        f"triton vs torch agree to {worst:.1e} (relative)."
    )
    print(header)
    text = [header, "", *main_table(sizes, dims, n_bins, bandwidth), "",
            f"Table-gradient scatter alone, E = {sizes[-2]:.0e}, dim 64:", "",
            *scatter_table(sizes[-2], 64, n_bins)]
    if args.write:
        path = Path(__file__).parent / "results" / "triton_gpu.md"
        path.parent.mkdir(exist_ok=True)
        path.write_text("\n".join(text) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
