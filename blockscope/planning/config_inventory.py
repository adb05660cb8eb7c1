"""The inventory of a checkpoint from its transformers config alone (no weights), for planning a
model before it is downloaded."""

from blockscope.checkpoint.inventory import inventory_frame, inventory_row, model_dims
from blockscope.io.dtypes import numpy_dtype, safetensors_dtype


def inventory_from_config(config: dict, model: str = "planned") -> tuple:
    """(inventory, dims) of the checkpoint a transformers config describes, without weights:
    the model is built on torch's meta device (shapes only, no memory) and every parameter
    becomes an inventory row in the config's torch_dtype (float32 when unset)."""
    import torch
    import transformers

    settings = dict(config)
    config_class = transformers.AutoConfig.for_model(settings.pop("model_type"), **settings)
    with torch.device("meta"):
        network = transformers.AutoModelForCausalLM.from_config(config_class)
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32").replace("torch.", "")
    stored = safetensors_dtype(numpy_dtype(dtype))
    itemsize = numpy_dtype(stored).itemsize
    rows = [inventory_row(name, list(p.shape), stored, stored, itemsize * p.numel(), "model.safetensors",
                          config["model_type"])
            for name, p in network.named_parameters()]  # tied weights appear once, as in a saved checkpoint
    inventory = inventory_frame(rows)
    config = {**config, "architectures": config.get("architectures") or [type(network).__name__]}  # as saved
    return inventory, {"model": model, **model_dims(config, inventory, model=model)}
