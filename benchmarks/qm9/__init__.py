"""QM9 benchmark of the multi-task weighting strategies (issue 28).

Eleven regression targets of QM9 predicted by one MPNN (Gilmer et al., the QM9
example of PyTorch Geometric), as in the Nash-MTL (Navon et al., 2022) and FAMO
(Liu et al., 2023) papers. Modules:

- :mod:`qm9.data`: the molecules of the installed ``qm9pack`` package as graphs,
  cached on disk; splits, standardisation, batches (complete graph + distances);
- :mod:`qm9.model`: the MPNN with one linear head per task;
- :mod:`qm9.protocol`: the ``paper`` and ``cpu`` presets and the run configuration;
- :mod:`qm9.train`: one resumable run (checkpoint, results JSON);
- :mod:`qm9.metrics`: MAE per task, Delta_m %, mean rank; the papers' numbers;
- :mod:`qm9.report`: the table (Markdown, JSON) and the plot.

The command line is ``benchmarks/qm9_benchmark.py``. The optional dependencies
(``torch_geometric``, ``rdkit``, ``qm9pack``) are the ``qm9`` extra.
"""
