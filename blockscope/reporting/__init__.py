"""Findings, Markdown reports and figures, read from the tables: nothing here computes a result."""
