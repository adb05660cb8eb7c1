"""The cost model: predicted seconds and memory per job from a checkpoint's shapes.

flops (operation counts) and devices (published GPU rates) feed throughput (the rates a
prediction divides by), measured by calibration and kept per machine by throughput_cache;
job_start prices a job's start; pricing prices one job, model_plan a model's jobs; slurm turns a
prediction into a SLURM request; config_inventory and cli are blockscope-plan."""
