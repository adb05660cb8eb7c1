"""The cost model: predicted seconds and memory per job from a checkpoint's shapes."""
