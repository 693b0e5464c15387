"""Start training from a trained EGNN (fine-tuning, or growing a model) instead of from noise.

``init_from`` in an `atomsim train` config names a bundled model or a checkpoint folder. Its weights
are copied into the new model wherever the architecture allows, in a way that keeps the source's
energy function exactly at step 0, so training continues from where the source stopped:

- more radial basis functions (``n_rbf`` up): the Bessel basis sin(n pi d / rc) / d for n = 1..K
  is a prefix of the larger one, so the new rows of ``w_rbf`` start at zero;
- more layers (``depth`` up): a new layer's node update h + MLP([h, m]) starts as the identity (its
  last linear map is zero), and it is appended after the copied layers;
- new elements: their embeddings start at the mean of the known ones and their reference energies
  come from the least-squares fit of the new data.

Everything else (width, readout width, cutoff, variant) must match: they change every layer's
function, so there is nothing exact to copy, and the error says which key differs.
"""
from __future__ import annotations

import torch

from atomsim.potentials.egnn import EGNNPotential

MUST_MATCH = ("width", "readout_hidden", "cutoff", "equivariant", "coord_hidden")


def load_source(name_or_path: str) -> EGNNPotential:
    """A bundled model name or a checkpoint folder, as a float64 EGNN."""
    from atomsim.potentials import load_potential

    try:
        src = load_potential(name_or_path)
    except ValueError as exc:
        raise ValueError(f"init_from: {exc}") from None
    if not isinstance(src, EGNNPotential):
        raise ValueError(f"init_from: {name_or_path!r} is not an EGNN checkpoint (got {type(src).__name__})")
    return src.double()


@torch.no_grad()
def warm_start(model: EGNNPotential, source: EGNNPotential) -> dict:
    """Copy ``source`` into ``model`` (in place, function-preserving); returns what was grown."""
    cs, cm = source.config, model.config
    for key in MUST_MATCH:
        if getattr(cs, key) != getattr(cm, key):
            raise ValueError(
                f"init_from: model.{key} is {getattr(cm, key)!r} but the source model has {getattr(cs, key)!r}; "
                f"set model.{key}: {getattr(cs, key)!r} (only n_rbf, depth and the species may grow)")
    if cm.n_rbf < cs.n_rbf or cm.depth < cs.depth:
        raise ValueError(f"init_from: model.n_rbf/depth ({cm.n_rbf}/{cm.depth}) must be at least the source's "
                         f"({cs.n_rbf}/{cs.depth}); a model cannot shrink and keep its function")
    if cs.equivariant and cm.depth != cs.depth:
        raise ValueError("init_from: an equivariant model cannot grow in depth (its last layer moves no "
                         f"coordinates); set model.depth: {cs.depth}")
    dtype = model.dtype
    # species: copy rows by atomic number; unknown ones get the mean embedding
    src_row = {z: k for k, z in enumerate(cs.species)}
    emb = model.embedding.weight
    mean = source.embedding.weight.mean(0).to(dtype)
    new_species = []
    for k, z in enumerate(cm.species):
        if z in src_row:
            emb[k] = source.embedding.weight[src_row[z]].to(dtype)
            model.species_energy[k] = source.species_energy[src_row[z]]
        else:
            emb[k] = mean
            new_species.append(z)
    model.energy_scale.copy_(source.energy_scale)
    # layers: copy the source's, pad the radial weights; extra layers start as the identity
    for layer_m, layer_s in zip(model.layers, source.layers):
        sd_s = layer_s.state_dict()
        for name, p in layer_m.state_dict().items():
            q = sd_s[name]
            if name.endswith("w_rbf"):
                p.zero_()
                p[: q.shape[0]] = q.to(dtype)
            else:
                p.copy_(q.to(dtype))
    for layer in list(model.layers)[cs.depth:]:
        last = layer.node_mlp[-1]
        last.weight.zero_()
        last.bias.zero_()
    model.readout.load_state_dict({k: v.to(dtype) for k, v in source.readout.state_dict().items()})
    return {"source_n_rbf": cs.n_rbf, "source_depth": cs.depth, "new_species": new_species}
