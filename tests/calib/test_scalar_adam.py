"""ScalarAdam and project_quantizers_: the batched bookkeeping of a finetuning step must do
exactly what torch.optim.Adam with a group per rate and Quantizer.project_ one by one do."""
from __future__ import annotations

import math

import pytest
import torch

from compsrt.calib.scalar_adam import ScalarAdam
from compsrt.config import QuantConfig
from compsrt.quant.qmodules import Quantizer, project_quantizers_


def _scalars(n: int, seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn((), generator=g)) for _ in range(n)]


def _loss(ps: list[torch.Tensor], it: int) -> torch.Tensor:
    """A different, non-trivial gradient for every parameter and step."""
    return sum(torch.sin((i + 1) * p + it) * (i % 3 + 0.5) for i, p in enumerate(ps))


@pytest.mark.parametrize("n", [7, 1000])   # vectorized loops and their scalar tails
def test_matches_torch_adam_with_a_group_per_rate_bit_for_bit(n):
    """On the CPU the same bits as torch.optim.Adam (whose results the documented runs are)."""
    rates = [1e-2 * (i % 13 + 1) for i in range(n)]
    ours, ref = _scalars(n, 0), _scalars(n, 0)
    opt = ScalarAdam(ours, rates, betas=(0.9, 0.99))
    topt = torch.optim.Adam([{"params": [p], "lr": r} for p, r in zip(ref, rates)], betas=(0.9, 0.99))
    for it in range(12):
        scale = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * it / 12))
        opt.scale = scale
        for g, r in zip(topt.param_groups, rates):
            g["lr"] = r * scale
        for o, ps in ((opt, ours), (topt, ref)):
            o.zero_grad()
            _loss(ps, it).backward()
            o.step()
    assert torch.equal(torch.stack([p.detach() for p in ours]), torch.stack([p.detach() for p in ref]))
    assert not torch.equal(torch.stack([p.detach() for p in ours]), torch.stack([p.detach() for p in _scalars(n, 0)]))


def test_state_round_trip_continues_identically():
    a, b = _scalars(5, 1), _scalars(5, 1)
    oa = ScalarAdam(a, [0.1] * 5)
    for it in range(3):
        oa.zero_grad()
        _loss(a, it).backward()
        oa.step()
    with torch.no_grad():
        for p, q in zip(b, a):
            p.copy_(q)
    ob = ScalarAdam(b, [0.0] * 5)
    ob.load_state_tensors(oa.state_tensors())
    assert torch.equal(ob.base_lrs, oa.base_lrs) and ob.steps == 3
    for o, ps in ((oa, a), (ob, b)):
        o.zero_grad()
        _loss(ps, 3).backward()
        o.step()
    assert torch.equal(torch.stack([p.detach() for p in a]), torch.stack([p.detach() for p in b]))
    with pytest.raises(ValueError, match="5 parameters"):
        ScalarAdam(_scalars(4, 0), [0.1] * 4).load_state_tensors(oa.state_tensors())


def test_a_missing_gradient_counts_as_zero():
    ps = _scalars(2, 2)
    before = [p.item() for p in ps]
    opt = ScalarAdam(ps, [0.1, 0.1])
    (ps[0] * 3).backward()   # ps[1] gets no gradient
    opt.step()
    assert ps[1].item() == before[1] and ps[0].item() != before[0]


def test_project_quantizers_matches_project_one_by_one():
    qs, ref = [], []
    g = torch.Generator().manual_seed(3)
    for i in range(12):
        bits = (2, 3, 4, 8)[i % 4]
        pair = [Quantizer(QuantConfig(bits=bits)) for _ in range(2)]
        lo, hi = torch.randn(2, generator=g).tolist()
        s2 = float(torch.randn((), generator=g)) * (10.0 if i % 3 == 0 else 1e-3)   # some steps go negative
        with torch.no_grad():
            for q in pair:
                q.lower.fill_(lo)
                q.upper.fill_(hi if i % 5 else lo - 1.0)   # some u < l
                q.step_extra.fill_(s2)
        qs.append(pair[0])
        ref.append(pair[1])
    project_quantizers_(qs)
    for q in ref:
        q.project_()
    for a, b in zip(qs, ref):
        for name in ("lower", "upper", "step_extra", "zero_extra"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert any(q.step_extra.item() != 0 for q in ref) and all(q.step().item() > 0 for q in qs)
