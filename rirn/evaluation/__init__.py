"""Evaluation and prediction internals behind ``python -m rirn.evaluate`` and ``rirn.predict``.

Modules:

=============  ===========================================================================
``runs``       find run folders and checkpoints (``best.pt``, else ``last.pt``), rebuild nets
``data``       the cases to evaluate: a run's validation split or another dataset's cache
``infer``      inference settings and the per-case prediction pasted back to original space
``engine``     evaluate a checkpoint case by case; write the result files; reuse them
``tables``     per-case rows and CSV, the per-subset summary (mean, std) and ``summary.csv``
``render``     the summary as Markdown and LaTeX in the paper's table layout
``figures``    Fig. 6/7-style PNG overlays (input, ground truth, teacher, student)
=============  ===========================================================================
"""
