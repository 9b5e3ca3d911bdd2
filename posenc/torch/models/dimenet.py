"""DimeNet++ (Gasteiger et al. 2020) with its radial and angular bases swappable for posenc encodings.

The network is torch-geometric's ``DimeNetPlusPlus``, assembled from that library's own blocks
(``EmbeddingBlock``, ``InteractionPPBlock``, ``OutputPPBlock``) and its ``BesselBasisLayer``; the
submodule names are the library's, so its state dict loads into this model unchanged and the
default model computes the library's numbers (checked in the tests). What is ours:

* the graph: the model takes the batch's ``edge_index`` as given (``posenc.data.graphs`` builds
  the radius graph) and enumerates the k -> j -> i triplets with :func:`triplets`, in plain torch,
  because the library's versions need the compiled extras ``torch-cluster`` / ``torch-sparse``;
* :class:`SphericalBasis`, the library's ``SphericalBasisLayer`` evaluated by recurrences: the
  library derives it with sympy each time a model is built, 20 s to a minute for the default size;
* the encodings. DimeNet feeds two positional quantities into its blocks:

  - the **radial basis** ``rbf(d_ji)`` ``[E, R]`` of each edge's distance. ``"bessel"`` is
    DimeNet's own basis layer (trainable frequencies; equal to ``posenc.torch.BesselEncoding``
    up to the constant factor ``c^{3/2} / sqrt 2``). Any other name of ``posenc.torch.ENCODINGS``
    (``"hermite"``, ``"linear"``, ``"gaussian"``, ...) is built with the project's defaults
    (:mod:`posenc.encoding_defaults`, range ``[0, cutoff]``) and wrapped in
    :class:`posenc.torch.SmoothCutoff` with DimeNet's envelope, so every message still goes to zero
    (with its derivative) at the cutoff and the energy stays smooth when atoms cross it.
  - the **angular basis** ``sbf(d_kj, theta_kji)`` ``[T, A * R]`` of each triplet. ``"spherical"``
    is DimeNet's 2-D basis (spherical Bessel functions of ``d_kj`` times the spherical harmonics
    ``Y_l0(theta)``, radial functions of order l paired with ``Y_l``). Any other encoding name
    encodes the angle ``theta`` in ``[0, pi]`` as ``a(theta)`` ``[T, A]`` (defaults in
    :func:`angle_encoding_kwargs`) and combines it with the model's radial encoding of the kj edge
    as the flattened outer product ``a(theta) ⊗ rbf(d_kj)``. That keeps the original's form (a
    separable product of an angular and a radial basis of ``d_kj``, cut off smoothly by the radial
    envelope) while both factors can be learned, and the radial encoding is shared by the edge and
    the triplet paths.

The model returns raw outputs, as the library's does; ``posenc.torch.models.make_model("dimenet")``
wraps it in ``WithOutputStats`` (the training data's output statistics), like the other backbones.
"""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch_geometric.nn.inits import glorot_orthogonal
from torch_geometric.nn.models.dimenet import (
    BesselBasisLayer,
    EmbeddingBlock,
    Envelope,
    InteractionPPBlock,
    OutputPPBlock,
)
from torch_geometric.nn.models.dimenet_utils import Jn, Jn_zeros
from torch_geometric.nn.resolver import activation_resolver

from posenc.torch.batching import Batch
from posenc.torch.encodings import ENCODINGS, SmoothCutoff, encoding_dim, make_encoding
from posenc.torch.models.common import build_distance_encoding, check_batch
from posenc.torch.models.common import energy_and_forces as _energy_and_forces

#: Rows of DimeNet's atom-type embedding (torch-geometric's ``EmbeddingBlock``): Z = 0..94.
N_ELEMENTS = 95

ANGLE_ENCODING_DEFAULTS: dict[str, dict[str, Any]] = {
    "raw": {"power": 1, "scale": 1.0},
    "mlp": {"hidden": 64},
    "gaussian": {"x_min": 0.0, "x_max": math.pi},
    "linear": {"n_bin": 64, "x_min": 0.0, "x_max": math.pi, "init": "sinusoidal", "out_of_range": "clamp"},
    "hermite": {"n_bin": 64, "x_min": 0.0, "x_max": math.pi, "init": "sinusoidal", "out_of_range": "clamp"},
    "hermite5": {"n_bin": 64, "x_min": 0.0, "x_max": math.pi, "init": "sinusoidal", "out_of_range": "clamp"},
    "bspline": {"n_bin": 64, "x_min": 0.0, "x_max": math.pi, "init": "sinusoidal", "out_of_range": "clamp"},
}
"""Defaults of the angle encodings; the size (``dim``/``n_centres``) comes from ``num_spherical``.

The angle lies in ``[0, pi]`` by construction, so ``out_of_range="clamp"`` only absorbs round-off
at the ends (float32's pi is a little above ``math.pi``)."""


def angle_encoding_kwargs(name: str, dim: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments of encoding ``name`` for an angle in ``[0, pi]`` with ``dim`` outputs.

    Args:
      name: ``raw | mlp | gaussian | linear | hermite`` (``bessel`` is a radial basis that
        vanishes at its cutoff; no fit for an angle).
      dim: output size (ignored by ``raw``, a 1-vector).
      overrides: entries that replace the defaults.
    """
    if name not in ANGLE_ENCODING_DEFAULTS:
        raise ValueError(f"unsupported angular encoding {name!r}; choose 'spherical' or one of "
                         f"{sorted(ANGLE_ENCODING_DEFAULTS)}")
    kwargs = dict(ANGLE_ENCODING_DEFAULTS[name])
    if name == "gaussian":
        kwargs["n_centres"] = dim
    elif name != "raw":
        kwargs["dim"] = dim
    kwargs.update(overrides or {})
    return kwargs


def triplets(
    edge_index: torch.Tensor, n_atoms_total: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every pair of edges k -> j and j -> i with k != i (DimeNet's triplets), in plain torch.

    The triplets of torch-geometric's ``dimenet.triplets`` (which needs torch-sparse), in its
    order: grouped by the edge j -> i in edge order and, inside a group, sorted by the sender k of
    the incoming edge k -> j (the library walks a sparse matrix sorted by receiver, then sender).

    Args:
      edge_index: ``[2, E]`` int64; row 0 the sender j, row 1 the receiver i of each edge.
      n_atoms_total: number of atoms N (every index must be < N).

    Returns:
      ``(idx_i, idx_j, idx_k, idx_kj, idx_ji)``, each ``[T]`` int64: the atoms of each triplet,
      the index of its edge k -> j and of its edge j -> i in ``edge_index``.

    Raises:
      ValueError: ``edge_index`` not ``[2, E]`` or an atom index outside ``[0, N)``.
      TypeError: ``edge_index`` not int64.
    """
    if edge_index.ndim != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must be [2, E], got {tuple(edge_index.shape)}")
    if edge_index.dtype != torch.int64:
        raise TypeError(f"edge_index must be int64, got {edge_index.dtype}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n_atoms_total):
        raise ValueError(f"edge_index holds an atom index outside [0, {n_atoms_total})")
    j, i = edge_index  # [E] senders, [E] receivers
    device = edge_index.device
    # The incoming edges of every atom, grouped by receiver and sorted by sender inside a group.
    incoming = torch.argsort(i * n_atoms_total + j, stable=True)  # [E]
    deg_in = torch.bincount(i, minlength=n_atoms_total)  # [N]
    first_in = torch.cumsum(deg_in, 0) - deg_in  # [N] where an atom's group starts in `incoming`
    # Edge j -> i pairs with every edge into its sender j.
    n_pairs = deg_in[j]  # [E]
    idx_ji = torch.repeat_interleave(torch.arange(j.numel(), device=device), n_pairs)  # [T']
    group_start = torch.cumsum(n_pairs, 0) - n_pairs  # [E]
    rank = torch.arange(idx_ji.numel(), device=device) - group_start[idx_ji]  # [T'] position in the group
    idx_kj = incoming[first_in[j[idx_ji]] + rank]  # [T']
    idx_i, idx_j, idx_k = i[idx_ji], j[idx_ji], j[idx_kj]
    keep = idx_i != idx_k  # k -> j -> i straight back to i has no angle
    return idx_i[keep], idx_j[keep], idx_k[keep], idx_kj[keep], idx_ji[keep]


class SphericalBasis(nn.Module):
    """DimeNet's 2-D spherical basis: torch-geometric's ``SphericalBasisLayer`` without sympy.

    ``sbf_{l n}(d, theta) = u(d/c) N_{l n} j_l(z_{l n} d / c) Y_l0(theta)`` for orders
    ``l < num_spherical`` and ``n < num_radial``, with ``z_{l n}`` the n-th zero of the spherical
    Bessel function ``j_l`` and N its normaliser, both computed by torch-geometric's own
    ``dimenet_utils`` (same constants), and u torch-geometric's ``Envelope`` (which includes the
    ``c/d`` factor). The library derives ``j_l`` and ``Y_l0`` symbolically with sympy when a layer
    is built, which takes about 20 s for 7 x 6 (a minute on a busy CPU), in every process; here the
    same functions come from their recurrences, so building is instant and the values agree with
    the library's to rounding (checked in the tests).

    Args:
      num_spherical: orders l (>= 2).
      num_radial: radial functions n per order.
      cutoff: radius c, Angstrom.
      envelope_exponent: DimeNet's envelope exponent.
    """

    def __init__(self, num_spherical: int, num_radial: int, cutoff: float = 5.0, envelope_exponent: int = 5) -> None:
        super().__init__()
        if num_spherical < 2:
            raise ValueError(f"num_spherical must be >= 2 for the spherical basis, got {num_spherical}")
        if not 1 <= num_radial <= 64:  # the library's limit
            raise ValueError(f"num_radial must lie in [1, 64], got {num_radial}")
        self.num_spherical, self.num_radial, self.cutoff = int(num_spherical), int(num_radial), float(cutoff)
        self.envelope = Envelope(envelope_exponent)
        zeros = Jn_zeros(num_spherical, num_radial)  # [L, K] as the library computes them
        # the normalisers exactly as torch-geometric's bessel_basis computes them
        norm = [1 / np.array([0.5 * Jn(zeros[order, n], order + 1) ** 2 for n in range(num_radial)]) ** 0.5
                for order in range(num_spherical)]
        self._zeros = np.asarray(zeros, dtype=np.float64)  # [L, K]
        self._norm = np.asarray(norm, dtype=np.float64)  # [L, K]
        # Y_l0 = sqrt((2l + 1) / 4 pi) P_l(cos theta)
        self._sph_prefactor = np.sqrt((2 * np.arange(num_spherical) + 1) / (4 * np.pi))  # [L]

    def forward(self, dist: torch.Tensor, angle: torch.Tensor, idx_kj: torch.Tensor) -> torch.Tensor:
        """The basis of each triplet.

        Args:
          dist: ``[E]`` edge lengths, Angstrom (> 0).
          angle: ``[T]`` triplet angles, radians.
          idx_kj: ``[T]`` each triplet's k -> j edge.

        Returns:
          ``[T, L * K]``, column ``l * K + n`` (the library's layout).
        """
        L, K = self.num_spherical, self.num_radial
        const: dict[str, Any] = {"dtype": dist.dtype, "device": dist.device}
        x = dist / self.cutoff  # [E]
        arg = x[:, None, None] * torch.as_tensor(self._zeros, **const)  # [E, L, K]
        # j_l by upward recurrence on every argument; order l keeps its own zeros' row
        j_prev, j_cur = torch.sin(arg) / arg, torch.sin(arg) / arg**2 - torch.cos(arg) / arg
        bessel = [j_prev[:, 0], j_cur[:, 1]]
        for order in range(1, L - 1):  # j_{order+1} = (2 order + 1) / x j_order - j_{order-1}
            j_prev, j_cur = j_cur, (2 * order + 1) / arg * j_cur - j_prev
            bessel.append(j_cur[:, order + 1])
        rbf = torch.stack(bessel, dim=1) * torch.as_tensor(self._norm, **const)  # [E, L, K]
        rbf = self.envelope(x)[:, None, None] * rbf
        # Legendre polynomials P_l(cos theta) by their recurrence
        c = torch.cos(angle)  # [T]
        legendre = [torch.ones_like(c), c]
        for order in range(2, L):
            legendre.append(((2 * order - 1) * c * legendre[-1] - (order - 1) * legendre[-2]) / order)
        cbf = torch.stack(legendre, dim=1) * torch.as_tensor(self._sph_prefactor, **const)  # [T, L]
        return (rbf[idx_kj] * cbf[:, :, None]).reshape(-1, L * K)


class EncodedAngularBasis(nn.Module):
    """The angular basis from an encoding of the angle: ``sbf = a(theta) ⊗ rbf(d_kj)``, flattened.

    Args:
      encoding: a posenc encoding of ``theta`` in ``[0, pi]``, output ``[..., A]``.
    """

    def __init__(self, encoding: nn.Module) -> None:
        super().__init__()
        self.encoding, self.dim = encoding, encoding.dim

    def forward(self, rbf: torch.Tensor, angle: torch.Tensor, idx_kj: torch.Tensor) -> torch.Tensor:
        """Combines the angle's encoding with the radial encoding of each triplet's kj edge.

        Args:
          rbf: ``[E, R]`` radial encoding of every edge (zero beyond the cutoff).
          angle: ``[T]`` angle of each triplet, radians in ``[0, pi]``.
          idx_kj: ``[T]`` the triplets' k -> j edges.

        Returns:
          ``[T, A * R]``, column ``a * R + r`` holding ``a_a(theta) rbf_r(d_kj)``.
        """
        ang = self.encoding(angle)  # [T, A]
        return (ang[:, :, None] * rbf[idx_kj][:, None, :]).flatten(1)  # [T, A * R]


class DimeNetPlusPlus(nn.Module):
    """DimeNet++ on a :class:`posenc.torch.batching.Batch`, with swappable positional encodings.

    With the default encodings this is torch-geometric's ``DimeNetPlusPlus`` (same blocks, same
    parameter names, same numbers); the module docstring says how the encodings enter.

    Args:
      hidden_channels: size of the edge messages.
      out_channels: outputs T per molecule (1 for an energy).
      num_blocks: interaction blocks.
      int_emb_size: size of the triplet (interaction) embedding.
      basis_emb_size: bottleneck of the basis projections.
      out_emb_channels: width of the output blocks.
      num_spherical: orders l of the spherical basis; the size of an encoded angle.
      num_radial: functions of the Bessel bases.
      cutoff: radius (Angstrom) where every message goes smoothly to zero.
      envelope_exponent: DimeNet's envelope exponent (the polynomial order is this + 1).
      radial_encoding: ``"bessel"`` (DimeNet's own) or a name of ``posenc.torch.ENCODINGS``.
      radial_kwargs: overrides of the encoding's defaults (none for ``"bessel"``, which
        ``num_radial``, ``cutoff`` and ``envelope_exponent`` define).
      angular_encoding: ``"spherical"`` (DimeNet's own) or one of :data:`ANGLE_ENCODING_DEFAULTS`.
      angular_kwargs: overrides of the angle encoding's defaults (none for ``"spherical"``).
      num_before_skip, num_after_skip: residual layers around each interaction's skip.
      num_output_layers: dense layers of each output block.
      act: activation name or callable (DimeNet's swish).
      output_initializer: ``"zeros"`` (DimeNet's: the untrained model predicts 0) or
        ``"glorot_orthogonal"``.

    Raises:
      ValueError: an unknown encoding name, kwargs for a built-in basis, ``num_spherical < 2``
        with ``"spherical"``, a non-positive cutoff.

    Call: ``model(batch) -> [M, T]``; the graph is the batch's ``edge_index`` (collate with
    ``cutoff=model.cutoff`` for DimeNet's radius graph).

    Example:
      >>> import numpy as np
      >>> from posenc.torch.batching import collate
      >>> from posenc.data.molecules import Molecules
      >>> water = Molecules(z=np.array([8, 1, 1]), pos=np.array([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]),
      ...                   n_atoms=np.array([3]), targets=np.zeros((1, 1)), target_names=("E",),
      ...                   target_units=("meV",))
      >>> model = DimeNetPlusPlus(16, 1, 1, 8, 4, 16, num_spherical=3, num_radial=4,
      ...                         radial_encoding="hermite", angular_encoding="hermite")
      >>> model(collate(water, [0], cutoff=model.cutoff)).shape
      torch.Size([1, 1])
    """

    def __init__(
        self,
        hidden_channels: int = 128,
        out_channels: int = 1,
        num_blocks: int = 4,
        int_emb_size: int = 64,
        basis_emb_size: int = 8,
        out_emb_channels: int = 256,
        num_spherical: int = 7,
        num_radial: int = 6,
        cutoff: float = 5.0,
        envelope_exponent: int = 5,
        radial_encoding: str = "bessel",
        radial_kwargs: dict[str, Any] | None = None,
        angular_encoding: str = "spherical",
        angular_kwargs: dict[str, Any] | None = None,
        *,
        num_before_skip: int = 1,
        num_after_skip: int = 2,
        num_output_layers: int = 3,
        act: str | Callable[[torch.Tensor], torch.Tensor] = "swish",
        output_initializer: str = "zeros",
    ) -> None:
        super().__init__()
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0, got {cutoff}")
        act = activation_resolver(act)
        self.cutoff = float(cutoff)
        self.radial_encoding, self.angular_encoding = radial_encoding, angular_encoding

        self.rbf = self._radial_basis(radial_encoding, radial_kwargs, num_radial, envelope_exponent)
        n_rad = num_radial if radial_encoding == "bessel" else encoding_dim(self.rbf)
        self.sbf = self._angular_basis(angular_encoding, angular_kwargs, num_spherical, num_radial, envelope_exponent)
        # InteractionPPBlock sizes its angular projection num_spherical * num_radial.
        if angular_encoding == "spherical":
            n_sph, n_sph_rad = num_spherical, num_radial
        else:
            n_sph, n_sph_rad = encoding_dim(self.sbf), n_rad

        self.emb = EmbeddingBlock(n_rad, hidden_channels, act)
        self.output_blocks = nn.ModuleList([
            OutputPPBlock(n_rad, hidden_channels, out_emb_channels, out_channels, num_output_layers, act,
                          output_initializer)
            for _ in range(num_blocks + 1)
        ])
        self.interaction_blocks = nn.ModuleList([
            InteractionPPBlock(hidden_channels, int_emb_size, basis_emb_size, n_sph, n_sph_rad,
                               num_before_skip, num_after_skip, act)
            for _ in range(num_blocks)
        ])
        if n_sph_rad != n_rad:  # the block takes one size for both of its radial inputs: resize lin_rbf1
            for block in self.interaction_blocks:
                block.lin_rbf1 = nn.Linear(n_rad, basis_emb_size, bias=False)
                glorot_orthogonal(block.lin_rbf1.weight, scale=2.0)  # as the block initialises it

    def _radial_basis(self, name: str, kwargs: dict[str, Any] | None, num_radial: int,
                      envelope_exponent: int) -> nn.Module:
        """DimeNet's Bessel layer, or a posenc encoding of the distance cut off with DimeNet's envelope."""
        if name == "bessel":
            if kwargs:
                raise ValueError("radial_encoding='bessel' is DimeNet's own basis: size it with num_radial, "
                                 f"cutoff and envelope_exponent, not radial_kwargs={kwargs}")
            return BesselBasisLayer(num_radial, self.cutoff, envelope_exponent)
        if name not in ENCODINGS:
            raise ValueError(f"unknown radial_encoding {name!r}; choose 'bessel' or one of {sorted(ENCODINGS)}")
        encoding = build_distance_encoding(name, self.cutoff, kwargs)
        return SmoothCutoff(encoding, self.cutoff, p=envelope_exponent + 1)

    def _angular_basis(self, name: str, kwargs: dict[str, Any] | None, num_spherical: int, num_radial: int,
                       envelope_exponent: int) -> nn.Module:
        """DimeNet's spherical basis, or a posenc encoding of the angle times the radial encoding."""
        if name == "spherical":
            if kwargs:
                raise ValueError("angular_encoding='spherical' is DimeNet's own basis: size it with num_spherical "
                                 f"and num_radial, not angular_kwargs={kwargs}")
            return SphericalBasis(num_spherical, num_radial, self.cutoff, envelope_exponent)
        return EncodedAngularBasis(make_encoding(name, **angle_encoding_kwargs(name, num_spherical, kwargs)))

    def forward(self, batch: Batch) -> torch.Tensor:
        """Raw per-molecule outputs ``[M, T]`` (the sum of the output blocks over each molecule's atoms).

        torch-geometric's ``DimeNet.forward`` after its graph step, with our triplets.
        """
        check_batch(batch, self.emb.lin.weight, N_ELEMENTS)
        z, pos, edge_index = batch.z, batch.pos, batch.edge_index
        _check_edges(edge_index, batch.batch)
        n_atoms = z.shape[0]
        idx_i, idx_j, idx_k, idx_kj, idx_ji = triplets(edge_index, n_atoms)
        j, i = edge_index

        dist = (pos[i] - pos[j]).pow(2).sum(dim=-1).sqrt()  # [E]
        # DimeNet++'s angle between r_j - r_k and r_i - r_j, in [0, pi]
        pos_jk, pos_ij = pos[idx_j] - pos[idx_k], pos[idx_i] - pos[idx_j]  # [T, 3]
        a = (pos_ij * pos_jk).sum(dim=-1)
        b = torch.cross(pos_ij, pos_jk, dim=1).norm(dim=-1)
        angle = torch.atan2(b, a)  # [T]

        rbf = self.rbf(dist)  # [E, R]
        sbf = self.sbf(dist, angle, idx_kj) if self.angular_encoding == "spherical" else self.sbf(rbf, angle, idx_kj)

        x = self.emb(z, rbf, i, j)  # [E, hidden]
        per_atom = self.output_blocks[0](x, rbf, i, num_nodes=n_atoms)  # [A, T]
        for interaction_block, output_block in zip(self.interaction_blocks, self.output_blocks[1:]):
            x = interaction_block(x, rbf, sbf, idx_kj, idx_ji)
            per_atom = per_atom + output_block(x, rbf, i, num_nodes=n_atoms)
        return per_atom.new_zeros(batch.n_molecules, per_atom.shape[1]).index_add(0, batch.batch, per_atom)  # [M, T]

    def energy_and_forces(self, batch: Batch, *, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y [M, T], forces [A, 3])``: forces ``-dE/dr`` of the first output by autograd.

        The same as ``posenc.torch.models.common.energy_and_forces(self, batch)``, which the other
        backbones use; ``create_graph=True`` keeps the graph to train on the forces.
        """
        return _energy_and_forces(self, batch, create_graph=create_graph)


def _check_edges(edge_index: torch.Tensor, mol: torch.Tensor) -> None:
    """What DimeNet needs beyond ``check_batch``: no self loops (zero distance), no edge across molecules."""
    if edge_index.numel() == 0:
        return
    if bool((edge_index[0] == edge_index[1]).any()):
        raise ValueError("edge_index has self loops (zero distance); DimeNet needs j != i")
    if bool((mol[edge_index[0]] != mol[edge_index[1]]).any()):
        raise ValueError("edge_index joins atoms of different molecules")
