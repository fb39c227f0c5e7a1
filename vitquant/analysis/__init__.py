"""Analysis tools (pandas/matplotlib, the ``report`` extra): ``report`` (sweep folders → table, csv, plots:
``python -m vitquant.analysis.report``) and ``diagnostics`` (per-site MSE/SQNR vs the float twin)."""
