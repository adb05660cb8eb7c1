"""Files: atomic writes, dtypes, the safetensors reader, per-unit tensor and table Parquet."""
