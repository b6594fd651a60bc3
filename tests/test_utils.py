import pytest
import torch

import bgcn
from bgcn.utils import check_k, check_positive, check_tensor


def test_get_device_auto_matches_cuda_availability():
    dev = bgcn.get_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert bgcn.get_device(None) == dev
    assert bgcn.get_device("cpu").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_get_device_cuda_without_cuda_is_clear():
    with pytest.raises(ValueError, match="CUDA is not available"):
        bgcn.get_device("cuda")


def test_get_device_bad():
    with pytest.raises(ValueError, match="device="):
        bgcn.get_device("gpu0")
    with pytest.raises(TypeError, match="device"):
        bgcn.get_device(3)


def test_seed_everything_reproducible():
    bgcn.seed_everything(5)
    a = torch.randn(3)
    g = bgcn.seed_everything(5)
    b = torch.randn(3)
    assert torch.equal(a, b)
    assert torch.equal(torch.randn(2, generator=g), torch.randn(2, generator=torch.Generator().manual_seed(5)))


def test_checks():
    assert check_k(3, 5) == 3
    with pytest.raises(ValueError, match="choose 1 <= k <= 4"):
        check_k(5, 5, exclude_self=True)
    with pytest.raises(ValueError, match="lam"):
        check_positive(-1, "lam")
    with pytest.raises(ValueError, match="features must have 2"):
        check_tensor(torch.zeros(3), "features", ndim=2)
