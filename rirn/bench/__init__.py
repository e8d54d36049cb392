"""Parts of ``python -m rirn.benchmark`` (:mod:`rirn.benchmark`), one module per section.

* :mod:`rirn.bench.common` — clocks (CUDA events), peak memory, machine facts, fail-soft runs;
* :mod:`rirn.bench.nets` — :func:`~rirn.bench.nets.build_step_nets` (the trainer's networks
  and optimisers, outside the trainer) and a fixed batch;
* :mod:`rirn.bench.step` — the co-training step: variants, reference, loss agreement;
* :mod:`rirn.bench.loader` — ``TrainDataset`` + ``DataLoader`` crops/s (cache vs NIfTI);
* :mod:`rirn.bench.inference_time` — time per case of :func:`rirn.inference.predict_probs`;
* :mod:`rirn.bench.car` — CAR loss, chunked vs naive;
* :mod:`rirn.bench.targets` — targets and the Markdown table.
"""
