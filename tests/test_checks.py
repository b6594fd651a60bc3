"""bgcn._checks: the one home of argument checks.

Each check accepts good values (NumPy scalars included where a number is asked for), refuses
``bool`` where an int or a number is asked for and NaN/Inf where a finite number is, and its error
is one line that names the argument, the valid values and a fix.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import bgcn.utils as utils
from bgcn import _checks as C
from bgcn._checks import (MAX_LR, ArgumentTypeError, check_bool, check_choice, check_int, check_lr, check_mask,
                          check_number, check_optional_positive)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


def test_utils_reexports_the_same_objects():
    for name in ("check_tensor", "check_k", "check_tau", "check_positive", "check_finite", "check_seed"):
        assert getattr(utils, name) is getattr(C, name), name
        assert name in utils.__all__
    assert set(C.__all__) <= set(dir(C))


def test_argument_type_error_is_both_kinds():
    assert issubclass(ArgumentTypeError, TypeError) and issubclass(ArgumentTypeError, ValueError)


# -- check_int ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("v", [0, 1, 7, np.int64(5), np.int32(3), np.uint8(2)])
def test_check_int_accepts_ints_and_numpy_ints(v):
    out = check_int(v, "epochs", 0)
    assert out == int(v) and type(out) is int


@pytest.mark.parametrize("v", [True, False, np.bool_(True), 1.0, 2.5, "3", None, np.float64(2.0), [1]])
def test_check_int_refuses_non_ints_with_one_line(v):
    with pytest.raises(ArgumentTypeError) as ei:
        check_int(v, "epochs", 1)
    msg = _one_line(ei)
    assert msg.startswith("epochs must be an int >= 1") and "epochs=1" in msg


def test_check_int_bounds_and_message():
    with pytest.raises(ValueError, match=r"^epochs=0 must be an int >= 1; pass e\.g\. epochs=1$"):
        check_int(0, "epochs", 1)
    with pytest.raises(ValueError, match=r"rank=4 must be an int >= 0 and <= 3"):
        check_int(4, "rank", 0, 3)
    with pytest.raises(ValueError, match=r"x=9 must be an int <= 8"):
        check_int(9, "x", maximum=8)
    assert check_int(-5, "x") == -5
    assert check_int(3, "x", 3, 3) == 3
    # the type error is still a ValueError (bank/config raised ValueError for a float) and a TypeError
    with pytest.raises(ValueError):
        check_int(1.5, "batch_size", 1)
    with pytest.raises(TypeError):
        check_int(1.5, "batch_size", 1)


def test_check_int_keeps_the_private_helpers_messages():
    # bank._check_int / config._int: "NAME=V must be an int >= LO"
    with pytest.raises(ValueError, match=r"TrainConfig\.epochs=0 must be an int >= 1"):
        check_int(0, "TrainConfig.epochs", 1)
    # estimators._check_int / data._check_int / topk: "NAME must be an int"
    with pytest.raises(TypeError, match="k must be an int"):
        check_int(2.0, "k", 1)


# -- check_number / check_lr -------------------------------------------------------------------------
@pytest.mark.parametrize("v", [0.5, 1, np.float32(0.25), np.float64(0.5), np.int64(1), torch.tensor(0.5)])
def test_check_number_accepts_numbers(v):
    out = check_number(v, "momentum", 0, 1)
    assert out == pytest.approx(float(v), abs=0) and type(out) is float


@pytest.mark.parametrize("v", [math.nan, math.inf, -math.inf, np.float64("nan"), np.float32("inf")])
def test_check_number_refuses_nan_and_inf(v):
    with pytest.raises(ValueError) as ei:
        check_number(v, "weight_decay", 0)
    msg = _one_line(ei)
    assert msg.startswith("weight_decay=") and "finite number >= 0" in msg and "NaN and Inf" in msg


@pytest.mark.parametrize("v", [True, np.bool_(False), "0.1", None, torch.tensor([0.1, 0.2]), torch.tensor(True)])
def test_check_number_refuses_non_numbers(v):
    with pytest.raises(ArgumentTypeError) as ei:
        check_number(v, "lr", 0)
    assert _one_line(ei).startswith("lr must be a finite number >= 0")


def test_check_number_open_and_closed_bounds():
    assert check_number(0.0, "dropout", 0, 1, open_max=True) == 0.0
    with pytest.raises(ValueError, match=r"dropout=1 must be a finite number >= 0 and < 1"):
        check_number(1.0, "dropout", 0, 1, open_max=True)
    with pytest.raises(ValueError, match=r"tau=0 must be a finite number > 0"):
        check_number(0, "tau", 0, open_min=True)
    assert check_number(1.0, "m", 0, 1) == 1.0
    with pytest.raises(ValueError, match=r"m=1\.5 must be a finite number >= 0 and <= 1; choose"):
        check_number(1.5, "m", 0, 1)
    assert check_number(-1e300, "x") == -1e300


def test_check_lr_has_an_upper_bound():
    assert check_lr(0, "lr_gcn") == 0.0
    assert check_lr(np.float64(1e-2), "lr_gcn") == 1e-2
    assert check_lr(MAX_LR, "lr_gcn") == MAX_LR
    with pytest.raises(ValueError) as ei:
        check_lr(1e300, "lr_gcn")
    msg = _one_line(ei)
    assert "lr_gcn=1e+300 is too large" in msg and f"[0, {MAX_LR:g}]" in msg and "lr_gcn=1e-3" in msg
    for bad in (-1e-3, math.nan, math.inf):
        with pytest.raises(ValueError, match="lr_backbone="):
            check_lr(bad, "lr_backbone")
    with pytest.raises(TypeError, match="lr must be a finite number"):
        check_lr(True)


# -- check_bool / check_choice -----------------------------------------------------------------------
def test_check_bool():
    assert check_bool(True, "resume") is True and check_bool(np.bool_(False), "resume") is False
    assert check_bool(None, "progress", optional=True) is None
    for bad in (0, 1, "no", None, 1.0):
        with pytest.raises(ArgumentTypeError) as ei:
            check_bool(bad, "resume")
        msg = _one_line(ei)
        assert msg.startswith("resume must be True or False") and "resume=True" in msg
    with pytest.raises(TypeError, match="progress must be True, False or None"):
        check_bool("yes", "progress", optional=True)


def test_check_choice():
    assert check_choice("node", "reinforce_reward", ("node", "graph")) == "node"
    with pytest.raises(ValueError) as ei:
        check_choice("edge", "reinforce_reward", ("node", "graph"))
    assert _one_line(ei) == "reinforce_reward='edge' is not valid: use one of ['node', 'graph']"
    with pytest.raises(ValueError, match="use one of"):
        check_choice(["node"], "x", ("node",))  # unhashable: not a choice, no TypeError from `in`
    with pytest.raises(ValueError):
        check_choice(True, "x", (1, 2))  # True == 1 would let a bool through if choices were ints
    check_choice(1, "x", (1, 2))


def test_check_optional_positive():
    assert check_optional_positive(None, "max_grad_norm") is None
    assert check_optional_positive(np.float32(2.0), "max_grad_norm") == 2.0
    with pytest.raises(ValueError, match=r"max_grad_norm=0\.0 must be a finite number > 0"):
        check_optional_positive(0, "max_grad_norm")
    with pytest.raises(ValueError):
        check_optional_positive(math.nan, "max_grad_norm")


# -- check_mask --------------------------------------------------------------------------------------
def test_check_mask():
    m = torch.tensor([True, False, True])
    assert check_mask(m, 3, "train_mask") is m
    assert check_mask(None, 3, "val_mask") is None
    assert check_mask(m, 3, "train_mask", device="cpu", required=True).equal(m)
    with pytest.raises(ValueError, match="train_mask is required"):
        check_mask(None, 3, "train_mask", required=True)
    with pytest.raises(TypeError, match=r"train_mask must be a bool torch\.Tensor of shape \(N,\), got torch\.int64"):
        check_mask(torch.tensor([1, 0, 1]), 3, "train_mask")
    with pytest.raises(ValueError, match=r"train_mask has shape \(2,\) but there are N=3 images; it must be \(3,\)"):
        check_mask(m[:2], 3, "train_mask")
    with pytest.raises(ValueError, match="train_mask selects no node"):
        check_mask(torch.zeros(3, dtype=torch.bool), 3, "train_mask", required=True)
    with pytest.raises(ArgumentTypeError) as ei:
        check_mask([True, False, True], 3, "val_mask")
    _one_line(ei)


# -- the moved checks keep their behaviour (numpy scalars, bool, NaN) --------------------------------
def test_moved_checks_numpy_scalars_bool_nan():
    assert C.check_k(np.int64(3), 5) == 3
    assert C.check_seed(np.uint64(2**63)) == 2**63
    assert C.check_positive(np.float32(0.5), "tau") == 0.5
    for bad in (True, False):
        with pytest.raises(TypeError):
            C.check_k(bad, 5)
        with pytest.raises(TypeError):
            C.check_seed(bad)
        with pytest.raises(TypeError):
            C.check_positive(bad, "tau")
    for bad in (math.nan, math.inf, -1.0, 0.0):
        with pytest.raises(ValueError):
            C.check_tau(bad)
    with pytest.raises(ValueError, match="x contains 1 NaN/Inf"):
        C.check_tensor(torch.tensor([1.0, math.nan]), "x")


def test_optional_and_hint():
    assert check_int(None, "bank_chunk", 1, optional=True) is None
    assert check_number(None, "bank_momentum", 0, 1, open_max=True, optional=True) is None
    with pytest.raises(ValueError) as ei:
        check_int(0, "bank_chunk", 1, optional=True, hint="rows of the bank per block")
    assert _one_line(ei) == "bank_chunk=0 must be None or an int >= 1 (rows of the bank per block); pass e.g. bank_chunk=1"
    with pytest.raises(TypeError, match=r"batch_size must be an int >= 1 \(>= N for one full batch\), got float"):
        check_int(2.0, "batch_size", 1, hint=">= N for one full batch")
    with pytest.raises(ValueError, match=r"noise_rel=-1 must be a finite number >= 0 \(0 switches the noise off\)"):
        check_number(-1, "noise_rel", 0, hint="0 switches the noise off")
    with pytest.raises(ValueError, match=r"bank_momentum=1 must be None or a finite number >= 0 and < 1"):
        check_number(1.0, "bank_momentum", 0, 1, open_max=True, optional=True)


def test_hints_of_bool_and_choice():
    with pytest.raises(TypeError, match=r"^amp must be True or False \(mixed precision on CUDA\), got int 1; pass amp=True"):
        check_bool(1, "amp", hint="mixed precision on CUDA")
    with pytest.raises(ValueError) as ei:
        check_choice(5, "num_classes", (0, 1000), hint="0: features for the GCN, 1000: ImageNet logits")
    assert _one_line(ei) == ("num_classes=5 is not valid: use one of [0, 1000] "
                             "(0: features for the GCN, 1000: ImageNet logits)")


# -- every setting checked once: the replaced private helpers and the experiments' warm-up -----------
def test_chunk_sizes_are_whole_numbers_not_truncated():
    import bgcn.similarity
    # scaling's old _check_chunk turned 2.5 into 2 silently; check_int refuses it
    from bgcn.scaling import chunked_soft_topk, memory_model

    f = torch.randn(6, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"chunk_size must be an int >= 1 \(rows per block\), got float 2\.5"):
        chunked_soft_topk(f, 2, chunk_size=2.5)
    with pytest.raises(TypeError, match="chunk_size"):
        memory_model(100, 8, 5, "chunked_softmax", chunk_size=2.5)
    with pytest.raises(TypeError, match="chunk_size"):
        bgcn.similarity.knn_indices(f, 2, chunk_size=2.5)
    with pytest.raises(TypeError, match="checkpoint must be True or False"):
        chunked_soft_topk(f, 2, checkpoint=1)


def test_former_private_checks_speak_through_checks():
    import bgcn
    import bgcn.gcn_spec
    with pytest.raises(ValueError, match=r"in_channels=0 must be an int >= 1 \(a positive number of channels\)"):
        bgcn.GCN(0, 4, 2)
    with pytest.raises(TypeError, match=r"normalize must be True or False"):
        bgcn.GCN(3, 4, 2, normalize=1)
    with pytest.raises(ValueError, match=r"dropout=1 must be a finite number >= 0 and < 1 \(a probability\)"):
        bgcn.GCN(3, 4, 2, dropout=1.0)
    with pytest.raises(ValueError, match="hid_dim=0 must be an int >= 1"):
        bgcn.gcn_spec.init_gcn2_params(3, 0, 2)
    with pytest.raises(TypeError, match="s must be an int >= 1"):
        bgcn.estimators.sum_of_gamma_noise((2, 3), 2, s=1.5)


def test_a_bad_backbone_option_value_is_not_called_an_unknown_option():
    import bgcn
    with pytest.raises(TypeError, match=r"^in_chans must be an int >= 1") as ei:
        bgcn.create_backbone("pixels", in_chans=1.5)
    assert "does not accept these options" not in str(ei.value)


def test_rank_world_is_one_process_without_a_group():
    from bgcn import distributed as bd

    assert bd.rank_world() == (0, 1)


def test_experiments_let_train_config_decide_the_warmup():
    from bgcn import estimator_experiment as ee
    from bgcn import experiment as ex

    # experiment.py used to cap warmup_epochs at epochs - 1 silently: now TrainConfig refuses it
    with pytest.raises(ValueError, match=r"TrainConfig\.warmup_epochs=2 must be < epochs=2"):
        ex._settings(True, {"epochs": 2}, 10, "cpu", ["end2end_softmax_taudata"])
    cfg, _ = ex._settings(True, {"epochs": 2}, 10, "cpu", ["knn", "frozen"])  # no row trains the backbone
    assert cfg["warmup_epochs"] == 2
    with pytest.raises(ValueError, match=r"TrainConfig\.warmup_epochs=4 must be < epochs=4"):
        ee._settings(True, 1, 4, 4, ["softmax_taudata"], "cpu", None)
    from bgcn.experiments.common import schedule_config

    with pytest.raises(ValueError, match=r"TrainConfig\.lr_gcn=100 is too large"):
        schedule_config({"epochs": 4, "warmup_epochs": 2, "lr_gcn": 100.0}, ["frozen"])
