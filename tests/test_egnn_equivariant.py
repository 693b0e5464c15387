"""The E(n)-equivariant EGNN variant (EGNNConfig(equivariant=True), potentials/egnn_equivariant.py).

Each property is checked against something independent: central finite differences and the strain
derivative (the conformance kit), the rotated/translated/permuted system, the periodic result
rebuilt from a supercell or from explicit ghosts, the invariant model (with the coordinate update
switched off), an angle the invariant model provably cannot see, and the 1-rank run under MPI.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from atomsim.kernels.neighbors import neighbor_list
from atomsim.potentials.base import build_graph, evaluate_potential
from atomsim.potentials.checkpoint import load_checkpoint, save_checkpoint
from atomsim.potentials.egnn import EGNNConfig, build_egnn
from atomsim.testing import conformance_tests, default_structures

SPECIES = [1, 3, 6, 7, 8, 14, 15, 26]  # H Li C N O Si P Fe: across the table
CUTOFF = 4.0
SCRIPTS = Path(__file__).parent / "mpi_scripts"


def _model(equivariant: bool = True, depth: int = 3, seed: int = 0, dtype=torch.float64):
    torch.manual_seed(seed)
    m = build_egnn(SPECIES, width=16, depth=depth, n_rbf=6, cutoff=CUTOFF, avg_num_neighbors=8.0,
                   readout_hidden=8, equivariant=equivariant, coord_hidden=8)
    with torch.no_grad():  # as after fitting, and coordinate weights large enough to matter
        m.energy_scale.fill_(5.0)
        m.species_energy.copy_(torch.linspace(-6.0, -2.0, len(SPECIES), dtype=torch.float64))
        for layer in m.layers:
            if getattr(layer, "coord", None) is not None:
                layer.coord.w_out.normal_(0, 0.5)
                layer.coord.b_out.normal_(0, 0.3)
    return m.to(dtype)


def _rocksalt(cations: str, anions: str, a: float) -> Atoms:
    frac = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                     [.5, 0, 0], [0, .5, 0], [0, 0, .5], [.5, .5, .5]])
    return Atoms(cations + anions, scaled_positions=frac, cell=np.eye(3) * a, pbc=True)


def _cells() -> dict:
    """A Li-Fe-P-O cell and an Si-C-N-H cell, both triclinic and rattled (no symmetry left)."""
    rng = np.random.default_rng(5)
    lfpo = _rocksalt("LiFePLi", "OOOO", 4.1)
    lfpo.set_cell(lfpo.cell.array @ np.array([[1.0, 0.1, -0.04], [0.0, 0.97, 0.07], [0.0, 0.0, 1.03]]),
                  scale_atoms=True)
    sic = Atoms("Si4C4", scaled_positions=[[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                                           [.25, .25, .25], [.25, .75, .75], [.75, .25, .75], [.75, .75, .25]],
                cell=np.eye(3) * 4.36, pbc=True)
    sic.numbers[5] = 7  # C -> N
    sic += Atoms("H", positions=[[2.18, 2.18, 2.18]])  # octahedral interstitial, 1.9 Å from C/N
    sic.set_cell(sic.cell.array @ np.array([[1.0, -0.06, 0.05], [0.0, 1.02, 0.0], [0.04, 0.0, 0.98]]),
                 scale_atoms=True)
    for at in (lfpo, sic):
        at.positions += rng.normal(0, 0.06, at.positions.shape)
    return {"LiFePO": lfpo, "SiCNH": sic}


def _kit_structures() -> dict:
    return {**_cells(), **default_structures([3, 8, 26], CUTOFF)}


# forces/virial vs finite differences, the skin, delta^3 vanishing at the cutoff, rotation,
# translation and permutation (energies, forces and virial), ghosts per layer, unknown elements.
test_conformance = conformance_tests(_model, _kit_structures, rtol=0.0, atol=1e-12, cutoff_order=3,
                                     fd_points=4)


def _run(model, atoms: Atoms, skin: float = 0.7):
    pos = torch.tensor(atoms.get_positions())
    i, j, s = (torch.from_numpy(a) for a in neighbor_list(atoms.get_positions(), atoms.cell.array, atoms.pbc,
                                                           model.cutoff + skin))
    g = build_graph(pos, torch.tensor(atoms.cell.array), i, j, s, len(atoms), model.dtype)
    return evaluate_potential(model, torch.tensor(atoms.numbers), g)


def test_supercell_gives_n_times_the_energy_and_tiled_forces():
    model = _model()
    for name, atoms in _cells().items():
        one = _run(model, atoms)
        big = _run(model, atoms.repeat((2, 1, 2)))
        assert abs(big.energy - 4 * one.energy) < 1e-10 * abs(one.energy), name
        tiled = np.tile(one.forces.numpy(), (4, 1))
        np.testing.assert_allclose(big.forces.numpy(), tiled, rtol=0, atol=1e-11, err_msg=name)
        np.testing.assert_allclose(big.virial.numpy(), 4 * one.virial.numpy(), rtol=0, atol=1e-10, err_msg=name)


def test_forces_rotate_with_the_cell_and_energy_does_not_change():
    model = _model()
    rot = torch.linalg.matrix_exp(torch.tensor([[0.0, -0.7, 0.3], [0.7, 0.0, -1.1], [-0.3, 1.1, 0.0]],
                                               dtype=torch.float64)).numpy()
    for name, atoms in _cells().items():
        turned = atoms.copy()
        turned.set_cell(atoms.cell.array @ rot.T, scale_atoms=True)
        turned.positions += np.array([0.3, -1.2, 2.5])
        a, b = _run(model, atoms), _run(model, turned)
        assert abs(a.energy - b.energy) < 1e-11, name
        np.testing.assert_allclose(b.forces.numpy(), a.forces.numpy() @ rot.T, rtol=0, atol=1e-11, err_msg=name)
        np.testing.assert_allclose(b.virial.numpy(), rot @ a.virial.numpy() @ rot.T, rtol=0, atol=1e-10)


def test_without_coordinate_updates_it_is_the_invariant_model():
    """phi_x = 0 moves nothing: the result must equal the invariant model with the same weights."""
    eq, inv = _model(equivariant=True), _model(equivariant=False)
    inv.load_state_dict({k: v for k, v in eq.state_dict().items() if ".coord." not in k}, strict=True)
    atoms = _cells()["LiFePO"]
    assert abs(_run(eq, atoms).energy - _run(inv, atoms).energy) > 1e-6  # the update does something
    with torch.no_grad():
        for layer in eq.layers:
            if layer.coord is not None:
                layer.coord.w_out.zero_()
                layer.coord.b_out.zero_()
    a, b = _run(eq, atoms), _run(inv, atoms)
    assert abs(a.energy - b.energy) < 1e-12
    np.testing.assert_allclose(a.forces.numpy(), b.forces.numpy(), rtol=0, atol=1e-12)


def test_the_coordinate_update_lets_the_model_see_an_angle():
    """O-Fe-O with both bonds 2.5 Å and the O-O distance past the 4 Å cutoff: the graph has the same
    two edge lengths at every angle above ~106 degrees, so any distance-only model gives one energy,
    while the updated coordinates (Fe moves along r1 + r2) change the second layer's distances."""
    def bent(theta_deg: float) -> Atoms:
        t = np.radians(theta_deg)
        return Atoms("FeOO", positions=[[0, 0, 0], [2.5, 0, 0], [2.5 * np.cos(t), 2.5 * np.sin(t), 0]])

    angles = (120.0, 140.0, 165.0)  # O-O 4.33, 4.70, 4.96 Å
    for equivariant in (False, True):
        model = _model(equivariant=equivariant, depth=2, seed=1)
        energies = [_run(model, bent(a)).energy for a in angles]
        spread = max(energies) - min(energies)
        if equivariant:
            assert spread > 1e-6, energies  # vs exactly constant above
        else:
            assert spread < 1e-12, energies


def test_config_is_stored_and_old_configs_load_unchanged(tmp_path):
    model = _model(dtype=torch.float32)  # checkpoints load in float32
    save_checkpoint(model, tmp_path / "eq")
    meta = json.loads((tmp_path / "eq" / "config.json").read_text())
    assert meta["config"]["equivariant"] is True and meta["config"]["coord_hidden"] == 8
    back = load_checkpoint(tmp_path / "eq")
    atoms = _cells()["SiCNH"]
    assert back.dtype == torch.float32
    assert _run(back, atoms).energy == _run(model, atoms).energy
    old = {k: v for k, v in meta["config"].items() if k not in ("equivariant", "coord_hidden")}
    assert EGNNConfig(**old).equivariant is False
    with pytest.raises(ValueError, match="equivariant"):
        EGNNConfig(species=[1], equivariant="yes")
    with pytest.raises(ValueError, match="coord_hidden"):
        EGNNConfig(species=[1], coord_hidden=0)


@pytest.mark.mpi
@pytest.mark.timeout(300)
def test_two_ranks_equal_one_rank_on_both_halo_schemes(tmp_path):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        pytest.skip(f"no mpiexec next to {sys.executable} (install atomsim[mpi])")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    ref, out = tmp_path / "ref.pkl", tmp_path / "out.json"
    script = "check_egnn_equivariant.py"
    for cmd in ([sys.executable, script, "--reference", ref],
                [mpiexec, "-n", "2", sys.executable, script, ref, out]):
        proc = subprocess.run([str(c) for c in cmd], cwd=SCRIPTS, env=env, capture_output=True, text=True,
                              timeout=240)
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    res = json.loads(out.read_text())
    assert res["size"] == 2 and len(res["results"]) == 4
    for key, r in res["results"].items():
        assert all(r["n_owned"]), f"{key}: a rank owns nothing"
        for stage in ("start", "moved"):
            for q in ("energy", "forces", "virial", "energies"):
                assert r[stage][q] < 1e-10, f"{key}, {stage}: {q} rel. error {r[stage][q]:.2e}"
