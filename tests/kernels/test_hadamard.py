"""hadamard_matrix / hadamard_ref against dense maths (float64 where identities are exact)."""
import pytest
import scipy.linalg
import torch
from torch.nn.functional import pad

from compsrt.kernels.hadamard import hadamard, hadamard_matrix, hadamard_ref, next_pow2

POWERS = [2 ** i for i in range(9)]  # 1 .. 256


@pytest.mark.parametrize("n", POWERS)
def test_matrix_is_symmetric_orthonormal_sylvester(n):
    h = hadamard_matrix(n, torch.float64)
    torch.testing.assert_close(h @ h, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(h, h.T, atol=0, rtol=0)
    sylvester = torch.from_numpy(scipy.linalg.hadamard(n).astype("float64")) / n ** 0.5
    torch.testing.assert_close(h, sylvester, atol=1e-15, rtol=0)


@pytest.mark.parametrize("n", [0, 3, 6, 60, 100])
def test_matrix_rejects_non_powers_of_two(n):
    with pytest.raises(ValueError, match="power of two"):
        hadamard_matrix(n)


def test_next_pow2():
    assert [next_pow2(c) for c in (1, 2, 3, 10, 16, 60, 64, 120, 180)] == [1, 2, 4, 16, 16, 64, 64, 128, 256]


@pytest.mark.parametrize("c", [10, 60, 64, 120, 180])
def test_ref_last_dim_is_padded_matmul(c):
    g = torch.Generator().manual_seed(c)
    x = torch.randn(3, 5, c, dtype=torch.float64, generator=g)
    n = next_pow2(c)
    want = pad(x, (0, n - c)) @ hadamard_matrix(n, torch.float64)
    got = hadamard_ref(x)
    assert got.shape == (3, 5, n)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    assert hadamard(x).equal(got)


@pytest.mark.parametrize("tokens", [49, 64])
def test_ref_second_to_last_dim(tokens):
    g = torch.Generator().manual_seed(tokens)
    v = torch.randn(2, 6, tokens, 10, dtype=torch.float64, generator=g)
    n = next_pow2(tokens)
    want = hadamard_matrix(n, torch.float64) @ pad(v, (0, 0, 0, n - tokens))
    got = hadamard_ref(v, dim=-2)
    assert got.shape == (2, 6, n, 10)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    torch.testing.assert_close(hadamard_ref(v, dim=2), got, atol=0, rtol=0)  # positive index too


@pytest.mark.parametrize("c", [10, 60, 120])
def test_rotating_both_operands_keeps_the_product(c):
    """(xH)(WH)^T = x W^T: the deployable form needs no inverse transform."""
    g = torch.Generator().manual_seed(c)
    x = torch.randn(7, 64, c, dtype=torch.float64, generator=g)
    w = torch.randn(2 * c, c, dtype=torch.float64, generator=g)
    torch.testing.assert_close(hadamard_ref(x) @ hadamard_ref(w).T, x @ w.T, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("tokens", [49, 64])
def test_attn_v_identity_along_tokens(tokens):
    """attn @ v: rotate attn's last axis and v's token axis (dim=-2); the product is unchanged."""
    g = torch.Generator().manual_seed(tokens)
    attn = torch.softmax(torch.randn(3, 6, tokens, tokens, dtype=torch.float64, generator=g), -1)
    v = torch.randn(3, 6, tokens, 10, dtype=torch.float64, generator=g)
    torch.testing.assert_close(hadamard_ref(attn) @ hadamard_ref(v, dim=-2), attn @ v, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("dim", [-1, -2])
def test_gradcheck_float64(dim):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 10, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: hadamard_ref(t, dim), (x,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_rotated_in_fp32(dtype):
    x = torch.randn(64, 60, generator=torch.Generator().manual_seed(0)).to(dtype)
    got = hadamard_ref(x)
    assert got.dtype == dtype
    assert got.equal(hadamard_ref(x.float()).to(dtype))


def test_rejects_other_dims():
    with pytest.raises(ValueError, match="last or second-to-last"):
        hadamard_ref(torch.zeros(2, 3, 4), dim=0)
