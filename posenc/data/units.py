"""Unit conversions used by the data loaders (numbers only, no code paths).

The project works in Angstrom, meV and meV/Angstrom. MD17 ships kcal/mol, QM9 ships Hartree.
"""

#: 1 kcal/mol in meV. The project-wide convention (the paper's Table 1 and NequIP use it);
#: the CODATA value is 43.3641 meV, so the 4th significant digit is all that differs.
KCAL_PER_MOL_TO_MEV = 43.364

#: 1 Hartree in meV (CODATA 2018: 27.211386245988 eV).
HARTREE_TO_MEV = 27211.386245988
