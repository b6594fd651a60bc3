r"""Estimators for the *selection* step: learning **which** k neighbours each node keeps (chapter 09).

What an estimator is lives here too: the :class:`Selection` it returns, its
:class:`EstimatorSpec` (row-wise? needs the row normaliser? needs the dense path? stochastic?) and
the registry :data:`ESTIMATORS` (``bgcn.ESTIMATORS``), read by every module instead of lists of
names (``_registry.py``); and the one score-function surrogate (``_score.py``).

The softmax estimators of :mod:`bgcn.topk` only re-weight the edges that hard top-k already chose;
the *choice* gets no gradient (chapter 02). The estimators here return, besides the k chosen
columns per row, a dense (N, M) mask :math:`m` whose backward pass is the estimator's gradient for
**every** score, chosen or not. Importing this package registers them in :data:`bgcn.ESTIMATORS`.

Parts: ``_registry`` (Selection, spec, registry), ``_common`` (deterministic top-k mask, row scale),
``_noise`` (Gumbel, Sum-of-Gamma), ``_straight_through`` (ste, identity), ``_perturbed`` (blackbox,
I-MLE), ``_relaxed`` (sigmoid, capped simplex), ``_reinforce`` (Gumbel top-k + score function),
``_score`` (the surrogate and its baselines), ``_sign_test`` (the toy sign test).

Notation (per row i; the rows are independent). :math:`S` (N, M) cosine similarities,
:math:`z = S/\tau` the scores (the book's :math:`z`, chapter 09; the functions name the argument
``theta``), :math:`g = \partial L/\partial m` the loss gradient arriving at the mask,
:math:`\operatorname{topk}({z})` the hard k-hot row

.. math::
    \operatorname{topk}({z}) = \arg\max_{y\in\{0,1\}^M,\ \sum_j y_j = k} \langle{z}, y\rangle .

**Top-k is an argmax.** Blackbox differentiation (Vlastelica et al., 2020) and the "negative
identity" of Sahoo et al. (2023) are written for *argmin* solvers; copied verbatim onto top-k they
train in the wrong direction, or not at all (:func:`blackbox_argmin_verbatim`, :func:`sign_test`).

The estimators (forward; backward :math:`\partial L/\partial{z}`; needs the dense path?; stochastic?):

- ``"ste"``: :math:`\operatorname{topk}({z})`; :math:`g` (or a surrogate's Jacobian); dense; deterministic.
- ``"identity"``: topk of :math:`u = c/\lVert c\rVert`, :math:`c = {z} - \bar{z}`;
  :math:`(I-\tfrac1n\mathbf 1\mathbf 1^\top)\tfrac{1}{\lVert c\rVert}(I-uu^\top)g`; dense; deterministic.
- ``"blackbox"``: :math:`\operatorname{topk}({z})`; :math:`(m - \operatorname{topk}({z}-\lambda g))/\lambda`;
  dense; deterministic.
- ``"imle"``: :math:`\operatorname{topk}({z}+\epsilon)`, ε Sum-of-Gamma;
  :math:`(m - \operatorname{topk}({z}+\epsilon-\lambda g))/\lambda`; dense; stochastic.
- ``"sigmoid"``: :math:`\sigma(({z}-t)/\tau_m)` with row sums k;
  :math:`\tfrac{h}{\tau_m}\odot(g - \tfrac{\langle h,g\rangle}{\sum h})`, :math:`h = m(1-m)`; dense; deterministic.
- ``"capped_simplex"``: :math:`\mathrm{clip}({z}/\tau_m-\nu,0,1)` with row sums k;
  :math:`(g_F-\overline{g_F})/\tau_m` on the free set F; dense; deterministic.
- ``"gumbel_reinforce"``: :math:`\operatorname{topk}({z} + \tau_g G)`, G Gumbel; no pathwise gradient, the
  score function through ``sel.log_prob`` and :func:`reinforce_surrogate`; sparse is enough; stochastic.

"Dense path" (``needs_dense=True`` in the registry): the estimator's gradient needs
:math:`\partial L/\partial m_{ij}` for *non-edges* too, so the GCN must consume the dense mask
(``GCN(x, adj=graph.dense)``); with a sparse ``edge_index`` autograd only sees the k chosen
entries per row and the selection never learns. ``gumbel_reinforce`` needs no dense GCN path (its
gradient comes from the score-function surrogate :func:`reinforce_surrogate`), but its
``log_prob`` uses full rows of :math:`{z}`.

**Hyper-parameters are tied to the score scale.** Cosine similarities of one row differ by a few
hundredths, so a constant λ or noise temperature means nothing. By default every scale-like
hyper-parameter is a multiple of the row's standard deviation :math:`s_i = \mathrm{std}_j({z}_{ij})`
(over the candidate columns; computed without gradient, i.e. treated as a constant):

- blackbox / imle: :math:`\lambda_i = \texttt{lam\_rel}\cdot s_i / \mathrm{rms}(g_i)`, so that the
  perturbation :math:`\lambda_i g_i` has root-mean-square :math:`\texttt{lam\_rel}\cdot s_i`
  whatever the scale of the loss (the adaptive I-MLE rule of Minervini et al., 2023, per row).
  Pass ``lam=`` for the paper's absolute λ.
- imle: noise temperature :math:`\tau_{noise,i} = \texttt{noise\_rel}\cdot s_i` (``tau_noise=`` for
  an absolute one).
- sigmoid / capped_simplex: relaxation temperature :math:`\tau_{m,i} = \texttt{tau\_m\_rel}\cdot s_i`
  (``tau_m=`` for an absolute one).
- gumbel_reinforce: Gumbel scale :math:`\tau_{g,i} = \texttt{noise\_rel}\cdot s_i` (``tau_noise=``).

Every stochastic estimator takes ``generator`` (a ``torch.Generator``) and is reproducible with it.

Taught in: chapter 09 (chapters/09_estimators.md).
"""
from __future__ import annotations

from ._registry import (ESTIMATOR_SPECS, ESTIMATORS, EstimatorSpec, Selection, estimator_names, get_estimator,
                        get_spec, register_estimator, rowwise_names)
from ._common import row_std, topk_indices, topk_mask
from ._noise import EULER_GAMMA, gumbel_noise, sum_of_gamma_noise
from ._relaxed import (_sigmoid_threshold, capped_simplex_estimator, capped_simplex_topk, sigmoid_estimator,  # noqa: F401
                       sigmoid_topk)
from ._straight_through import identity_estimator, ste_estimator
from ._perturbed import PerturbationState, blackbox_argmin_verbatim, blackbox_estimator, imle_estimator
from ._score import BASELINES, reinforce_baseline, score_function_surrogate, score_function_terms
from ._reinforce import EMABaseline, gumbel_reinforce_estimator, plackett_luce_log_prob, reinforce_surrogate
from ._sign_test import SIGN_TEST_KW, sign_test

__all__ = [
    "Selection",
    "EstimatorSpec",
    "ESTIMATORS",
    "ESTIMATOR_SPECS",
    "register_estimator",
    "get_estimator",
    "get_spec",
    "estimator_names",
    "rowwise_names",
    "EULER_GAMMA",
    "topk_mask",
    "topk_indices",
    "gumbel_noise",
    "sum_of_gamma_noise",
    "row_std",
    "PerturbationState",
    "sigmoid_topk",
    "capped_simplex_topk",
    "plackett_luce_log_prob",
    "BASELINES",
    "reinforce_baseline",
    "score_function_terms",
    "score_function_surrogate",
    "reinforce_surrogate",
    "EMABaseline",
    "blackbox_argmin_verbatim",
    "sign_test",
    "SIGN_TEST_KW",
    "SELECTION_ESTIMATORS",
    "ste_estimator",
    "identity_estimator",
    "blackbox_estimator",
    "imle_estimator",
    "sigmoid_estimator",
    "capped_simplex_estimator",
    "gumbel_reinforce_estimator",
]

SELECTION_ESTIMATORS = ("ste", "identity", "blackbox", "imle", "sigmoid", "capped_simplex", "gumbel_reinforce")
"""The selection estimators this package registers (their specs are not row-wise), in the order chapter 09
presents them."""
