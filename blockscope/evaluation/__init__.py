"""A model on a corpus: the base evaluation, scores and KL, head merging."""
