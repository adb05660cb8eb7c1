"""A checkpoint and its tensors: sources, the inventory, block types, attention layout, selection."""
