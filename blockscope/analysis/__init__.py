"""One unit's matrices measured: spectra, heavy tails, ranks and norms, heads, embedding, the anatomy."""
