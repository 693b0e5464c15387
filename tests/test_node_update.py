"""The recomputed EGNN node update (potentials/node_update.py) against the plain module path."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from atomsim.potentials.node_update import node_update


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_values_gradients_and_second_derivatives_equal_the_module_path(dtype):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 8), nn.SiLU(), nn.Linear(8, 8)).to(dtype)
    h = torch.randn(20, 8, dtype=dtype, requires_grad=True)
    x = torch.randn(20, 8, dtype=dtype, requires_grad=True)
    w = torch.randn(20, 8, dtype=dtype)
    res = []
    for f in (lambda h, agg: node_update(h, agg, mlp), lambda h, agg: h + mlp(torch.cat([h, agg], -1))):
        agg = x * 2 + h.sin()  # agg depends on h, as the edge messages do
        out = f(h, agg)
        inputs = [h, x, *mlp.parameters()]
        first = torch.autograd.grad((out * w).sum(), inputs, create_graph=True)  # a loss on forces
        second = torch.autograd.grad(sum((g**2).sum() for g in first), inputs, allow_unused=True)
        res.append((out.detach(), [g.detach() for g in first], second))
    (o1, g1, s1), (o2, g2, s2) = res
    assert torch.equal(o1, o2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0)
    for a, b in zip(s1, s2):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10 if dtype == torch.float64 else 1e-5, atol=1e-12)


def test_no_grad_path_and_md_style_gradient_only_wrt_inputs():
    mlp = nn.Sequential(nn.Linear(8, 4), nn.SiLU(), nn.Linear(4, 4)).double()
    h = torch.randn(5, 4, dtype=torch.float64)
    agg = torch.randn(5, 4, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(node_update(h, agg, mlp), h + mlp(torch.cat([h, agg], -1)))
    hg = h.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(node_update(hg, agg, mlp).sum(), hg)  # weights not asked for (MD)
    hr = h.clone().requires_grad_(True)
    (r,) = torch.autograd.grad((hr + mlp(torch.cat([hr, agg], -1))).sum(), hr)
    torch.testing.assert_close(g, r, rtol=1e-13, atol=0)
