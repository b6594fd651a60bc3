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


@pytest.mark.parametrize("asked", ["cuda:7", torch.device("cuda", 7), "cuda:1"])
def test_get_device_missing_ordinal_is_one_line_error(monkeypatch, asked):
    # a machine with one GPU: asking for a higher ordinal names device= and the CUDA count
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device=.*1 CUDA device\(s\) \(cuda:0 \.\. cuda:0\)") as e:
        bgcn.get_device(asked)
    assert "\n" not in str(e.value)
    # the ordinal that exists is accepted
    assert bgcn.get_device("cuda:0") == torch.device("cuda", 0)
    assert bgcn.get_device("cuda").type == "cuda"


def test_get_device_mps_absent_names_what_is_available(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"device='mps'.*MPS.*2 CUDA device\(s\)"):
        bgcn.get_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device='mps'.*no CUDA.*'cpu'"):
        bgcn.get_device("mps")


@pytest.mark.parametrize("seed", [2**64, 2**70, -1, -(2**63)])
def test_seed_out_of_range_is_clear(seed):
    from bgcn.utils import check_seed

    with pytest.raises(ValueError, match=r"seed=.*out of range.*2\*\*64"):
        bgcn.seed_everything(seed)
    with pytest.raises(ValueError, match="seed="):
        check_seed(seed)


def test_seed_extremes_in_range_work():
    import numpy as np

    from bgcn.utils import check_seed

    top = 2**64 - 1
    g = bgcn.seed_everything(top)
    assert g.initial_seed() == top
    # numpy gets the seed modulo 2**32, the same draws as seeding numpy with it directly
    a = np.random.rand(3)
    np.random.seed(top % 2**32)
    assert np.array_equal(a, np.random.rand(3))
    assert check_seed(np.int64(7)) == 7
    with pytest.raises(TypeError, match="seed must be an int"):
        check_seed(True)


def test_versions_lives_in_utils_and_reports_the_stack():
    import platform

    from bgcn.utils import versions

    v = versions()
    assert v["torch"] == torch.__version__ and v["bgcn"] == bgcn.__version__
    assert v["python"] == platform.python_version()
    assert v["torch_threads"] == torch.get_num_threads()
    import torch_geometric

    assert v["torch_geometric"] == torch_geometric.__version__


# ---------------------------------------------------------------------------------------------
# CUDA paths (issue 9 item 8): every helper that makes a tensor of its own puts it on the data's
# device. These run where a GPU is; /work/shared/gpu/smoke.py runs them on the GPU too.
# ---------------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("upstream", ["random", "ones", "tensor"])
def test_temperature_helpers_run_on_cuda_and_match_cpu(upstream):
    from bgcn.temperature import gradient_norm_vs_tau, soft_topk_gradient, suggest_tau, temperature_sweep

    g = torch.Generator().manual_seed(0)
    S = bgcn.cosine_similarity(torch.randn(40, 6, generator=g, dtype=torch.float64))
    up = torch.randn(12, 3, generator=g, dtype=torch.float64) if upstream == "tensor" else upstream
    taus = [0.05, 0.3, 2.0]
    cpu = gradient_norm_vs_tau(S, taus, k=3, upstream=up, rows=12)
    gpu = gradient_norm_vs_tau(S.cuda(), taus, k=3, upstream=up.cuda() if upstream == "tensor" else up, rows=12)
    for key in cpu:
        assert gpu[key].device.type == "cpu" and gpu[key].dtype == torch.float64, key
        torch.testing.assert_close(gpu[key], cpu[key], rtol=1e-9, atol=1e-12, msg=key)
    sw_cpu, sw_gpu = temperature_sweep(S, taus, k=3), temperature_sweep(S.cuda(), taus, k=3)
    for key in ("tau", "entropy", "effective", "topk_mass"):
        assert sw_gpu[key].device.type == "cpu"
        torch.testing.assert_close(sw_gpu[key], sw_cpu[key], rtol=1e-9, atol=1e-12, msg=key)
    U = torch.randn(40, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(soft_topk_gradient(S.cuda(), U, 3, 0.3).cpu(), soft_topk_gradient(S, U, 3, 0.3),
                               rtol=1e-9, atol=1e-12)
    assert abs(suggest_tau(S.cuda(), 3) - suggest_tau(S, 3)) < 1e-9


@cuda
def test_gcn_and_similarity_on_cuda_with_other_dtypes():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 5, generator=g, dtype=torch.float64)
    idx = bgcn.knn_indices(x.cuda(), 4, chunk_size=7)
    assert idx.device.type == "cuda"
    assert torch.equal(idx.cpu(), bgcn.knn_indices(x, 4))
    torch.manual_seed(0)
    m = bgcn.GCN(5, 8, 3).eval()
    kg = bgcn.knn_graph(x.float(), 4)
    ref = m(x.float(), kg.edge_index, kg.edge_weight)
    out = m.cuda()(x.cuda(), kg.edge_index.cuda(), kg.edge_weight.cuda())
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="x is on cpu but the GCN's parameters are on cuda"):
        m(x.float(), kg.edge_index, kg.edge_weight)


def test_command_line_carries_no_machine_path(tmp_path):
    from bgcn.utils import command_line

    assert command_line(["/any/where/bgcn/__main__.py", "experiment", "--out", "a b"]) == \
        "python -m bgcn experiment --out 'a b'"
    assert command_line([str(tmp_path / "x.py"), "-q"]).endswith("x.py -q")
    assert not command_line([str(tmp_path / "x.py")]).startswith("/")


def test_committed_results_carry_no_absolute_path():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "results"
    for path in root.rglob("*.json"):
        text = path.read_text()
        for bad in ("/work/", "/home/", "/tmp/", "/root/"):
            assert bad not in text, f"{path.relative_to(root)} records a machine path ({bad})"
