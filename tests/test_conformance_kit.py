"""The conformance kit (atomsim/testing.py) itself: it passes correct potentials and fails
deliberately broken ones on exactly the check that covers the defect.

Each broken potential is a correct toy (a smooth pair potential, or the bundled EGNN) with
one known defect, so the reference is the defect we put in: forces not the gradient of the
energy, a jump at the cutoff, pairs past the cutoff counted, anisotropy, dependence on atom
order, ghosts not refreshed between layers, unknown elements accepted. Real potentials with
known physics are used too: LAMMPS-style lj/cut (energy jumps at the cutoff) and ASE's
shifted LJ (continuous energy, force jump).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from atomsim.kernels.graph import Graph
from atomsim.potentials.base import Potential
from atomsim.potentials.egnn import EGNNPotential
from atomsim.potentials.lj import LennardJones
from atomsim.testing import CHECKS, check_potential, default_structures

AR_EPSILON, AR_SIGMA = 0.0104, 3.4
TESTS = Path(__file__).resolve().parent


class SmoothPair(Potential):
    """E = sum over pairs A exp(-r) (1 - (r/rc)^2)^2 for r < rc: smooth at the cutoff; Cu and Ni only."""

    cutoff = 3.5
    receptive_field = 1
    species = (28, 29)

    def __init__(self):
        super().__init__()
        self.register_buffer("amplitude", torch.tensor([0.0] * 28 + [2.0, 3.0], dtype=torch.float64))

    def envelope(self, r: Tensor) -> Tensor:
        x = r / self.cutoff
        return torch.where(r < self.cutoff, (1 - x * x) ** 2, torch.zeros_like(r))

    def pair(self, r: Tensor, vec: Tensor) -> Tensor:
        return torch.exp(-r) * self.envelope(r)

    def per_atom_energy(self, numbers: Tensor, graph: Graph) -> Tensor:
        if not bool(torch.isin(numbers, torch.tensor(self.species)).all()):
            self.check_species(numbers.cpu().numpy())
        vec = graph.edge_vectors
        r = torch.linalg.vector_norm(vec, dim=-1)
        amp = self.amplitude.to(vec.dtype)
        a = torch.sqrt(amp[numbers[graph.receivers]] * amp[numbers[graph.senders]])
        e = 0.5 * a * self.pair(r, vec)
        return torch.zeros(graph.n_nodes, dtype=vec.dtype).index_add(0, graph.receivers, e)


class DetachedForces(SmoothPair):
    """A term cut out of autograd (a classic bug): forces are no longer -dE/dx."""

    def pair(self, r, vec):
        return torch.exp(-r.detach()) * self.envelope(r)


class EnergyJump(SmoothPair):
    """Hard cutoff without shift: the energy jumps when a pair crosses the cutoff."""

    def envelope(self, r):
        return (r < self.cutoff).to(r.dtype)


class ForceKink(SmoothPair):
    """Envelope (1 - r/rc): continuous energy, forces jump at the cutoff."""

    def envelope(self, r):
        return torch.where(r < self.cutoff, 1 - r / self.cutoff, torch.zeros_like(r))


class CountsSkinPairs(SmoothPair):
    """Never masks pairs beyond the cutoff: the neighbor list's skin changes the result."""

    def envelope(self, r):
        x = r / self.cutoff
        return (1 - x * x) ** 2


class Anisotropic(SmoothPair):
    """Energy depends on the x-direction of bonds: not rotation invariant."""

    def pair(self, r, vec):
        return super().pair(r, vec) * (1 + 0.2 * (vec[:, 0] / r) ** 2)


class OrderDependent(SmoothPair):
    """Per-atom energy depends on the atom's index: not permutation invariant."""

    def per_atom_energy(self, numbers, graph):
        e = super().per_atom_energy(numbers, graph)
        return e * (1 + 0.01 * torch.arange(graph.n_nodes, dtype=e.dtype))


class SpeciesUnchecked(SmoothPair):
    """Declares species but reads any element's parameters (zero amplitude) without complaint."""

    def per_atom_energy(self, numbers, graph):
        vec = graph.edge_vectors
        r = torch.linalg.vector_norm(vec, dim=-1)
        e = 0.5 * self.pair(r, vec) * self.amplitude.to(vec.dtype)[numbers.clamp(max=29)][graph.receivers]
        return torch.zeros(graph.n_nodes, dtype=vec.dtype).index_add(0, graph.receivers, e)


class SpeciesUnnamed(SmoothPair):
    """Rejects unknown elements, but without saying which."""

    def check_species(self, numbers):
        if not set(int(z) for z in np.asarray(numbers)) <= set(self.species):
            raise ValueError("unsupported element")


def egnn(cls=EGNNPotential, depth: int = 2) -> EGNNPotential:
    torch.manual_seed(0)
    m = cls(species=[28, 29], width=8, depth=depth, n_rbf=4, cutoff=3.5, avg_num_neighbors=4.0,
            readout_hidden=8)
    with torch.no_grad():
        m.energy_scale.fill_(5.0)
    return m.to(torch.float64)


class NoRefresh(EGNNPotential):
    """Message passing that never calls graph.refresh_ghosts: ghosts keep stale features under MPI."""

    def node_features(self, numbers, graph):
        graph = self.within_cutoff(graph)
        h = self.embedding(self.species_index(numbers))
        for layer in self.layers:
            h = layer(h, graph, self.cutoff, self._inv_avg)
        return h


class UnderstatedDepth(NoRefresh):
    """Claims to be a pair potential (receptive_field 1), so the engine expects no refresh; it is not."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.receptive_field = 1


class RefreshBeforeLayers(EGNNPotential):
    """Refreshes before every layer instead of after: enough calls, but the engine exchanges only
    the first receptive_field - 1 of them, so the exchange between layers 1 and 2 is lost."""

    def node_features(self, numbers, graph):
        graph = self.within_cutoff(graph)
        h = self.embedding(self.species_index(numbers))
        for layer in self.layers:
            h = graph.refresh_ghosts(h)
            h = layer(h, graph, self.cutoff, self._inv_avg)
        return h


def _report(potential, checks):
    return check_potential(potential, checks=checks, raise_on_failure=False, fd_points=4)


# ------------------------------------------------------------------------------ passes --
def test_correct_toy_passes_every_check():
    report = _report(SmoothPair(), CHECKS)
    assert report.passed, str(report)
    assert not report.skipped
    names = {r.check for r in report.results}
    assert {"forces", "virial", "cutoff/skin", "cutoff/energy", "smooth_cutoff", "invariance/rotation",
            "invariance/translation", "invariance/permutation", "ghosts/count", "ghosts/per-layer",
            "species/check_species", "species/evaluation"} <= names
    structures = {r.structure for r in report.results if r.check == "forces"}
    assert structures == {"fcc", "triclinic", "slab", "cluster"}


def test_default_structures_are_small_rattled_and_sane():
    s = default_structures([28, 29], cutoff=5.0)
    assert [len(a) for a in s.values()] == [4, 6, 8, 6]
    assert [tuple(a.pbc) for a in s.values()] == [(True,) * 3, (True,) * 3, (True, True, False), (False,) * 3]
    for name, atoms in s.items():
        d = atoms.get_all_distances(mic=bool(atoms.pbc.any())) + 1e3 * np.eye(len(atoms))
        assert 0.6 * 2.55 < d.min() < 5.0, name  # no overlapping atoms; neighbors within the cutoff
        assert set(atoms.numbers) == {28, 29}, name
    cell = s["triclinic"].cell
    assert min(abs(cell.angles() - 90)) > 10  # strongly sheared


# ------------------------------------------------------------------------------ failures --
@pytest.mark.parametrize("potential, failing", [
    (DetachedForces(), {"forces", "virial"}),
    (EnergyJump(), {"cutoff", "smooth_cutoff"}),
    (ForceKink(), {"smooth_cutoff"}),
    (CountsSkinPairs(), {"cutoff"}),
    (Anisotropic(), {"invariance"}),
    (OrderDependent(), {"invariance"}),
    (SpeciesUnchecked(), {"species"}),
    (SpeciesUnnamed(), {"species"}),
], ids=lambda p: type(p).__name__ if isinstance(p, Potential) else "")
def test_broken_toy_fails_exactly_its_check(potential, failing):
    report = _report(potential, CHECKS)
    assert report.failed_checks() == failing, str(report)


def test_failure_message_names_check_structure_and_numbers():
    with pytest.raises(AssertionError) as exc:
        check_potential(DetachedForces(), checks=("forces",), fd_points=3)
    msg = str(exc.value)
    assert "DetachedForces" in msg and "check 'forces' failed on structure 'fcc'" in msg
    assert "F_fd =" in msg and "> tolerance" in msg


def test_which_invariance_breaks_is_named():
    def failed(potential):
        return {r.check for r in _report(potential, ("invariance",)).failures}

    assert failed(Anisotropic()) == {"invariance/rotation"}
    assert failed(OrderDependent()) == {"invariance/permutation"}


def test_species_failures_say_why():
    unchecked = {r.check: r.detail for r in _report(SpeciesUnchecked(), ("species",)).failures}
    assert list(unchecked) == ["species/evaluation"] and "accepted H" in unchecked["species/evaluation"]
    unnamed = _report(SpeciesUnnamed(), ("species",)).failures
    # (its per_atom_energy calls the unhelpful check_species too)
    assert {r.check for r in unnamed} == {"species/check_species", "species/evaluation"}
    assert all("NOT naming H" in r.detail for r in unnamed)


@pytest.mark.parametrize("cls, depth, failing", [
    (NoRefresh, 2, {"ghosts/count", "ghosts/per-layer"}),
    (UnderstatedDepth, 2, {"ghosts/per-layer"}),
    (RefreshBeforeLayers, 2, {"ghosts/per-layer"}),
    (EGNNPotential, 3, set()),
])
def test_ghost_refresh_rule_matches_the_engine(cls, depth, failing):
    report = _report(egnn(cls, depth), ("ghosts",))
    assert {r.check for r in report.failures} == failing, str(report)


def test_lammps_lj_cut_and_ase_shifted_lj():
    """Real potentials: lj/cut (no shift) jumps in energy at rc; ASE's shifted LJ only in force."""
    cut = LennardJones(epsilon=AR_EPSILON, sigma=AR_SIGMA, shift=False)
    assert _report(cut, ("cutoff", "smooth_cutoff")).failed_checks() == {"cutoff", "smooth_cutoff"}
    shifted = LennardJones(epsilon=AR_EPSILON, sigma=AR_SIGMA)
    assert _report(shifted, ("cutoff", "smooth_cutoff")).failed_checks() == {"smooth_cutoff"}
    jump = next(r for r in _report(cut, ("cutoff",)).failures)
    # the jump is the pair energy at the cutoff, 4 eps ((s/rc)^12 - (s/rc)^6), shared over two atoms
    assert jump.error == pytest.approx(0.5 * abs(4 * AR_EPSILON * (3.0**-12 - 3.0**-6)), rel=1e-2)


def test_float32_agreement_tolerance_and_original_untouched():
    pot = SmoothPair().to(torch.float32)
    report = check_potential(pot, checks=("invariance",), dtype=None)
    assert all(r.tolerance >= 1e-6 for r in report.results)
    assert pot.amplitude.dtype == torch.float32  # the float64 copy did not touch the caller's model
    check_potential(pot, checks=("forces",), fd_points=2)
    assert pot.amplitude.dtype == torch.float32


def test_unknown_check_is_rejected():
    with pytest.raises(ValueError, match="unknown conformance check 'force'"):
        check_potential(SmoothPair(), checks=("force",))


# ------------------------------------------------------------------------ pytest helper --
def test_conformance_tests_two_lines_collect_and_run(tmp_path):
    """The two lines of docs/bring_your_own_model.md in a fresh test module, run by pytest."""
    (tmp_path / "test_plugin.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from test_conformance_kit import SmoothPair, ForceKink

        from atomsim.testing import conformance_tests
        test_conformance = conformance_tests(lambda: SmoothPair(), fd_points=2)
        test_kinked = conformance_tests(ForceKink, checks=("cutoff", "smooth_cutoff"))
    """))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = proc.stdout
    for check in CHECKS:
        assert f"test_plugin.py::test_conformance[{check}] PASSED" in out, out[-4000:]
    assert "test_plugin.py::test_kinked[cutoff] PASSED" in out, out[-4000:]
    assert "test_plugin.py::test_kinked[smooth_cutoff] FAILED" in out, out[-4000:]
    assert "check 'smooth_cutoff' failed on structure 'trimer'" in out
    assert "8 passed" in out and "1 failed" in out
