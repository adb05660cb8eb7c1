# Per model: what the per-unit jobs will cost, priced from the inventory before they start.


rule plan:
    input:
        inventory=layout.INVENTORY,
        dims=layout.MODEL_JSON,
    output:
        layout.PLAN,
    log:
        "logs/{model}/plan.log",
    benchmark:
        benchmark("plan")
    priority: PLAN_PRIORITY  # as soon as the inventory is there: its total is printed before the heavy jobs run
    conda:
        "../envs/blockscope.yaml"
    params:
        options=lambda w: plan_options(w.model),
        selected=lambda w: selected(w.model),
        code=code("plan"),
    script:
        "../workflow_scripts/plan.py"
