"""QM9: parsing qm9pack's CSV format, units and atomisation energies, the cache, and the splits."""

import ast
import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from posenc.data import qm9
from posenc.data.qm9 import (
    QM9_TARGETS, QM9_UNITS, load_qm9, load_qm9_data, read_cache, read_qm9_csv, split_indices, split_sizes,
)

HARTREE_MEV = 27.211386245988e3  # CODATA 2018, typed independently of posenc.data.units
HEADER = (
    "XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang,Mulliken_pop,Harmonic_Freq_cmi,RotA_GHz,"
    "RotB_GHz,RotC_GHz,Dipole_debye,Polarizability_bohr3,HOMO_au,LUMO_au,HOMO_LUMO_gap_au,R2_bohr2,ZPVE_au,"
    "InternalEnergy_0K_au,InternalEnergy_298K_au,Enthalphy_298K_au,GibbsFreeEnergy_298K_au,Heatcapacity_Cv_cal_mol_K"
)
# The first three molecules of qm9pack's qm9_part1.csv (MIT licence), verbatim.
REAL_ROWS = [
    '"dsgdb9nsd_000001.xyz",1,"C","InChI=1S/CH4/h1H4",5,"[4,1,0,0,0]","[\'C\',\'H\',\'H\',\'H\',\'H\']","[[-0.0126981359,1.0858041578,0.0080009958],[0.002150416,-0.0060313176,0.0019761204],[1.0117308433,1.4637511618,0.0002765748],[-0.540815069,1.4475266138,-0.8766437152],[-0.5238136345,1.4379326443,0.9063972942]]","[-0.535689,0.133921,0.133922,0.133923,0.133923]","[1341.307,1341.3284,1341.365,1562.6731,1562.7453,3038.3205,3151.6034,3151.6788,3151.7078]",157.7118,157.70997,157.70699,0.,13.21,-0.3877,0.1171,0.5048,35.3641,0.044749,-40.47893,-40.476062,-40.475117,-40.498597,6.469',
    '"dsgdb9nsd_000002.xyz",2,"N","InChI=1S/H3N/h1H3",4,"[3,0,1,0,0]","[\'N\',\'H\',\'H\',\'H\']","[[-0.0404260543,1.0241077531,0.0625637998],[0.0172574639,0.0125452063,-0.0273771593],[0.9157893661,1.3587451948,-0.0287577581],[-0.5202777357,1.3435321258,-0.7755426124]]","[-0.707143,0.235712,0.235712,0.23572]","[1103.8733,1684.1158,1684.3072,3458.7145,3575.2414,3575.3343]",293.60975,293.54111,191.39397,1.6256,9.46,-0.257,0.0829,0.3399,26.1563,0.034358,-56.525887,-56.523026,-56.522082,-56.544961,6.316',
    '"dsgdb9nsd_000003.xyz",3,"O","InChI=1S/H2O/h1H2",3,"[2,0,0,1,0]","[\'O\',\'H\',\'H\']","[[-0.0343604951,0.9775395708,0.0076015923],[0.0647664923,0.0205721989,0.0015346341],[0.8717903737,1.3007924048,0.0006931336]]","[-0.589706,0.294853,0.294853]","[1671.4222,3803.6305,3907.698]",799.58812,437.90386,282.94545,1.8511,6.31,-0.2928,0.0687,0.3615,19.0002,0.021375,-76.404702,-76.401867,-76.400922,-76.422349,6.002',
]


@pytest.fixture
def real_csv(tmp_path) -> Path:
    path = tmp_path / "real.csv"
    path.write_text("\n".join([HEADER, *REAL_ROWS]) + "\n")
    return path


def reference_parse(path: Path, limit: int) -> list[dict]:
    """An independent reading of the rows with csv.DictReader + ast.literal_eval."""
    with open(path, newline="") as f:
        rows = [row for _, row in zip(range(limit), csv.DictReader(f))]
    return [{"index": int(r["Index"]), "elements": ast.literal_eval(r["Elements"]),
             "xyz": np.array(ast.literal_eval(r["XYZ_Ang"]), dtype=float), "row": r} for r in rows]


def test_parser_matches_literal_eval(real_csv):
    data = read_qm9_csv([real_csv])
    reference = reference_parse(real_csv, 3)
    np.testing.assert_array_equal(data.index, [1, 2, 3])
    np.testing.assert_array_equal(data.n_atoms, [5, 4, 3])
    np.testing.assert_array_equal(data.z, [6, 1, 1, 1, 1, 7, 1, 1, 1, 8, 1, 1])
    np.testing.assert_array_equal(data.pos, np.concatenate([r["xyz"] for r in reference]))
    assert data.pos[0, 0] == -0.0126981359


def test_units_of_every_target(real_csv):
    data = read_qm9_csv([real_csv])
    row = reference_parse(real_csv, 1)[0]["row"]  # methane
    got = dict(zip(QM9_TARGETS, data.targets[0]))
    assert got["alpha"] == 13.21 and got["mu"] == 0.0 and got["r2"] == 35.3641 and got["cv"] == 6.469
    for name, column in [("gap", "HOMO_LUMO_gap_au"), ("homo", "HOMO_au"), ("lumo", "LUMO_au"), ("zpve", "ZPVE_au")]:
        assert got[name] == pytest.approx(float(row[column]) * HARTREE_MEV, rel=1e-12)
    assert got["gap"] == pytest.approx(got["lumo"] - got["homo"], abs=1e-6)
    assert QM9_UNITS["alpha"] == "bohr^3" and QM9_UNITS["r2"] == "bohr^2" and QM9_UNITS["U0"] == "meV"


def test_methane_atomisation_energy(real_csv):
    """U0(CH4) - U0(C) - 4 U0(H), with QM9's own atom energies (atomref.txt), in meV."""
    data = read_qm9_csv([real_csv])
    u0 = data.targets[0, QM9_TARGETS.index("U0")]
    assert u0 == pytest.approx((-40.47893 - (-37.846772) - 4 * (-0.500273)) * HARTREE_MEV, abs=1e-6)
    # B3LYP's methane is bound by 17.17 eV; experiment (ATcT, 0 K) gives 17.02 eV: within 1.5 %.
    assert u0 == pytest.approx(-17020.0, rel=0.015)
    # Water's U, H and G atomisation energies use the 298.15 K references (G includes entropy: less bound).
    u, h, g = (data.targets[2, QM9_TARGETS.index(t)] for t in ("U", "H", "G"))
    assert u == pytest.approx((-76.401867 - (-75.063163) - 2 * (-0.498857)) * HARTREE_MEV, abs=1e-6)
    assert h == pytest.approx((-76.400922 - (-75.062219) - 2 * (-0.497912)) * HARTREE_MEV, abs=1e-6)
    assert g == pytest.approx((-76.422349 - (-75.079532) - 2 * (-0.510927)) * HARTREE_MEV, abs=1e-6)
    assert g > u


@pytest.mark.parametrize(
    "edit, match",
    [(lambda r: r.replace(",5,", ",6,", 1), "N_atoms is 6"),
     (lambda r: r.replace("'C'", "'Cl'"), "unknown element 'Cl'"),
     (lambda r: r.replace("0.9063972942]", "0.9063972942,1.0]"), "16 numbers, expected 15")],
)
def test_malformed_rows(tmp_path, edit, match):
    path = tmp_path / "bad.csv"
    path.write_text("\n".join([HEADER, edit(REAL_ROWS[0])]) + "\n")
    with pytest.raises(ValueError, match=match) as err:
        read_qm9_csv([path])
    assert "bad.csv:2" in str(err.value)


def test_missing_column_and_repeated_id(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("\n".join([HEADER.replace("ZPVE_au", "ZOVE_au"), REAL_ROWS[0]]) + "\n")
    with pytest.raises(ValueError, match="ZPVE_au"):
        read_qm9_csv([path])
    path.write_text("\n".join([HEADER, REAL_ROWS[0], REAL_ROWS[0]]) + "\n")
    with pytest.raises(ValueError, match="repeated QM9 ids"):
        read_qm9_csv([path])


def test_rows_are_sorted_by_id(tmp_path, real_csv):
    path = tmp_path / "shuffled.csv"
    path.write_text("\n".join([HEADER, REAL_ROWS[2], REAL_ROWS[0], REAL_ROWS[1]]) + "\n")
    shuffled, ordered = read_qm9_csv([path]), read_qm9_csv([real_csv])
    for key in qm9.CACHE_KEYS:
        np.testing.assert_array_equal(getattr(shuffled, key), getattr(ordered, key))


qm9pack_present = pytest.mark.skipif(
    importlib.util.find_spec("qm9pack") is None, reason="the qm9pack package (real QM9 data) is not installed"
)


@qm9pack_present
def test_real_qm9pack_rows():
    """The first 200 molecules of each qm9pack file agree with an ast.literal_eval reading."""
    for name in qm9.QM9PACK_FILES:
        path = qm9.qm9pack_dir() / name
        data = read_qm9_csv([path], limit=200)
        reference = reference_parse(path, 200)
        np.testing.assert_array_equal(data.index, [r["index"] for r in reference])
        np.testing.assert_array_equal(data.pos, np.concatenate([r["xyz"] for r in reference]))
        np.testing.assert_array_equal(data.n_atoms, [len(r["elements"]) for r in reference])
        alpha = [float(r["row"]["Polarizability_bohr3"]) for r in reference]
        np.testing.assert_array_equal(data.targets[:, QM9_TARGETS.index("alpha")], alpha)


# ---- cache and splits on a synthetic data set in qm9pack's format ----

def synthetic_row(i: int, rng: np.random.Generator) -> str:
    symbols = ["C"] + list(rng.choice(["H", "C", "N", "O", "F"], size=rng.integers(1, 6)))
    xyz = ",".join("[" + ",".join(f"{v:.6f}" for v in rng.normal(size=3)) + "]" for _ in symbols)
    props = [f"{v:.6f}" for v in rng.normal(size=15)]  # RotA..RotC, mu, alpha, ..., Cv
    return ",".join([f'"dsgdb9nsd_{i:06d}.xyz"', str(i), '"C"', '"InChI"', str(len(symbols)), '"[0,0,0,0,0]"',
                     '"[' + ",".join(f"'{s}'" for s in symbols) + ']"', f'"[{xyz}]"', '"[]"', '"[]"', *props])


@pytest.fixture
def source(tmp_path) -> Path:
    """qm9_part{1,2,3}.csv with 40 synthetic molecules (ids with gaps, like QM9's)."""
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(np.arange(1, 100), size=40, replace=False))
    directory = tmp_path / "qm9pack"
    directory.mkdir()
    for name, chunk in zip(qm9.QM9PACK_FILES, np.array_split(ids, 3)):
        (directory / name).write_text("\n".join([HEADER, *(synthetic_row(int(i), rng) for i in chunk)]) + "\n")
    return directory


SMALL = (25, 8, 7)


def test_load_qm9_end_to_end(source, tmp_path):
    sets = load_qm9(SMALL, targets=["U0", "mu"], cache_dir=tmp_path / "cache", source_dir=source, progress=False)
    assert {k: len(v) for k, v in sets.items()} == {"train": 25, "val": 8, "test": 7}
    assert sets["train"].target_names == ("U0", "mu") and sets["train"].target_units == ("meV", "D")
    assert sets["test"].name == "qm9:custom/test"
    full = read_qm9_csv([source / n for n in qm9.QM9PACK_FILES])
    # every molecule appears once; its atoms and targets travel with it
    got = np.concatenate([s.targets[:, 1] for s in sets.values()])
    np.testing.assert_array_equal(np.sort(got), np.sort(full.targets[:, QM9_TARGETS.index("mu")]))
    assert sum(int(s.n_atoms.sum()) for s in sets.values()) == full.z.size
    assert (tmp_path / "cache" / "qm9" / "qm9_v1.npz").is_file()


def test_cache_is_used(source, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_qm9_data(source, cache, progress=False)

    def no_parsing(*args, **kwargs):
        raise AssertionError("the CSV files were parsed again")

    monkeypatch.setattr(qm9, "read_qm9_csv", no_parsing)
    second = load_qm9_data(source, cache, progress=False)
    for key in qm9.CACHE_KEYS:
        np.testing.assert_array_equal(getattr(first, key), getattr(second, key))
    assert second.z.dtype == np.int64


def rewrite_cache(path: Path, change) -> None:
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    change(arrays)
    np.savez(path, **arrays)


def bump_version(arrays):
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.asarray(json.dumps({**meta, "version": 0}))


def shift_positions(arrays):
    arrays["pos"] = arrays["pos"] + 1e-9


@pytest.mark.parametrize(
    "damage, match",
    [(lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "unreadable"),
     (lambda p: p.write_bytes(b"garbage"), "unreadable"),
     (lambda p: rewrite_cache(p, shift_positions), "SHA-256"),
     (lambda p: rewrite_cache(p, bump_version), "another version")],
)
def test_damaged_cache_is_rebuilt(source, tmp_path, damage, match):
    cache = tmp_path / "cache"
    good = load_qm9_data(source, cache, progress=False)
    path = cache / "qm9" / "qm9_v1.npz"
    damage(path)
    with pytest.raises(ValueError, match=match):
        read_cache(path)
    with pytest.warns(UserWarning, match="rebuilding the QM9 cache"):
        again = load_qm9_data(source, cache, progress=False)
    np.testing.assert_array_equal(again.pos, good.pos)
    read_cache(path)  # the rebuilt cache passes every check


def test_changed_source_rebuilds_cache(source, tmp_path):
    cache = tmp_path / "cache"
    load_qm9_data(source, cache, progress=False)
    part = source / qm9.QM9PACK_FILES[2]
    part.write_text("\n".join(part.read_text().splitlines()[:-1]) + "\n")  # one molecule fewer
    with pytest.warns(UserWarning, match="other source files"):
        assert load_qm9_data(source, cache, progress=False).index.size == 39


def test_cache_without_source(source, tmp_path):
    cache = tmp_path / "cache"
    built = load_qm9_data(source, cache, progress=False)
    gone = tmp_path / "uninstalled"
    np.testing.assert_array_equal(load_qm9_data(gone, cache).index, built.index)  # the verified cache suffices
    path = cache / "qm9" / "qm9_v1.npz"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        load_qm9_data(gone, cache)


def test_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="qm9_part1.csv"):
        load_qm9_data(tmp_path / "nowhere", tmp_path / "cache")


def test_split_sizes_and_disjointness():
    n = qm9.N_QM9
    assert split_sizes("egnn", n) == (100_000, 17_748, 13_083)
    assert split_sizes("dimenet", n) == (110_000, 10_000, 10_831)
    for split in ("egnn", "dimenet"):
        parts = split_indices(n, split)
        everything = np.concatenate(list(parts.values()))
        assert everything.size == n and np.unique(everything).size == n
    a, b = split_indices(1000, (500, 100, 100), seed=1), split_indices(1000, (500, 100, 100), seed=1)
    np.testing.assert_array_equal(a["test"], b["test"])
    assert not np.array_equal(a["test"], split_indices(1000, (500, 100, 100), seed=2)["test"])


def test_egnn_split_is_cormorants_procedure():
    """Cormorant: np.random.seed(0); permutation(N); train, valid, test = consecutive blocks."""
    np.random.seed(0)
    perm = np.random.permutation(qm9.N_QM9)
    parts = split_indices(qm9.N_QM9, "egnn")
    np.testing.assert_array_equal(parts["train"], perm[:100_000])
    np.testing.assert_array_equal(parts["test"], perm[117_748:])


@pytest.mark.parametrize("split", ["random", (10, 10, 10), (0, 1, 1), (1, 2)])
def test_bad_splits(split):
    with pytest.raises(ValueError, match="split"):
        split_sizes(split, 25)


def test_saved_split_is_reused_and_checked(source, tmp_path):
    cache = tmp_path / "cache"
    kwargs = dict(cache_dir=cache, source_dir=source, progress=False)
    first = load_qm9(SMALL, targets="mu", **kwargs)
    path = cache / "qm9" / "split_custom-25-8-7_seed0.npz"
    with np.load(path) as f:
        saved = {k: f[k] for k in f.files}
    ids = np.concatenate([saved["train"], saved["val"], saved["test"]])
    np.savez(path, train=ids[15:], val=ids[7:15], test=ids[:7])  # another valid split: it is used as saved
    edited = load_qm9(SMALL, targets="mu", **kwargs)
    np.testing.assert_array_equal(edited["test"].targets, first["train"].targets[:7])
    np.savez(path, train=saved["train"], val=saved["train"][:8], test=saved["test"])  # overlapping parts
    with pytest.warns(UserWarning, match="does not fit"):
        again = load_qm9(SMALL, targets="mu", **kwargs)
    np.testing.assert_array_equal(again["test"].targets, first["test"].targets)
    path.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="unreadable"):
        again = load_qm9(SMALL, targets="mu", **kwargs)
    np.testing.assert_array_equal(again["test"].targets, first["test"].targets)


def test_saved_split_file_holds_qm9_ids(source, tmp_path):
    cache = tmp_path / "cache"
    sets = load_qm9(SMALL, targets="mu", cache_dir=cache, source_dir=source, progress=False)
    full = read_qm9_csv([source / n for n in qm9.QM9PACK_FILES])
    with np.load(cache / "qm9" / "split_custom-25-8-7_seed0.npz") as f:
        test_ids = f["test"]
    expected = full.targets[np.searchsorted(full.index, test_ids), QM9_TARGETS.index("mu")]
    np.testing.assert_array_equal(sets["test"].targets[:, 0], expected)


def test_subset_keeps_proportions_and_test_membership(source, tmp_path):
    kwargs = dict(cache_dir=tmp_path / "cache", source_dir=source, progress=False)
    full = load_qm9(SMALL, **kwargs)
    quick = load_qm9(SMALL, subset=10, **kwargs)
    assert {k: len(v) for k, v in quick.items()} == {"train": 6, "val": 2, "test": 2}
    np.testing.assert_array_equal(quick["test"].targets, full["test"].targets[:2])
    with pytest.raises(ValueError, match="subset"):
        load_qm9(SMALL, subset=2, **kwargs)


def test_unknown_target(source, tmp_path):
    with pytest.raises(ValueError, match="unknown QM9 targets"):
        load_qm9(SMALL, targets=["U0", "energy"], cache_dir=tmp_path, source_dir=source)


def test_import_is_light():
    code = "import sys, posenc.data; print(sorted(m for m in ('torch', 'jax', 'pandas', 'haiku') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
