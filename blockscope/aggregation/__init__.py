"""A model's per-unit tables stacked into model-level tables and the detail tables."""
