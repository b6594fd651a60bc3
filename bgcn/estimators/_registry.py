r"""What an estimator is: the :class:`Selection` it returns, its :class:`EstimatorSpec`, and the registry.

An *estimator* turns a row-wise score matrix :math:`S` (N, M) into a :class:`Selection`. Every
registered estimator has one :class:`EstimatorSpec` that says what the rest of the library may do
with it, so that no module keeps its own list of names:

======================  ===============================================================================
flag                    meaning (who reads it)
======================  ===============================================================================
``rowwise``             its weights follow from the k kept similarities of a row by
                        :attr:`EstimatorSpec.row_rule` (:func:`bgcn.topk.row_weights`): the chunked
                        graph (:func:`bgcn.knn_graph` with ``chunk_size``) and the bank engine use it
``needs_normaliser``    the rule also needs the row's log-sum-exp over all N (seed 000's softmax): the
                        bank computes it, the chunked graph of :func:`bgcn.knn_graph` cannot
``needs_dense``         its gradient needs the loss gradient at non-edges: the GCN takes the dense mask
``stochastic``          it samples (takes ``generator``; may carry a ``log_prob`` for a score function)
======================  ===============================================================================

Taught in: chapter 06 (chapters/06_rankings_to_graph_2_gradient.md) and chapter 09 (chapters/09_estimators_1_softmax.md).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import torch


__all__ = ["Selection", "EstimatorSpec", "ESTIMATORS", "ESTIMATOR_SPECS", "register_estimator", "get_estimator",
           "get_spec", "estimator_names", "rowwise_names"]


@dataclass
class Selection:
    """What an estimator returns for a score matrix with N rows and M columns.

    Attributes:
        indices: (N, k) long, the chosen columns of each row, by decreasing score.
        weights: (N, k) float, the weight of each chosen column (differentiable or not).
        dense: (N, M) float or ``None``: a dense mask whose gradient is the estimator's gradient for
            *every* score, chosen or not (selection estimators, chapter 09). ``None`` when the
            estimator only re-weights the hard top-k.

    Shapes:
        - indices, weights: (N, k)
        - dense: (N, M) or None

    Taught in: chapter 06 (chapters/06_rankings_to_graph_2_gradient.md); ``dense`` in chapter 09.
    """

    indices: torch.Tensor
    weights: torch.Tensor
    dense: torch.Tensor | None = None


EstimatorFn = Callable[..., Selection]
RowRule = Callable[[torch.Tensor, float, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class EstimatorSpec:
    r"""One estimator and what the library may do with it (see the module's table of flags).

    Attributes:
        name: the registry key (``bgcn.ESTIMATORS[name]``).
        fn: ``fn(scores, k, tau=1.0, *, exclude_self=False, generator=None, **kw) -> Selection``.
        row_rule: ``row_rule(values, tau, lse) -> weights`` for a row-wise estimator (values (N, k)
            the kept similarities, lse (N,) the row log-normaliser or ``None``), else ``None``.
        needs_normaliser: the row rule needs ``lse`` (a pass over all N per row).
        needs_dense: the gradient needs the dense (N, M) mask in the GCN.
        stochastic: the estimator samples.

    Shapes: none (a description; ``row_rule`` maps (N, k) to (N, k)).

    Taught in: chapter 09 (chapters/09_estimators_1_softmax.md).
    """

    name: str
    fn: EstimatorFn
    row_rule: RowRule | None = None
    needs_normaliser: bool = False
    needs_dense: bool = False
    stochastic: bool = False

    @property
    def rowwise(self) -> bool:
        """Its weights follow from the k kept similarities of a row (and the normaliser, if it needs one)."""
        return self.row_rule is not None

    @property
    def chunkable(self) -> bool:
        """Row-wise without a normaliser: :func:`bgcn.knn_graph` can build it with ``chunk_size``."""
        return self.rowwise and not self.needs_normaliser


#: name -> estimator callable (the public registry, ``bgcn.ESTIMATORS``)
ESTIMATORS: dict[str, EstimatorFn] = {}
#: name -> :class:`EstimatorSpec`
ESTIMATOR_SPECS: dict[str, EstimatorSpec] = {}


def register_estimator(name: str, needs_dense: bool = False, stochastic: bool = False, *,
                       row_rule: RowRule | None = None, needs_normaliser: bool = False):
    """Decorator adding an estimator to :data:`ESTIMATORS` (and its :class:`EstimatorSpec`) under ``name``.

    The decorated callable has the signature
    ``fn(scores, k, tau=1.0, *, exclude_self=False, generator=None, **kw) -> Selection``.
    ``needs_dense=True`` marks estimators whose gradient needs the loss gradient for non-edges too,
    i.e. a dense adjacency path in the GCN; ``stochastic=True`` marks those that sample;
    ``row_rule`` (row-wise estimators) computes the weights from the k kept similarities, with the
    row's log-normaliser when ``needs_normaliser=True``. The callable also gets the attributes
    ``estimator_name``, ``needs_dense`` and ``stochastic`` (read-only mirrors of the spec, for code
    that inspects the function).

    Shapes: the estimator maps scores (N, M) to a :class:`Selection` with indices, weights (N, k).

    Taught in: chapter 09 (chapters/09_estimators_1_softmax.md).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    if needs_normaliser and row_rule is None:
        raise ValueError(f"estimator {name!r}: needs_normaliser=True describes a row rule; pass row_rule too")
    if row_rule is not None and needs_dense:
        raise ValueError(f"estimator {name!r}: a row-wise estimator (row_rule) cannot need the dense mask; "
                         f"drop row_rule or needs_dense")

    def deco(fn: EstimatorFn) -> EstimatorFn:
        spec = EstimatorSpec(name, fn, row_rule, bool(needs_normaliser), bool(needs_dense), bool(stochastic))
        fn.estimator_name = name  # type: ignore[attr-defined]
        fn.needs_dense = spec.needs_dense  # type: ignore[attr-defined]
        fn.stochastic = spec.stochastic  # type: ignore[attr-defined]
        ESTIMATORS[name] = fn
        ESTIMATOR_SPECS[name] = spec
        return fn

    return deco


def _unknown(name: str) -> ValueError:
    close = difflib.get_close_matches(name, list(ESTIMATORS), n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(f"unknown estimator={name!r}; valid names are {sorted(ESTIMATORS)}.{hint}")


def get_estimator(name: str | EstimatorFn) -> EstimatorFn:
    """Look an estimator up by name (a callable is returned unchanged); unknown names list the valid ones.

    Shapes: none (returns the estimator callable).

    Taught in: chapter 06 (chapters/06_rankings_to_graph_2_gradient.md) and chapter 09 (chapters/09_estimators_1_softmax.md).
    """
    if callable(name):
        return name
    if not isinstance(name, str):
        raise TypeError(f"estimator must be a name (str) or a callable, got {type(name).__name__}")
    if name not in ESTIMATORS:
        raise _unknown(name)
    return ESTIMATORS[name]


def get_spec(estimator: str | EstimatorFn) -> EstimatorSpec:
    """The :class:`EstimatorSpec` of a name or a callable.

    A registered callable (or its name) gets its registered spec. Anything else (a callable that
    was never registered, or one put into :data:`ESTIMATORS` by hand) gets a spec read off its
    ``estimator_name`` / ``needs_dense`` / ``stochastic`` attributes: not row-wise.

    Shapes: none.

    Taught in: chapter 09 (chapters/09_estimators_1_softmax.md).
    """
    fn = get_estimator(estimator)
    name = estimator if isinstance(estimator, str) else getattr(fn, "estimator_name", getattr(fn, "__name__", "custom"))
    spec = ESTIMATOR_SPECS.get(name)
    if spec is not None and spec.fn is fn:
        return spec
    return EstimatorSpec(name, fn, None, False, bool(getattr(fn, "needs_dense", False)),
                         bool(getattr(fn, "stochastic", False)))


def estimator_names(*, rowwise: bool | None = None, chunkable: bool | None = None, needs_normaliser: bool | None = None,
                    needs_dense: bool | None = None, stochastic: bool | None = None) -> tuple[str, ...]:
    """Registered names whose spec has every flag given (``None`` = either), in registration order.

    Shapes: none.

    Taught in: chapter 09 (chapters/09_estimators_1_softmax.md).
    """
    want = {"rowwise": rowwise, "chunkable": chunkable, "needs_normaliser": needs_normaliser,
            "needs_dense": needs_dense, "stochastic": stochastic}
    out = []
    for name in ESTIMATORS:
        spec = get_spec(name)
        if all(v is None or getattr(spec, k) == v for k, v in want.items()):
            out.append(name)
    return tuple(out)


def rowwise_names(normaliser: bool = True) -> tuple[str, ...]:
    """Names of the row-wise estimators (the bank engine's); ``normaliser=False`` leaves out those that
    need the row's log-normaliser (the chunked graph's).

    Shapes: none.

    Taught in: chapter 10 (chapters/10_scaling_1_memory.md) and chapter 11 (chapters/11_minibatch_1_bank.md).
    """
    return estimator_names(rowwise=True) if normaliser else estimator_names(chunkable=True)
