"""rule anatomy: one unit's spectra and metrics, precision sweep, heads and (diagnostics.enabled)
WeightWatcher's other diagnostics, each part recomputed only when what it depends on changed
(blockscope.analysis.part_stamps)."""

import json

from blockscope.analysis.anatomy import UnitReader, alpha_hill_grid, precision_table, sigmas_by_matrix, unit_tables
from blockscope.analysis.diagnostics import unit_diagnostics
from blockscope.analysis.heads import unit_heads_table
from blockscope.analysis.part_stamps import Part, run_part
from blockscope.io.tables import read_rows, read_table, selected_rows, text_table, unit_inventory
from blockscope.runtime.gpu_slots import claim_gpu
from blockscope.runtime.run_step import run_step


def main(snakemake):
    gpu = claim_gpu(snakemake.params.backend)  # this job's own GPU, before torch loads
    model, unit = snakemake.wildcards.model, snakemake.wildcards.unit
    files, out, selected = snakemake.input, snakemake.output, snakemake.params.selected
    spectra, sweep, heads = snakemake.params.spectra, snakemake.params.precision, snakemake.params.heads
    whole = unit_inventory(files.inventory, unit)  # the heads check the unselected projections too
    inventory = selected_rows(whole, selected)
    inputs = {"tensors": files.tensors, "inventory": files.inventory}
    reader = UnitReader(files.tensors, inventory)  # the unit is read once for the spectra and the sweep

    def compute_spectra():
        metrics, table = unit_tables(model, unit, files.tensors, inventory, backend=snakemake.params.backend,
                                     compute_dtype=spectra["compute_dtype"], svd_method=spectra["svd_method"],
                                     hill_fraction=spectra["hill_fraction"],
                                     sparsity_threshold=spectra["sparsity_threshold"], device=gpu.device,
                                     reader=reader)
        return {"spectra": table, "metrics": metrics}

    def compute_sweep():
        done = read_rows(out.metrics, columns=["matrix", "backend", "svd_method"])
        table = precision_table(model, unit, files.tensors, inventory,
                                read_table(out.spectra, columns=["matrix", "sigma"]),
                                sweep["precisions"], compute_dtype=spectra["compute_dtype"],
                                hill_fraction=sweep["hill_fraction"], backend=snakemake.params.backend,
                                spectra_backend={row["matrix"]: row["backend"] for row in done},
                                svd_method=spectra["svd_method"],
                                spectra_method={row["matrix"]: row["svd_method"] for row in done}, device=gpu.device,
                                reader=reader)
        print(alpha_hill_grid(table.to_pylist(), sweep["precisions"]))
        return {"precision": table}

    def compute_heads():
        dims = json.loads(open(files.dims).read())
        table = unit_heads_table(model, unit, files.tensors, whole, dims, selected)
        if len(table):
            print(text_table(table, leave_out=("model", "unit")))
        return {"heads": table}

    settings = {"backend": snakemake.params.backend, "selected": selected}
    stamp = run_part(Part("spectra", {"spectra": out.spectra, "metrics": out.metrics}, {**settings, **spectra},
                          inputs, compute_spectra))
    run_part(Part("precision", {"precision": out.precision}, {**settings, **sweep}, inputs, compute_sweep,
                  upstream=stamp))
    if "diagnostics" in out.keys():  # diagnostics.enabled: the permuted spectra reuse the unit's read
        diagnostics = dict(snakemake.params.diagnostics)
        if not diagnostics["vectors"]:  # their settings change nothing then: not in the part's stamp
            diagnostics = {k: v for k, v in diagnostics.items() if not k.startswith("vector_")}

        def compute_diagnostics():
            sigmas = sigmas_by_matrix(read_table(out.spectra, columns=["matrix", "sigma"]))
            tables = unit_diagnostics(model, unit, files.tensors, inventory, sigmas, diagnostics,
                                      backend=snakemake.params.backend, device=gpu.device,
                                      compute_dtype=spectra["compute_dtype"], svd_method=spectra["svd_method"],
                                      reader=reader)
            return {"diagnostics": tables["diagnostics"], "rand_spectra": tables["rand_spectra"]}

        run_part(Part("diagnostics", {"diagnostics": out.diagnostics, "rand_spectra": out.rand_spectra},
                      {**settings, **diagnostics, "spectra": {k: spectra[k] for k in ("compute_dtype", "svd_method")}},
                      inputs, compute_diagnostics, upstream=stamp))
    reader.clear()  # the heads read their own few projections
    run_part(Part("heads", {"heads": out.heads}, {"selected": selected, **heads}, {**inputs, "dims": files.dims},
                  compute_heads))


run_step(snakemake, main)
