"""posenc: learned, regularized positional encoding for molecules (Gao et al. 2022).

A positional quantity x (a distance, an angle) becomes a learned vector h(x) by cubic Hermite
interpolation of a table of values and slopes at evenly spaced bin centres. The same method is
implemented twice, in ``posenc.torch`` and ``posenc.haiku``, with the same names and numbers.
"""

__version__ = "0.1.0"
