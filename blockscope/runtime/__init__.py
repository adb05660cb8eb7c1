"""How a job runs: the device, GPU slots, code hashes, the script step, the run's outcome."""
