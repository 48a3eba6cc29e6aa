"""The packed runtime on a GPU (skipped without one): the same model as on the CPU."""
from __future__ import annotations

import pytest
import torch

from compsrt.config import QuantConfig
from compsrt.quant.pack import pack_model, save_packed
from compsrt.runtime import PackedLinear, load_packed

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("cfg", [QuantConfig(bits=4), QuantConfig(bits=2, prune=0.4),
                                 QuantConfig(bits=4, rotation="none", decompose=False)],
                         ids=["w4", "w2-p40", "2dquant-w4"])
def test_cuda_runtime_matches_the_cpu_runtime(make_calibrated, cfg, tmp_path):
    m = make_calibrated(cfg)
    t, h = pack_model(m, "fp32")
    save_packed(t, h, tmp_path / "p.safetensors")
    cpu = load_packed(tmp_path / "p.safetensors")
    gpu = load_packed(tmp_path / "p.safetensors", device="cuda")
    uses = {mod.use_cuda_kernel for mod in gpu.modules() if isinstance(mod, PackedLinear)}
    print(f"csrc kernel in use: {uses}")
    x = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, b = cpu(x).clamp(0, 1), gpu(x.cuda()).clamp(0, 1).cpu()
    mse = torch.mean((a - b) ** 2).item()
    assert mse == 0 or 10 * torch.log10(torch.tensor(1 / mse)).item() > 60


def test_bundled_w4_on_cuda_matches_cpu():
    from compsrt.load import bundled_model, bundled_models, load_model

    if "swinir_light_x2_w4" not in bundled_models():
        pytest.skip("swinir_light_x2_w4 is not bundled")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = load_model(bundled_model("swinir_light_x2_w4"), 2)(x).clamp(0, 1)
        b = load_model(bundled_model("swinir_light_x2_w4"), 2, device="cuda")(x.cuda()).clamp(0, 1).cpu()
    mse = torch.mean((a - b) ** 2).item()
    assert mse == 0 or 10 * torch.log10(torch.tensor(1 / mse)).item() > 55
