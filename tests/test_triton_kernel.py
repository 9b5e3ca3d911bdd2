"""The fused Triton kernels (``posenc.torch.triton_kernel``) against the torch reference.

Without a GPU, Triton runs its kernels on CPU tensors through its interpreter, enabled by
``TRITON_INTERPRET=1`` *before* Triton is imported. So that this never leaks into other test
modules, :func:`test_kernels_in_interpreter` runs this very file again in a subprocess with the
variable set, collecting the ``check_*`` functions (``-o python_functions=check_*``); the
selection and input-check tests run in-process. Inputs are fresh random numbers on each run: the
seed is printed and ``POSENC_TEST_SEED=<seed>`` reproduces a failure.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (optional extra: pip install 'posenc[triton]')")

from posenc.spline import HERMITE_POWER_COEFFS, LINEAR_POWER_COEFFS, POWER_COEFFS, row_offsets  # noqa: E402
from posenc.torch import _triton_kernels as kernels  # noqa: E402
from posenc.torch import spline as ref  # noqa: E402
from posenc.torch import triton_kernel as tk  # noqa: E402

SEED = int(os.environ.get("POSENC_TEST_SEED", random.SystemRandom().randrange(2**31)))
HERMITE = ref.all_derivative_coeffs(HERMITE_POWER_COEFFS)
LINEAR = ref.all_derivative_coeffs(LINEAR_POWER_COEFFS)
TOL = {torch.float32: 2e-5, torch.float64: 1e-11}  # relative to the largest reference entry
# Each nested gradient level differentiates the previous level's rounded results, and the x
# gradients at level 3 are third derivatives whose 1/Δ³ terms cancel, so the kernels and the
# oracle (two summation orders of the same sums) drift further apart with each level: a float32
# seed gave 5.3e-5 at level 3 (POSENC_TEST_SEED=1809169797, quintic Hermite, order 0). 10x per
# level past the first leaves level 3 at 2e-3, still far below the O(1) error of a wrong derivative.
LEVEL_GROWTH = 10.0


# --- in-process: selection and input checks --------------------------------------------------

def test_kernels_in_interpreter() -> None:
    """Runs the ``check_*`` functions below under ``TRITON_INTERPRET=1`` in a fresh process."""
    env = dict(os.environ, TRITON_INTERPRET="1", POSENC_TEST_SEED=str(SEED), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pytest", "-q", __file__, "-o", "python_functions=check_*", "-o", "addopts=",
           "-p", "no:cacheprovider", "--noconftest"]
    print(f"seed {SEED}: {' '.join(cmd)}")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    print(proc.stdout[-5000:], proc.stderr[-5000:])
    assert proc.returncode == 0, f"interpreter checks failed (POSENC_TEST_SEED={SEED}):\n{proc.stdout[-5000:]}"
    assert " passed" in proc.stdout and "skipped" not in proc.stdout


@pytest.fixture
def restore_hook():
    """Leaves the reference's fused-interpolate hook as the test found it."""
    saved = ref._FUSED_INTERPOLATE
    yield
    ref.set_fused_interpolate(saved)


def test_configure_selects_and_forces(restore_hook, monkeypatch) -> None:
    assert tk.configure("torch") == "torch" and ref._FUSED_INTERPOLATE is None
    assert tk.configure("triton") == "triton" and ref._FUSED_INTERPOLATE is tk.interpolate
    tk.disable()
    assert ref._FUSED_INTERPOLATE is None
    tk.enable()
    assert ref._FUSED_INTERPOLATE is tk.interpolate
    expected = "triton" if torch.cuda.is_available() else "torch"
    assert tk.is_available() == torch.cuda.is_available()
    assert tk.configure("auto") == expected
    monkeypatch.setenv(tk.KERNEL_ENV, "torch")
    assert tk.configure() == "torch" and ref._FUSED_INTERPOLATE is None
    monkeypatch.setenv(tk.KERNEL_ENV, "triton")
    assert tk.configure() == "triton" and ref._FUSED_INTERPOLATE is tk.interpolate
    monkeypatch.delenv(tk.KERNEL_ENV)
    assert tk.configure() == expected


def test_configure_rejects_unknown_mode(restore_hook, monkeypatch) -> None:
    with pytest.raises(ValueError, match="not one of"):
        tk.configure("cuda")
    monkeypatch.setenv(tk.KERNEL_ENV, "fast")
    with pytest.raises(ValueError, match="POSENC_KERNEL='fast'"):
        tk.configure()


def test_without_triton_auto_falls_back_and_force_raises(restore_hook, monkeypatch) -> None:
    monkeypatch.setattr(tk, "_triton_installed", lambda: False)
    assert not tk.is_available()
    assert tk.configure("auto") == "torch" and ref._FUSED_INTERPOLATE is None
    with pytest.raises(ImportError, match="posenc\\[triton\\]"):
        tk.configure("triton")


def _inputs(n_bin: int = 5, dim: int = 3, n: int = 4, dtype: torch.dtype = torch.float32):
    x = torch.linspace(0.0, 1.0, n, dtype=dtype)
    table = torch.zeros(2 * n_bin, dim, dtype=dtype)
    offsets = torch.tensor([0, 1, n_bin, n_bin + 1])
    return x, table, offsets


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda x, t, o: (x[:, None], t, o), ValueError, "must be \\[E\\]"),
        (lambda x, t, o: (x.double(), t, o), TypeError, "share one of"),
        (lambda x, t, o: (x.long(), t.long(), o), TypeError, "share one of"),
        (lambda x, t, o: (x, t, o.int()), ValueError, "int64"),
        (lambda x, t, o: (x, t, o[:2]), ValueError, "int64 \\[4\\]"),
        (lambda x, t, o: (x, t, o), ValueError, "TRITON_INTERPRET"),  # CPU tensors, no interpreter here
    ],
)
def test_rejects_bad_inputs(change, error, match) -> None:
    x, table, offsets = change(*_inputs())
    with pytest.raises(error, match=match):
        tk.interpolate(x, table, offsets, HERMITE, 0.0, 0.25, 5, 0)


@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_kernels_compile_for_h100(dtype) -> None:
    """Every kernel lowers to sm_90 machine code (Triton's bundled ptxas; no GPU needed).

    The interpreter cannot see lowering errors (a float64 IEEE division once failed only here).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    base = dict(B=4, P=4, BLOCK_E=16, BLOCK_D=64)
    variants = [(kernels._interp_kernel, base), (kernels._interp_dot_kernel, base),
                (kernels._scatter_kernel, dict(base, MAX_BINS=4, HAS_PERM=True)),
                (kernels._scatter_kernel, dict(base, MAX_BINS=4, HAS_PERM=False))]
    for kernel, constexprs in variants:
        signature = {
            name: "constexpr" if name in constexprs
            else "*i64" if name in ("off_ptr", "perm_ptr")
            else f"*{dtype}" if name.endswith("_ptr")
            else "i32"
            for name in kernel.arg_names
        }
        compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                                  options=kernels.LAUNCH_OPTIONS)
        assert len(compiled.asm["cubin"]) > 0, kernel.__name__


# --- under TRITON_INTERPRET=1 (collected only by the subprocess) ----------------------------

def _case(kind: str, n_bin: int, dim: int, n: int, dtype: torch.dtype, salt: int, one_bin: bool = False):
    """Random table and inputs that include every centre and both range ends (when n allows)."""
    gen = torch.Generator().manual_seed(SEED + salt)
    x_min, x_max = -0.7, 2.3
    delta = (x_max - x_min) / (n_bin - 1)
    coeffs_all = ref.all_derivative_coeffs(POWER_COEFFS[kind])  # kind: a table form of posenc.spline
    offsets = torch.tensor(row_offsets(kind, n_bin))
    n_rows = int(offsets.max()) + n_bin - 1  # the last interval, n_bin - 2, reads row n_bin - 2 + max offset
    table = torch.randn(n_rows, dim, generator=gen, dtype=torch.float64).to(dtype)
    if one_bin:  # all in the interval after centre 1, with repeats
        x = x_min + delta * (1 + torch.rand(n, generator=gen, dtype=torch.float64))
        x[: n // 4] = x[0]
    else:
        special = torch.cat([torch.linspace(x_min, x_max, n_bin, dtype=torch.float64),
                             torch.tensor([x_min, x_max], dtype=torch.float64)])
        x = x_min + (x_max - x_min) * torch.rand(n, generator=gen, dtype=torch.float64)
        x[: min(n, special.numel())] = special[torch.randperm(special.numel(), generator=gen)[:n]]
    grid = (x_min, delta, n_bin)
    return x.to(dtype), table, offsets, coeffs_all, grid, gen


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str, level: int = 0) -> None:
    """Max-norm agreement relative to the reference's largest entry (plus one), with
    :data:`LEVEL_GROWTH` more room per nested gradient level past the first."""
    assert got.shape == want.shape and got.dtype == want.dtype, what
    err = float((got - want).abs().max()) if got.numel() else 0.0
    scale = 1.0 + (float(want.abs().max()) if want.numel() else 0.0)
    tol = TOL[dtype] * LEVEL_GROWTH ** max(0, level - 1)
    assert err <= tol * scale, f"{what}: max error {err:.3g} (scale {scale:.3g}, tol {tol:.1g}, seed {SEED})"


def _nested_grads(f, x, table, offsets, coeffs_all, grid, order, levels, gen):
    """The encoding and ``levels`` nested gradients of random scalar losses.

    Level 1 differentiates ``<out, G>`` w.r.t. (x, table); every later level differentiates a
    random quadratic function of the previous gradients w.r.t. (x, table, G), so the backward
    of each kernel Function is exercised w.r.t. each of its inputs. Returns every intermediate as
    ``(level, tensor)``: the encoding at level 0, then each level's gradients.
    """
    def rand_like(t):
        return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)

    x = x.clone().requires_grad_()
    table = table.clone().requires_grad_()
    out = f(x, table, offsets, coeffs_all, *grid, order)
    cotangent = rand_like(out).requires_grad_()
    results = [(0, out)]
    scalar, wrt = (out * cotangent).sum(), [x, table]
    for level in range(1, levels + 1):
        grads = torch.autograd.grad(scalar, wrt, create_graph=True, allow_unused=True)
        grads = [torch.zeros_like(w) if g is None else g for w, g in zip(wrt, grads)]
        results.extend((level, g) for g in grads)
        # quadratic, so that the next level's cotangents depend on x, table and G too
        scalar = sum((g * rand_like(g)).sum() + 0.5 * (g * g).sum() for g in grads)
        wrt = [x, table, cotangent]
    return results


def _oracle(x, table, offsets, coeffs_all, x_min, delta, n_bin, order):
    """Gather the B rows, then weight and sum, all in plain autograd: exact to every order, slow."""
    idx, t = ref.locate(x, x_min, delta, n_bin)
    w = ref.basis_weights(t, coeffs_all[min(order, len(coeffs_all) - 1)], order, delta)  # [E, B]
    return (w[:, :, None] * table[idx[:, None] + offsets]).sum(1)  # [E, D]


def _compare_all_levels(kind, dtype, n_bin, dim, n, order, levels, salt, one_bin=False):
    """The kernels vs the autograd oracle and vs ``posenc.torch.spline``, at every level."""
    x, table, offsets, coeffs_all, grid, gen = _case(kind, n_bin, dim, n, dtype, salt, one_bin)
    state = gen.get_state()
    got = _nested_grads(tk.interpolate, x, table, offsets, coeffs_all, grid, order, levels, gen)
    for name, f in [("oracle", _oracle), ("reference", ref.interpolate)]:
        gen.set_state(state)
        want = _nested_grads(f, x, table, offsets, coeffs_all, grid, order, levels, gen)
        for j, ((level, g), (_, w)) in enumerate(zip(got, want)):
            _close(g.detach(), w.detach(), dtype, f"{kind} {dtype} order {order} result {j} vs {name}", level)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["hermite", "linear", "bspline", "hermite5"])
@pytest.mark.parametrize("n, dim", [(1, 3), (37, 65), (37, 3)])
def check_forward_every_order(kind, dtype, n, dim) -> None:
    x, table, offsets, coeffs_all, grid, _ = _case(kind, 9, dim, n, dtype, salt=n + dim)
    for order in range(5):
        want = ref.interpolate(x, table, offsets, coeffs_all, *grid, order)
        _close(tk.interpolate(x, table, offsets, coeffs_all, *grid, order), want, dtype, f"interpolate {order}")


@pytest.mark.parametrize("order", range(5))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def check_hermite_gradients_to_third_order(dtype, order) -> None:
    """Forward, grad w.r.t. x and table, double backward and third order, all vs the reference."""
    _compare_all_levels("hermite", dtype, n_bin=6, dim=5, n=37, order=order, levels=3, salt=100 + order)


@pytest.mark.parametrize("order", [0, 2, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["bspline", "hermite5"])
def check_c2_forms_gradients_to_third_order(kind, dtype, order) -> None:
    """B = 4 rows with the B-spline's coefficients and B = 6 (quintic, P = 6) on the same kernels."""
    _compare_all_levels(kind, dtype, n_bin=6, dim=5, n=37, order=order, levels=3, salt=900 + order)


@pytest.mark.parametrize("order", range(3))
def check_linear_gradients_to_second_order(order) -> None:
    _compare_all_levels("linear", torch.float64, n_bin=6, dim=65, n=37, order=order, levels=2, salt=200 + order)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def check_odd_sizes_first_order(dtype) -> None:
    """Single x, tiny dim, and dim > 128 (several column blocks, partial row sums added atomically)."""
    for n, dim in [(1, 65), (37, 3), (37, 200)]:
        _compare_all_levels("hermite", dtype, n_bin=5, dim=dim, n=n, order=1, levels=1, salt=300 + n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def check_many_inputs_in_one_bin(dtype) -> None:
    """The contended case: the blocked reduction must equal index_add, sorted or not."""
    _compare_all_levels("hermite", dtype, n_bin=7, dim=3, n=1500, order=0, levels=1, salt=400, one_bin=True)
    # one bin, then interleaved bins (short runs), each over several blocks
    for one_bin in (True, False):
        x, table, offsets, coeffs_all, (x_min, delta, n_bin), gen = _case(
            "hermite", 7, 3, 1500, dtype, salt=500 + one_bin, one_bin=one_bin)
        g = torch.randn(x.shape[0], 3, generator=gen, dtype=torch.float64).to(dtype)
        idx, t = ref.locate(x, x_min, delta, n_bin)
        w = ref.basis_weights(t, coeffs_all[0], 0, delta)  # [E, B]
        rows = (idx[:, None] + offsets).flatten()
        want = torch.zeros_like(table).index_add(0, rows, (w[:, :, None] * g[:, None, :]).flatten(0, 1))
        for sort in (False, True):
            got = kernels.scatter(x, g, offsets, coeffs_all[0], 0, x_min, delta, n_bin, table.shape[0], sort=sort)
            _close(got, want, dtype, f"scatter one_bin={one_bin} sort={sort}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def check_half_precision(dtype) -> None:
    """Half inputs: float32 arithmetic inside, so only the final rounding differs from float32."""
    x, table, offsets, coeffs_all, grid, gen = _case("hermite", 7, 9, 37, dtype, salt=800)
    g = torch.randn(37, 9, generator=gen).to(dtype)
    for order in range(2):
        xr, tr = x.clone().requires_grad_(), table.clone().requires_grad_()
        out = tk.interpolate(xr, tr, offsets, coeffs_all, *grid, order)
        got = [out, *torch.autograd.grad(out, (xr, tr), g)]
        xr, tr = x.float().requires_grad_(), table.float().requires_grad_()
        out = ref.interpolate(xr, tr, offsets, coeffs_all, *grid, order)
        want = [out, *torch.autograd.grad(out, (xr, tr), g.float())]
        for j, (a, w) in enumerate(zip(got, want)):
            assert a.dtype == dtype
            err = float((a.detach().float() - w.detach()).abs().max())
            eps = torch.finfo(dtype).eps
            assert err <= 2 * eps * (1 + float(w.detach().abs().max())), f"{dtype} order {order} result {j}: {err:.3g}"


def check_gradcheck_float64() -> None:
    """Finite differences, independent of any reference: the first derivatives of the order-1 output."""
    _, table, offsets, coeffs_all, grid, gen = _case("hermite", 4, 2, 5, torch.float64, salt=600)
    # away from the centres: the order-2 derivative (d/dx of the order-1 output) jumps there
    x = grid[0] + grid[1] * (torch.arange(5) % 3 + 0.1 + 0.8 * torch.rand(5, generator=gen, dtype=torch.float64))

    def f(x, table):
        return tk.interpolate(x, table, offsets, coeffs_all, *grid, 1)

    inputs = (x.requires_grad_(), table.requires_grad_())
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)


def check_empty_input() -> None:
    x, table, offsets, coeffs_all, grid, _ = _case("hermite", 5, 4, 3, torch.float32, salt=700)
    table.requires_grad_()
    out = tk.interpolate(x[:0], table, offsets, coeffs_all, *grid, 0)
    assert out.shape == (0, 4)
    (grad,) = torch.autograd.grad(out.sum(), table)
    assert torch.equal(grad, torch.zeros_like(table))
