"""CPU speed of the encodings: forward and forward+backward time per million x values.

Prints a markdown table (and writes it to ``benchmarks/results/encodings_cpu.md`` with ``--write``).
Each time is the median of ``--repeats`` runs after a warm-up, in milliseconds per 10^6 inputs;
the ratio column divides it by the time of a plain copy of a tensor the size of the output
(``out.clone()``): the memory-bound floor for anything that writes an ``[E, dim]`` result.

Timer: process CPU time (``time.process_time``) with one torch thread by default, so the numbers
do not depend on how busy the machine's other cores are (shared CI and developer machines);
``--timer wall`` measures wall-clock time instead (use it with ``--threads`` > 1).

Rows:
* ``hermite``: posenc.torch.HermiteEncoding (one embedding_bag over the stacked table).
* ``hermite (4 gathers)``: the straightforward formulation (four row gathers, broadcast weights,
  sum) that the issue warns about, to show why the fused gather matters.
* ``linear``: posenc.torch.LinearEncoding.
* ``gaussian-50 + Linear``: 50 Gaussians then a Linear to dim (what a fixed basis costs in a model).
* ``bessel-8 + Linear``: DimeNet's 8-term Bessel basis then a Linear to dim.
Gaussian tails underflow into float32 denormals, which are very slow on x86 CPUs; every
configuration is timed with flush-to-zero off and on (``torch.set_flush_denormal``).

Usage: ``python benchmarks/bench_encodings.py [--n 1000000] [--threads 2] [--write]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from collections.abc import Callable

import torch
from torch import nn

from posenc.torch import BesselEncoding, GaussianEncoding, HermiteEncoding, LinearEncoding

X_MIN, X_MAX = 0.0, 5.0


class FourGatherHermite(nn.Module):
    """Hermite interpolation written the straightforward way: 4 gathers, 4 broadcasts, a sum."""

    def __init__(self, enc: HermiteEncoding) -> None:
        super().__init__()
        self.enc = enc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc
        u = (x - e.x_min) / e.delta
        i = u.detach().floor().clamp(0, e.n_bin - 2).long()
        t = (u - i)[:, None]
        t2, t3 = t * t, t * t * t
        v, s = e.values, e.slopes * e.delta
        return ((2 * t3 - 3 * t2 + 1) * v[i] + (3 * t2 - 2 * t3) * v[i + 1]
                + (t3 - 2 * t2 + t) * s[i] + (t3 - t2) * s[i + 1])


CLOCK: Callable[[], float] = time.process_time


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median time of ``fn`` in seconds (on :data:`CLOCK`), after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return statistics.median(times)


def bench(module: nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(forward, forward+backward) seconds; backward reaches x and every parameter."""
    with torch.no_grad():
        fwd = timed(lambda: module(x), repeats)
    xg = x.clone().requires_grad_(True)
    params = [p for p in module.parameters() if p.requires_grad]

    def fwd_bwd() -> None:
        out = module(xg)
        torch.autograd.grad(out, [xg, *params], grad_outputs=torch.ones_like(out))

    return fwd, timed(fwd_bwd, repeats)


def rows(n: int, repeats: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, generator=gen) * (X_MAX - X_MIN) + X_MIN
    out = []
    for flush in (False, True):
        torch.set_flush_denormal(flush)
        for dim in (32, 64, 128):
            copy = timed(lambda dim=dim: torch.empty(n, dim).clone(), repeats)
            cases: list[tuple[str, int | str, nn.Module]] = []
            for n_bin in (64, 256):
                h = HermiteEncoding(n_bin, dim, X_MIN, X_MAX)
                cases.append(("hermite", n_bin, h))
                if n_bin == 64:
                    cases.append(("hermite (4 gathers)", n_bin, FourGatherHermite(h)))
            cases.append(("linear", 64, LinearEncoding(64, dim, X_MIN, X_MAX)))
            gaussian = nn.Sequential(GaussianEncoding(50, X_MIN, X_MAX), nn.Linear(50, dim))
            cases.append(("gaussian-50 + Linear", "-", gaussian))
            cases.append(("bessel-8 + Linear", "-", nn.Sequential(BesselEncoding(8, X_MAX), nn.Linear(8, dim))))
            for name, n_bin, module in cases:
                fwd, fb = bench(module, x, repeats)
                out.append(dict(flush=flush, dim=dim, name=name, n_bin=n_bin, copy=copy, fwd=fwd, fb=fb))
                print(table(out[-1:], n).splitlines()[-1], file=sys.stderr, flush=True)  # progress
    torch.set_flush_denormal(False)
    return out


def table(results: list[dict], n: int) -> str:
    scale = 1e3 * 1e6 / n  # seconds for n inputs -> ms per 10^6 inputs
    lines = [
        "| flush denormals | dim | encoding | n_bin | forward ms/M | fwd ÷ copy | fwd+bwd ms/M | fwd+bwd ÷ copy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {'on' if r['flush'] else 'off'} | {r['dim']} | {r['name']} | {r['n_bin']} | {r['fwd'] * scale:.1f} | "
            f"{r['fwd'] / r['copy']:.2f} | {r['fb'] * scale:.1f} | {r['fb'] / r['copy']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="number of x values per call")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--timer", choices=("cpu", "wall"), default="cpu",
                        help="process CPU time (default, robust on a shared machine) or wall-clock time")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/encodings_cpu.md")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.timer == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    header = (
        f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} cores), {args.threads} torch thread(s), "
        f"{'process CPU' if args.timer == 'cpu' else 'wall-clock'} time, torch {torch.__version__}, float32, "
        f"E = {args.n:,} inputs, median of {args.repeats}. Copy = `out.clone()` of the [E, dim] output; "
        "forward+backward reaches x and every parameter."
    )
    text = header + "\n\n" + table(rows(args.n, args.repeats), args.n) + "\n"
    print(text)
    if args.write:
        path = Path(__file__).parent / "results" / "encodings_cpu.md"
        path.write_text(text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
