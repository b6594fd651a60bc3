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


def test_json_safe_gives_standard_json():
    import json

    import numpy as np

    from bgcn.utils import json_safe

    obj = {"a": [float("nan"), np.float32(1.5), np.int64(3), (1, float("inf"))], 2: {"b": -float("inf")}}
    out = json_safe(obj)
    assert out == {"a": [None, 1.5, 3, [1, None]], "2": {"b": None}}
    assert type(out["a"][2]) is int
    json.dumps(out, allow_nan=False)  # raises ValueError if any NaN/Inf survived


def test_cli_number_arguments():
    import argparse

    from bgcn import cli

    assert cli._positive_int("3") == 3 and cli._nonneg_int("0") == 0 and cli._nonneg_float("0") == 0.0
    for fn, text, msg in [(cli._positive_int, "0", "> 0"), (cli._positive_int, "1.5", "not an integer"),
                          (cli._nonneg_int, "-1", ">= 0"), (cli._positive_float, "inf", "finite number > 0"),
                          (cli._nonneg_float, "nan", "finite"), (cli._positive_float, "x", "not a number")]:
        with pytest.raises(argparse.ArgumentTypeError, match=msg):
            fn(text)
