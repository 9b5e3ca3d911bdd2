"""MD17 / rMD17 loaders on small fixture files in every layout, plus the real files where present."""

import functools
import hashlib
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from posenc.data import md17
from posenc.data.download import ChecksumError
from posenc.data.md17 import (
    MD17_MOLECULES, MD17_N_ATOMS, PAPER_MD17_MOLECULES, default_data_dir, load_md17, read_md17_file,
)

KCAL = 43.364  # meV per kcal/mol
SHARED = md17.SHARED_RMD17


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    """Tests see no POSENC_DATA / POSENC_CACHE from the machine."""
    monkeypatch.delenv("POSENC_DATA", raising=False)
    monkeypatch.delenv("POSENC_CACHE", raising=False)


def rmd17_arrays(n_frames: int, first: int, n_atoms: int = 9, seed: int = 0) -> dict[str, np.ndarray]:
    """rMD17-layout arrays whose frame f has energy ``first + f`` (revised) and ``first + f + 0.5`` (original)."""
    rng = np.random.default_rng(seed)
    energies = first + np.arange(n_frames, dtype=np.float64)
    forces = rng.normal(size=(n_frames, n_atoms, 3))
    return {
        "nuclear_charges": np.array([6, 6, 8, 1, 1, 1, 1, 1, 1][:n_atoms] + [1] * max(0, n_atoms - 9), dtype=np.uint8),
        "coords": rng.normal(size=(n_frames, n_atoms, 3)),
        "energies": energies,
        "forces": forces,
        "old_indices": np.arange(n_frames) * 7,
        "old_energies": energies + 0.5,
        "old_forces": 2.0 * forces,
    }


def write_presplit(directory: Path, molecule: str = "ethanol", split: int = 1, n_atoms: int = 9) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    parts = {"train": rmd17_arrays(1000, 0, n_atoms, seed=1), "test": rmd17_arrays(1000, 10_000, n_atoms, seed=2)}
    for part, arrays in parts.items():
        np.savez(directory / f"rmd17_{molecule}_{part}_{split:02d}.npz", **arrays)
    return parts


def energies_kcal(molecules) -> np.ndarray:
    return molecules.targets[:, 0] / KCAL


def test_molecule_lists():
    assert len(MD17_MOLECULES) == 10 and set(PAPER_MD17_MOLECULES) <= set(MD17_MOLECULES)
    assert len(PAPER_MD17_MOLECULES) == 8 and "paracetamol" not in PAPER_MD17_MOLECULES


def test_presplit_sizes_carving_and_units(tmp_path):
    parts = write_presplit(tmp_path)
    sets = load_md17("ethanol", data_dir=tmp_path, download=False)
    assert {k: len(v) for k, v in sets.items()} == {"train": 950, "val": 50, "test": 1000}
    train_frames = np.round(energies_kcal(sets["train"]) - 0.5).astype(int)  # md17 labels = old = revised + 0.5
    val_frames = np.round(energies_kcal(sets["val"]) - 0.5).astype(int)
    assert np.intersect1d(train_frames, val_frames).size == 0
    assert np.union1d(train_frames, val_frames).tolist() == list(range(1000))  # both from the training file
    np.testing.assert_allclose(energies_kcal(sets["test"]), parts["test"]["old_energies"])
    # positions and forces of a training frame: the original-label forces, converted to meV/A
    frame = train_frames[3]
    atoms = slice(3 * 9, 4 * 9)
    np.testing.assert_allclose(sets["train"].pos[atoms], parts["train"]["coords"][frame])
    np.testing.assert_allclose(sets["train"].forces[atoms], parts["train"]["old_forces"][frame] * KCAL)
    np.testing.assert_array_equal(sets["train"].z[atoms], parts["train"]["nuclear_charges"])
    assert sets["train"].target_names == ("energy",) and sets["train"].target_units == ("meV",)
    assert sets["val"].name == "md17:ethanol/01/val"


def test_revised_labels(tmp_path):
    parts = write_presplit(tmp_path)
    sets = load_md17("ethanol", labels="rmd17", data_dir=tmp_path, download=False)
    np.testing.assert_allclose(energies_kcal(sets["test"]), parts["test"]["energies"])
    np.testing.assert_allclose(sets["test"].forces, parts["test"]["forces"].reshape(-1, 3) * KCAL)


def test_seeded_carving(tmp_path):
    write_presplit(tmp_path)
    a, b, c = (load_md17("ethanol", data_dir=tmp_path, download=False, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a["val"].targets, b["val"].targets)
    assert not np.array_equal(a["val"].targets, c["val"].targets)
    small = load_md17("ethanol", data_dir=tmp_path, download=False, n_train=100, n_val=20)
    assert (len(small["train"]), len(small["val"]), len(small["test"])) == (100, 20, 1000)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"molecule": "methane"}, "unknown MD17 molecule"),
        ({"split": 6}, "split must be"),
        ({"labels": "dft"}, "labels must be"),
        ({"source": "web"}, "source must be"),
        ({"n_train": 960, "n_val": 50}, "carved out of the training frames"),
        ({"n_val": 0}, "n_val must be >= 1"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    write_presplit(tmp_path)
    with pytest.raises(ValueError, match=match):
        load_md17(**{"molecule": "ethanol", "data_dir": tmp_path, "download": False, **kwargs})


def test_missing_files_say_where_they_looked(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_md17("ethanol", data_dir=tmp_path / "empty", cache_dir=tmp_path / "cache", download=False)
    message = str(err.value)
    for needle in ("rmd17_ethanol_train_01.npz", str(tmp_path / "empty"), str(tmp_path / "cache"),
                   "../shared/data/rmd17", "POSENC_DATA"):
        assert needle in message


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setattr(md17, "SHARED_RMD17", tmp_path / "shared")
    assert default_data_dir() is None
    (tmp_path / "shared").mkdir()
    assert default_data_dir() == tmp_path / "shared"
    monkeypatch.setenv("POSENC_DATA", str(tmp_path / "env"))
    assert default_data_dir() == tmp_path / "env"
    assert default_data_dir(tmp_path / "arg") == tmp_path / "arg"
    write_presplit(tmp_path / "env")
    assert len(load_md17("ethanol", download=False)["test"]) == 1000  # found through POSENC_DATA


def corrupt(arrays: dict, how: str) -> dict:
    arrays = dict(arrays)
    if how == "missing key":
        del arrays["old_forces"]
    elif how == "forces shape":
        arrays["old_forces"] = arrays["old_forces"][:, :5]
    elif how == "energy shape":
        arrays["old_energies"] = arrays["old_energies"][:-1]
    elif how == "nan":
        arrays["coords"] = arrays["coords"].copy()
        arrays["coords"][7, 2, 1] = np.nan
    elif how == "atom count":
        arrays = rmd17_arrays(1000, 0, n_atoms=8)
    return arrays


@pytest.mark.parametrize(
    "how, match",
    [("missing key", "lacks the keys"), ("forces shape", "old_forces must be"),
     ("energy shape", "old_energies must be"), ("nan", "coords contains NaN"), ("atom count", "ethanol has 9")],
)
def test_corrupt_files(tmp_path, how, match):
    write_presplit(tmp_path)
    path = tmp_path / "rmd17_ethanol_train_01.npz"
    np.savez(path, **corrupt(rmd17_arrays(1000, 0), how))
    with pytest.raises(ValueError, match=match) as err:
        load_md17("ethanol", data_dir=tmp_path, download=False)
    assert str(path) in str(err.value)


def test_unreadable_file(tmp_path):
    write_presplit(tmp_path)
    path = tmp_path / "rmd17_ethanol_test_01.npz"
    path.write_bytes(path.read_bytes()[:5000])  # truncated archive
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_md17("ethanol", data_dir=tmp_path, download=False)


def test_sha256sums_next_to_files_are_checked(tmp_path):
    write_presplit(tmp_path)
    good = hashlib.sha256((tmp_path / "rmd17_ethanol_train_01.npz").read_bytes()).hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{good}  rmd17_ethanol_train_01.npz\n{'0' * 64}  rmd17_ethanol_test_01.npz\n")
    with pytest.raises(ChecksumError, match="rmd17_ethanol_test_01.npz"):
        load_md17("ethanol", data_dir=tmp_path, download=False)


def write_archive(root: Path, n_frames: int = 2500) -> tuple[dict, np.ndarray, np.ndarray]:
    """The figshare layout: npz_data/rmd17_ethanol.npz and splits/index_{train,test}_01.csv."""
    (root / "npz_data").mkdir(parents=True)
    (root / "splits").mkdir()
    arrays = rmd17_arrays(n_frames, 0)
    np.savez(root / "npz_data" / "rmd17_ethanol.npz", **arrays)
    perm = np.random.default_rng(5).permutation(n_frames)
    train, test = perm[:1000], perm[1000:2000]
    np.savetxt(root / "splits" / "index_train_01.csv", train, fmt="%d")
    np.savetxt(root / "splits" / "index_test_01.csv", test, fmt="%d")
    return arrays, train, test


def check_archive_sets(sets, arrays, train, test, labels="md17"):
    key = "old_energies" if labels == "md17" else "energies"
    np.testing.assert_allclose(energies_kcal(sets["test"]), arrays[key][test])
    used = np.concatenate([energies_kcal(sets["train"]), energies_kcal(sets["val"])])
    np.testing.assert_allclose(np.sort(used), np.sort(arrays[key][train]))
    assert (len(sets["train"]), len(sets["val"]), len(sets["test"])) == (950, 50, 1000)


@pytest.mark.parametrize("nested", [False, True])
def test_archive_layout(tmp_path, nested):
    arrays, train, test = write_archive(tmp_path / "rmd17" if nested else tmp_path)
    check_archive_sets(load_md17("ethanol", data_dir=tmp_path, download=False), arrays, train, test)
    sets = load_md17("ethanol", labels="rmd17", data_dir=tmp_path, download=False, source="rmd17-archive")
    check_archive_sets(sets, arrays, train, test, labels="rmd17")


@pytest.mark.parametrize(
    "content, match", [("1\n2\nx\n", "not a list of integer"), ("1\n2\n2500\n", r"must lie in \[0, 2500\)"),
                       ("1\n1\n", "repeats")],
)
def test_archive_bad_index_files(tmp_path, content, match):
    write_archive(tmp_path)
    (tmp_path / "splits" / "index_test_01.csv").write_text(content)
    with pytest.raises(ValueError, match=match):
        load_md17("ethanol", data_dir=tmp_path, download=False)


def test_archive_overlapping_split(tmp_path):
    _, train, _ = write_archive(tmp_path)
    np.savetxt(tmp_path / "splits" / "index_test_01.csv", train, fmt="%d")
    with pytest.raises(ValueError, match="both train and test"):
        load_md17("ethanol", data_dir=tmp_path, download=False)


def test_original_md17_layout(tmp_path):
    rng = np.random.default_rng(3)
    n = 2100
    energies = np.arange(n, dtype=np.float64)[:, None]  # [F, 1], as in some MD17 files
    forces = rng.normal(size=(n, 9, 3))
    np.savez(tmp_path / "md17_ethanol.npz", R=rng.normal(size=(n, 9, 3)), F=forces, E=energies,
             z=np.array([6, 6, 8, 1, 1, 1, 1, 1, 1]))
    sets = load_md17("ethanol", data_dir=tmp_path, download=False)
    frames = {k: np.round(energies_kcal(v)).astype(int) for k, v in sets.items()}
    assert {k: v.size for k, v in frames.items()} == {"train": 950, "val": 50, "test": 1000}
    assert np.unique(np.concatenate(list(frames.values()))).size == 2000  # all disjoint
    np.testing.assert_allclose(sets["test"].forces, forces[frames["test"]].reshape(-1, 3) * KCAL)
    other = load_md17("ethanol", split=2, data_dir=tmp_path, download=False)
    assert not np.array_equal(other["test"].targets, sets["test"].targets)
    with pytest.raises(ValueError, match="no revised"):
        read_md17_file(tmp_path / "md17_ethanol.npz", labels="rmd17")
    with pytest.raises(ValueError, match="labels='md17'"):
        load_md17("ethanol", labels="rmd17", data_dir=tmp_path, download=False, source="md17")


def test_neither_layout(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="neither an rMD17 file"):
        read_md17_file(tmp_path / "x.npz")


@pytest.fixture
def web(tmp_path):
    """A loopback HTTP server for the files in tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_presplit_download_is_verified(tmp_path, web, monkeypatch):
    root, url = web
    parts = write_presplit(root)
    monkeypatch.setattr(md17, "RMD17_NPZ_URL", url + "/{filename}")
    for name in ("rmd17_ethanol_train_01.npz", "rmd17_ethanol_test_01.npz"):
        monkeypatch.setitem(md17.RMD17_NPZ_SHA256, name, hashlib.sha256((root / name).read_bytes()).hexdigest())
    cache = tmp_path / "cache"
    sets = load_md17("ethanol", data_dir=tmp_path / "empty", cache_dir=cache, progress=False)
    np.testing.assert_allclose(energies_kcal(sets["test"]), parts["test"]["old_energies"])
    assert sorted(p.name for p in cache.iterdir()) == ["rmd17_ethanol_test_01.npz", "rmd17_ethanol_train_01.npz"]
    monkeypatch.setitem(md17.RMD17_NPZ_SHA256, "rmd17_ethanol_train_02.npz", "0" * 64)
    np.savez(root / "rmd17_ethanol_train_02.npz", **parts["train"])
    with pytest.raises(ChecksumError, match="rmd17_ethanol_train_02.npz"):
        load_md17("ethanol", split=2, data_dir=tmp_path / "empty", cache_dir=cache, progress=False)


def test_presplit_download_failure_is_explained(tmp_path, web, monkeypatch):
    _, url = web
    monkeypatch.setattr(md17, "RMD17_NPZ_URL", url + "/{filename}")  # the server has no such file
    with pytest.raises(FileNotFoundError, match="download failed.*404"):
        load_md17("ethanol", data_dir=tmp_path / "empty", cache_dir=tmp_path / "cache", progress=False)


def test_archive_download_needs_opt_in_and_extracts(tmp_path, web, monkeypatch):
    root, url = web
    arrays, train, test = write_archive(tmp_path / "build" / "rmd17")
    with tarfile.open(root / "rmd17.tar.bz2", "w:bz2") as tar:
        tar.add(tmp_path / "build" / "rmd17", arcname="rmd17")
    monkeypatch.setattr(md17, "RMD17_ARCHIVE_URL", url + "/rmd17.tar.bz2")
    cache = tmp_path / "cache"
    kwargs = dict(data_dir=tmp_path / "empty", cache_dir=cache, source="rmd17-archive", progress=False)
    with pytest.raises(ValueError, match="allow_unverified"):
        load_md17("ethanol", **kwargs)
    with pytest.warns(UserWarning, match="without verification"):
        sets = load_md17("ethanol", allow_unverified=True, **kwargs)
    check_archive_sets(sets, arrays, train, test)
    assert (cache / "rmd17-archive" / "rmd17" / "npz_data" / "rmd17_ethanol.npz").is_file()
    (cache / "rmd17.tar.bz2").unlink()
    (root / "rmd17.tar.bz2").unlink()
    check_archive_sets(load_md17("ethanol", **kwargs), arrays, train, test)  # the extraction is reused


def test_original_download_needs_opt_in(tmp_path, web, monkeypatch):
    root, url = web
    n = 2000
    np.savez(root / "md17_benzene2017.npz", R=np.zeros((n, 12, 3)), F=np.zeros((n, 12, 3)), E=np.arange(n, dtype=float),
             z=np.array([6] * 6 + [1] * 6))
    monkeypatch.setattr(md17, "MD17_URL", url + "/{filename}")
    kwargs = dict(data_dir=tmp_path / "empty", cache_dir=tmp_path / "cache", source="md17", progress=False)
    with pytest.raises(ValueError, match="allow_unverified"):
        load_md17("benzene", **kwargs)
    with pytest.warns(UserWarning, match="without verification"):
        sets = load_md17("benzene", allow_unverified=True, **kwargs)
    assert len(sets["test"]) == 1000 and sets["test"].n_atoms[0] == 12


def test_too_short_original_trajectory(tmp_path):
    n = 1500
    np.savez(tmp_path / "md17_ethanol.npz", R=np.zeros((n, 9, 3)), F=np.zeros((n, 9, 3)), E=np.zeros(n),
             z=np.array([6, 6, 8, 1, 1, 1, 1, 1, 1]))
    with pytest.raises(ValueError, match="1500 frames"):
        load_md17("ethanol", data_dir=tmp_path, download=False)


# ---- the real pre-split files (../shared/data/rmd17), where this machine has them ----

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real rMD17 files not present at {SHARED}")


@needs_shared
def test_real_ethanol_split():
    sets = load_md17("ethanol", data_dir=SHARED, download=False)  # verified against SHARED/SHA256SUMS
    assert {k: len(v) for k, v in sets.items()} == {"train": 950, "val": 50, "test": 1000}
    with np.load(SHARED / "rmd17_ethanol_test_01.npz") as raw:
        np.testing.assert_allclose(sets["test"].targets[:, 0], raw["old_energies"] * KCAL)
        np.testing.assert_allclose(sets["test"].forces, raw["old_forces"].reshape(-1, 3) * KCAL)
    # Original MD17 labels are noisier than the revised ones but describe the same frames.
    revised = load_md17("ethanol", labels="rmd17", data_dir=SHARED, download=False)
    np.testing.assert_array_equal(revised["test"].pos, sets["test"].pos)
    r = np.corrcoef(revised["test"].forces.ravel(), sets["test"].forces.ravel())[0, 1]
    assert r > 0.95


@needs_shared
@pytest.mark.parametrize("molecule", MD17_MOLECULES)
def test_real_files_read(molecule):
    trajectory = read_md17_file(SHARED / f"rmd17_{molecule}_train_01.npz", molecule=molecule)
    assert len(trajectory) == 1000 and trajectory.z.size == MD17_N_ATOMS[molecule]
