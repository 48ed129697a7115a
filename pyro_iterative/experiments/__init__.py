"""Experiments: the runs that train and compare methods, and what they write.

- :mod:`~pyro_iterative.experiments.config`: :class:`~pyro_iterative.experiments.config.RunConfig`, every setting
  of a run (the command line's options are generated from it);
- :mod:`~pyro_iterative.experiments.registry`: the methods and models of a comparison, declared once each;
- :mod:`~pyro_iterative.experiments.datasets`: the data sets and the split a run uses;
- :mod:`~pyro_iterative.experiments.engine`: the training engine, one description of an epoch and the
  single-process SVI loop;
- :mod:`~pyro_iterative.experiments.lightning`: the same engine data-parallel under PyTorch Lightning (the
  ``distributed`` extra; not imported here);
- :mod:`~pyro_iterative.experiments.checkpoints`: atomic files and the one checkpoint schema;
- :mod:`~pyro_iterative.experiments.comparison`: training, measuring and reporting every method of a run;
- :mod:`~pyro_iterative.experiments.study`: the tuning study (equal grids, validation selection, early stopping, one
  test measurement), ``compare --study``;
- :mod:`~pyro_iterative.experiments.figures`, :mod:`~pyro_iterative.experiments.plots` and
  :mod:`~pyro_iterative.experiments.report`: figure data, drawings, and the written report.

This layer may import everything else of the package; nothing else imports it (the command line,
:mod:`pyro_iterative.cli`, is its only caller inside the package).
"""
