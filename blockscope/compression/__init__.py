"""Quantisation and pruning plans from the spectra, applied and scored against controls."""
