r"""Mini-batch end-to-end training over a feature bank (chapter 11).

One *step* takes a batch :math:`Q` of :math:`|Q|` images (``batch_size``):

1. fresh features :math:`F_Q = f_\theta(x_Q)` **with** gradient; they are written (detached) into
   the bank :math:`B` (:class:`bgcn.bank.FeatureBank`) first, so that the search sees them;
2. the batch's neighbours, their neighbours' rows and the 2-hop ring are searched in the bank
   (exact, chunked, indices under ``no_grad``; :func:`bgcn.bank.computation_subgraph`);
3. the edge weights are recomputed from :math:`F_Q` where a node is in the batch and from bank
   rows (constants) where it is not, so the graph path reaches every fresh feature;
4. the GCN runs on that subgraph, with out-of-batch inputs from the bank (GNNAutoScale's
   historical embeddings, Fey et al. 2021, here for the GCN's input features); the loss is the
   NLL over the labelled nodes of the batch:

.. math::
    L_Q = -\frac{1}{|Q\cap M|}\sum_{i\in Q\cap M}\log p_{i,y_i},\qquad
    \log p_Q = \mathrm{GCN}\big(\mathrm{sub}(Q);\ F_Q \cup B_{\text{sub}\setminus Q}\big)_Q

With :math:`|Q| \ge N` there is one batch, :math:`Q` = every node, the bank is the current features and the
step *is* the full-batch step of :func:`bgcn.train.train` (same loss and gradients; tested in
float64). No N×N tensor is built: the largest is one ``chunk_size`` × N search block.

A selection estimator of chapter 09 (``ste``, ``blackbox``, ``imle``, ...; its gradient reaches
every score of a row, chosen or not) runs with ``candidates=k′``: step 2 then searches the k′
candidates of each batch row, the estimator runs on the (:math:`|Q|`, k′) fresh similarities, and
every candidate is an edge weighted by its mask (:func:`bgcn.bank.candidate_subgraph`); with
k′ = N − 1 and :math:`|Q| \ge N` this is the full-batch dense step.

The parts: ``_sampler`` (which nodes: :func:`stratified_batches`), ``_step`` (one step's loss,
the no-grad embedding and evaluation passes), ``_engine`` (:class:`MinibatchEngine`, the parts
handed to the loop both engines share, :func:`bgcn.train.run`; and :func:`train_minibatch`).

Taught in: chapter 11 (chapters/11_minibatch_1_bank.md).
"""
from __future__ import annotations

from ..backbone import embed_images, image_rows  # noqa: F401 - the one embedding loop (documented in bgcn.backbone)
from ._engine import MINIBATCH_CHECKPOINT_FORMAT, MinibatchEngine, train_minibatch
from ._sampler import stratified_batches
from ._step import evaluate_full, minibatch_loss

__all__ = ["stratified_batches", "minibatch_loss", "evaluate_full", "train_minibatch",
           "MinibatchEngine", "MINIBATCH_CHECKPOINT_FORMAT"]
