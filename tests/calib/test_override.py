"""The public hooks the diagnostics in research/ use instead of patching the product.

``Quantizer.override`` (set and restored by ``compsrt.quant.compress.overriding``) swaps a
quantizer's fake quantization for a function of the same input, on every path (weights,
activations, attention operands, the DC coefficient, pruned weights, the bound search);
``calibrate(student=...)`` calibrates a compressed model the caller changed first.
"""
from __future__ import annotations

import copy

import pytest
import torch

from compsrt.calib.calibrate import calibrate
from compsrt.calib.methods import method_config
from compsrt.config import CalibConfig, QuantConfig
from compsrt.kernels import fake_quant
from compsrt.quant.compress import compress_, overriding, quant_parameters, set_calibrating
from compsrt.quant.qmodules import ActQuantizer, WeightQuantizer, quantizers
from test_calibrate import fit_tiny_model, quantized, smooth_images, tiny_batch


@pytest.fixture(scope="module")
def fp_model():
    return fit_tiny_model()


@pytest.fixture(scope="module")
def batch():
    return tiny_batch()


def normal(q, t, dc_dim):
    """What a quantizer does without an override, written from the public pieces."""
    return fake_quant(t, q.lower, q.upper, q.bits, *q.extras(), dc_dim=dc_dim)


CONFIGS = {
    "deploy": QuantConfig(bits=3),
    "deploy, no exact DC": QuantConfig(bits=3, exact_dc=False),
    "official": QuantConfig(bits=3, rotation="official"),
    "2dquant": method_config("2dquant", 3),
    "deploy, pruned": QuantConfig(bits=3, prune=0.4),
    "official, pruned": QuantConfig(bits=3, rotation="official", prune=0.4),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_an_override_doing_the_normal_thing_changes_nothing(fp_model, batch, name):
    """The override receives exactly what the quantizer would fake-quantize (its domain, the
    DC axis, the quantized part of a pruned weight): re-doing the normal thing is bit for bit
    the model without it, and every quantizer is reached once per forward."""
    m = quantized(fp_model, CONFIGS[name], batch)
    with torch.no_grad():
        want = m(batch)
    seen = []

    def counting(q, t, dc_dim):
        seen.append(q)
        return normal(q, t, dc_dim)

    with torch.no_grad(), overriding(m, counting):
        got = m(batch)
    assert torch.equal(got, want)
    assert sorted(map(id, seen)) == sorted(map(id, quantizers(m)))


@pytest.mark.parametrize("name", ["deploy", "official", "2dquant"])
def test_passing_every_tensor_through_is_the_fp_model(fp_model, batch, name):
    """Unquantized everywhere (the rotations are orthonormal): the FP model's output."""
    m = quantized(fp_model, CONFIGS[name], batch)
    with torch.no_grad(), overriding(m, lambda q, t, dc_dim: t):
        out = m(batch)
    with torch.no_grad():
        torch.testing.assert_close(out, fp_model(batch), rtol=1e-4, atol=1e-5)


def test_a_pruned_weight_stays_pruned_under_an_override(fp_model, batch):
    m = quantized(fp_model, CONFIGS["deploy, pruned"], batch)
    wq = next(q for q in quantizers(m) if isinstance(q, WeightQuantizer))
    with torch.no_grad(), overriding([wq], lambda q, t, dc_dim: t + 1.0):
        w = wq()[:, 1:]
    assert torch.all(w[~wq.mask] == 0) and torch.all(w[wq.mask] != 0)


def test_overriding_some_quantizers_restores_what_they_had(fp_model, batch):
    m = quantized(fp_model, CONFIGS["deploy"], batch)
    acts = [q for q in quantizers(m) if isinstance(q, ActQuantizer)]
    marker = lambda q, t, dc_dim: normal(q, t, dc_dim)  # noqa: E731
    with overriding(acts[:2], marker) as qs:
        assert qs == acts[:2] and all(q.override is marker for q in acts[:2])
        assert all(q.override is None for q in quantizers(m) if q not in acts[:2])
        with pytest.raises(RuntimeError), overriding(m, lambda q, t, dc_dim: t):
            raise RuntimeError("inside")
        assert all(q.override is marker for q in acts[:2])  # the inner block gave them theirs back
    assert all(q.override is None for q in quantizers(m))


def test_the_override_sees_the_searched_bounds_while_calibrating(fp_model, batch):
    """During DOBI the bound search has run on the tensor before the override gets it."""
    m = compress_(copy.deepcopy(fp_model), CONFIGS["deploy"])
    spans = []

    def after_search(q, t, dc_dim):
        spans.append(float(q.upper - q.lower))
        return normal(q, t, dc_dim)

    set_calibrating(m, lambda t, bits, one_sided=False: (-0.5, 0.25))
    with torch.no_grad(), overriding(m, after_search):
        m(batch)
    set_calibrating(m, None)
    assert len(spans) == len(quantizers(m)) and set(spans) == {0.75}


def test_calibrate_a_given_student(fp_model):
    """student=compress_(copy of fp, quant) is what calibrate() does itself (bit for bit); one
    with frozen weight quantizers trains only the others; another config is refused."""
    pairs = smooth_images(4, 64, 3)
    cfg = CalibConfig(iters=3, batch=1, patch=16, calib_batch=1, val_every=3, val_patches=1)
    quant = QuantConfig(bits=3)
    run = lambda **kw: calibrate(fp_model, pairs[1:], pairs[:1], quant, cfg, progress=False, **kw)  # noqa: E731
    plain, rep = run()
    given, rep_given = run(student=compress_(copy.deepcopy(fp_model), quant))
    assert rep_given.history == rep.history
    assert all(torch.equal(a, b) for a, b in zip(quant_parameters(plain), quant_parameters(given)))

    student = compress_(copy.deepcopy(fp_model), quant)
    for q in quantizers(student):
        if isinstance(q, WeightQuantizer):
            q.requires_grad_(False)
    dobi_only = calibrate(fp_model, pairs[1:], pairs[:1], quant, CalibConfig(**{**cfg.__dict__, "iters": 0}),
                          progress=False, student=compress_(copy.deepcopy(fp_model), quant))[0]
    frozen, _ = run(student=student)
    n_act = sum(isinstance(q, ActQuantizer) for q in quantizers(frozen))
    assert len(quant_parameters(frozen)) == 4 * n_act   # what the optimizer trained
    for a, b in zip(quantizers(frozen), quantizers(dobi_only)):
        if isinstance(a, WeightQuantizer):   # kept at their DOBI start
            assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper)
    with pytest.raises(ValueError, match="QuantConfig"):
        run(student=compress_(copy.deepcopy(fp_model), QuantConfig(bits=4)))
