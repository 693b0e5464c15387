"""SevenNet-0 through the atomsim-sevenn plugin against sevenn's own SevenNetCalculator.

The plugin (plugins/atomsim-sevenn) is found only through the
``atomsim.potentials`` entry point, exactly as a third-party package would be.
References are sevenn's own ASE calculator (its neighbor list, its
pos -> edge_vec step, its force/stress module, weights loaded by sevenn with
``weights_only=False``). Systems are small: SevenNet-0 costs ~12 ms/atom here.
Skips (with the reason and the command: scripts/install_test_extras.sh) only where sevenn
or the plugin is not installed; with ATOMSIM_REQUIRE_SEVENN=1 (CI) those skips are failures.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from conftest import skip_module_unless_extra


def _plugin_problem() -> str | None:
    """Why sevenn or the plugin cannot be imported here, or None."""
    for name in ("sevenn", "atomsim_sevenn"):
        try:
            __import__(name)
        except Exception as exc:  # noqa: BLE001  (ImportError, or a broken install)
            return f"{name} is not importable ({type(exc).__name__}: {exc})"
    return None


# skip (naming the reason and scripts/install_test_extras.sh), or fail under ATOMSIM_REQUIRE_SEVENN=1
skip_module_unless_extra("sevenn", _plugin_problem())
import atomsim_sevenn  # noqa: E402
import sevenn  # noqa: E402,F401

from atomsim import AtomsimCalculator  # noqa: E402
from atomsim.kernels.neighbors import neighbor_list  # noqa: E402
from atomsim.potentials.base import build_graph, evaluate_potential  # noqa: E402
from atomsim.potentials.registry import available_potentials, load_potential  # noqa: E402
from atomsim.testing import conformance_tests  # noqa: E402

TOL = 1e-5  # relative, float32 model on both sides; only summation order differs


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


def _cu() -> Atoms:
    a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))  # 8 atoms
    a.rattle(0.08, seed=11)
    return a


def _nacl() -> Atoms:
    a = bulk("NaCl", "rocksalt", a=5.64, cubic=True)  # 8 atoms
    a.rattle(0.08, seed=12)
    return a


def _triclinic() -> Atoms:
    """Ba-Ti-O-N in a sheared, strained cell: no right angles, four elements."""
    a = Atoms(
        "BaTiO2N", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
        cell=np.eye(3) * 4.0, pbc=True)
    a.set_cell(a.cell.array @ np.array([[1.03, 0.11, -0.06], [0.0, 0.97, 0.09], [0.0, 0.0, 1.05]]),
               scale_atoms=True)
    a = a.repeat((2, 1, 1))  # 10 atoms
    a.rattle(0.08, seed=13)
    return a


SYSTEMS = {"Cu": _cu, "NaCl": _nacl, "triclinic_BaTiO2N": _triclinic}


@pytest.fixture(scope="module")
def reference_calc():
    from sevenn.calculator import SevenNetCalculator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SevenNetCalculator("7net-0", device="cpu")


@functools.lru_cache(maxsize=1)
def _sevennet():
    """One SevenNet-0 for the module (loading costs seconds); the kit works on its own float64 copy."""
    return load_potential("sevennet-0")


@pytest.fixture(scope="module")
def potential():
    return _sevennet()


def _reference(calc, atoms):
    b = atoms.copy()
    b.calc = calc
    return {"energy": b.get_potential_energy(), "forces": b.get_forces(), "stress": b.get_stress(),
            "energies": b.get_potential_energies()}


def test_registered_through_entry_point_only(potential):
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="atomsim.potentials")}
    assert names.get("sevennet-0") == "atomsim_sevenn:load_sevennet"
    assert names.get("7net-0") == "atomsim_sevenn:load_sevennet"
    assert "sevennet-0" in available_potentials()
    assert isinstance(potential, atomsim_sevenn.SevenNetPotential)
    # what the engine reads to size neighbor lists and halos
    assert potential.cutoff == 5.0 and potential.receptive_field == 5
    assert len(potential.species) == 89 and {1, 29, 94} <= set(potential.species)
    assert potential.dtype == torch.float32


def test_checkpoint_needs_and_uses_the_explicit_allow_list():
    """Plain weights_only=True refuses the file; with the numpy allow-list it loads the same weights sevenn does."""
    import pickle

    import sevenn.util

    path = sevenn.util.pretrained_name_to_path("7net-0")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True, map_location="cpu")
    safe = atomsim_sevenn.safe_torch_load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unsafe = torch.load(path, weights_only=False, map_location="cpu")
    assert safe["model_state_dict"].keys() == unsafe["model_state_dict"].keys()
    for k, v in unsafe["model_state_dict"].items():
        assert torch.equal(safe["model_state_dict"][k], v), k
    np.testing.assert_array_equal(safe["config"]["shift"], unsafe["config"]["shift"])


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_calculator_matches_sevennet_calculator(name, potential, reference_calc):
    atoms = SYSTEMS[name]()
    ref = _reference(reference_calc, atoms)
    atoms.calc = AtomsimCalculator(model=potential, device="cpu")  # skin 1 Å: the list holds extra pairs
    assert rel(atoms.get_potential_energy(), ref["energy"]) < TOL
    assert rel(atoms.get_forces(), ref["forces"]) < TOL
    assert rel(atoms.get_stress(), ref["stress"]) < TOL
    assert rel(atoms.get_potential_energies(), ref["energies"]) < TOL
    assert np.abs(ref["forces"]).max() > 0.1  # rattled: forces are not zero by symmetry


def test_calculator_by_name_and_list_reuse(reference_calc):
    """``AtomsimCalculator(model="sevennet-0")``; a move below skin/2 reuses the list and still matches."""
    atoms = _nacl()
    calc = AtomsimCalculator(model="sevennet-0", device="cpu", skin=1.0, dtype="float32")  # as the reference
    atoms.calc = calc
    atoms.get_forces()
    atoms.positions += np.random.default_rng(5).normal(0, 0.1, atoms.positions.shape)  # < 0.5 Å
    ref = _reference(reference_calc, atoms)
    assert rel(atoms.get_potential_energy(), ref["energy"]) < TOL
    assert rel(atoms.get_forces(), ref["forces"]) < TOL
    assert rel(atoms.get_stress(), ref["stress"]) < TOL
    assert calc.n_neighbor_builds == 1


def test_float64_model_matches(reference_calc):
    """dtype=float64 casts sevenn's float32 one-hot features too; agrees with the float32 reference."""
    atoms = _nacl()
    ref = _reference(reference_calc, atoms)
    atoms.calc = AtomsimCalculator(model="sevennet-0", device="cpu", dtype="float64")
    assert atoms.calc.potential.dtype == torch.float64
    assert rel(atoms.get_potential_energy(), ref["energy"]) < TOL
    assert rel(atoms.get_forces(), ref["forces"]) < TOL
    assert rel(atoms.get_stress(), ref["stress"]) < TOL


def test_evaluate_potential_matches(potential, reference_calc):
    """The bare contract: atomsim list at exactly the cutoff -> evaluate_potential."""
    atoms = _triclinic()
    ref = _reference(reference_calc, atoms)
    i, j, S = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, potential.cutoff)
    t = lambda a: torch.as_tensor(np.asarray(a))  # noqa: E731
    pos = t(atoms.positions).to(torch.float64)
    graph = build_graph(pos, t(atoms.cell.array).to(torch.float64), t(i), t(j), t(S), len(atoms), potential.dtype)
    out = evaluate_potential(potential, t(atoms.numbers).to(torch.int64), graph)
    from ase.stress import full_3x3_to_voigt_6_stress

    stress = full_3x3_to_voigt_6_stress(out.virial.numpy() / atoms.get_volume())  # virial = dE/dstrain
    assert rel(out.energy, ref["energy"]) < TOL
    assert rel(out.forces.numpy(), ref["forces"]) < TOL
    assert rel(stress, ref["stress"]) < TOL
    assert rel(out.energies, ref["energies"]) < TOL


def _kit_structures():
    """Tiny, as SevenNet-0 costs about a second per call on the 2-core CI machine."""
    nacl = bulk("NaCl", "rocksalt", a=5.64)  # primitive cell, 2 atoms, many periodic images
    nacl.rattle(0.1, seed=14)
    cluster = Atoms("Cu3O", positions=[[0, 0, 0], [2.5, 0, 0], [1.25, 2.1, 0], [1.25, 0.7, 1.6]])
    cluster.rattle(0.05, seed=15)
    return {"NaCl_primitive": nacl, "Cu3O_cluster": cluster}


# atomsim's conformance kit (atomsim/testing.py), the two lines of docs/bring_your_own_model.md:
# forces/virial vs central differences, cutoff, symmetries, per-layer ghosts, unknown elements (Po).
# Default float64 tolerances; the float64 copy's rotation error is ~8e-9 relative (observed).
test_conformance = conformance_tests(_sevennet, _kit_structures, fd_points=3)


def test_rejects_unknown_params():
    with pytest.raises(ValueError, match="checkpoint"):
        load_potential("sevennet-0", epsilon=1.0)


# -- multi-rank equals one rank ------------------------------------------------------------------
SCRIPTS = Path(__file__).parent / "mpi_scripts"
MPIEXEC = Path(sys.executable).parent / "mpiexec"


@pytest.fixture(scope="module")
def mpi_reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("sevenn_mpi") / "ref.pkl"
    proc = _run([sys.executable, "sevenn_forces.py", "--reference", str(path)], 300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return path


def _run(cmd, timeout):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    try:
        return subprocess.run(cmd, cwd=SCRIPTS, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s (deadlock?)\n{exc.stdout}\n{exc.stderr}")


@pytest.mark.mpi
@pytest.mark.timeout(400)
@pytest.mark.parametrize("n", [2, 4])
def test_multi_rank_matches_one_rank(n, mpi_reference, tmp_path):
    if not MPIEXEC.exists():
        pytest.skip(f"no mpiexec next to {sys.executable} (install atomsim[mpi])")
    out = tmp_path / "out.json"
    proc = _run([str(MPIEXEC), "-n", str(n), sys.executable, "sevenn_forces.py", str(mpi_reference), str(out)], 360)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    res = json.loads(out.read_text())
    assert res["size"] == n
    assert sorted(res["results"]) == ["cluster/full", "cluster/per-layer", "cu/per-layer"]
    for key, r in res["results"].items():
        for stage in ("start", "moved"):
            for q in ("energy", "forces", "virial", "energies"):
                assert r[stage][q] < TOL, f"{n} ranks, {key}, {stage}: {q} rel. error {r[stage][q]:.2e}"
        assert r["n_builds"] == 1
        assert sum(r["n_owned"]) == {"cu": 32, "cluster": 19}[key.split("/")[0]]
        if key.endswith("per-layer"):
            # 4 refreshes (between 5 blocks) per force call: start + moved
            assert r["halo_calls"] == 4
