"""Evaluation and prediction internals behind ``python -m rirn.evaluate``, ``rirn.predict`` and
``rirn.report``. How a case is predicted is :mod:`rirn.inference` (one module for every command).

Modules:

==================  =====================================================================
``runs``            find run folders and checkpoints (``best.pt``, else ``last.pt``), rebuild nets
``data``            the cases to evaluate: a run's validation split or another dataset's cache
``settings``        config keys (``device``, ``amp``, ``inference.*``, ``postprocess.*``) ->
                    :class:`rirn.inference.InferenceSettings`
``engine``          evaluate a checkpoint case by case; write the result files; reuse them
``tables``          evaluate's tables: per-case rows, ``per_case.csv``, per-subset summary,
                    ``summary.csv``
``render``          that summary as Markdown and LaTeX in the paper's table layout
``figures``         Fig. 6/7-style PNG overlays (input, ground truth, teacher, student)
``predict_files``   predict's files: case folders in, masks and probability maps out
``bundle_predict``  ``predict bundle=...``: usable modalities, the student per case,
                    ``predictions.csv``
``report_tables``,  ``python -m rirn.report``: the paper's comparison tables from a sweep,
``report_csv``,     their CSV files, seed grouping and statistics, the KD comparison, what a
``seed_tables``,    run trains (see docs/architecture.md, "Which module owns which table")
``seeds``,
``method_table``,
``variants``
==================  =====================================================================
"""
