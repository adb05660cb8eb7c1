"""Our issue-29 diagnostics against WeightWatcher 0.7.7's on the same weights, matrix by matrix.

Peer: WeightWatcher 0.7.7 `analyze()` on a finished demo run's canonical checkpoint
(resources/models/<model>, loaded with transformers as spectra_vs_weightwatcher.py loads it), in a
child process. The issue asks for analyze(randomize=True, mp_fit=True, detX=True,
fix_fingers='clip_xmax', fit='TPL'); 0.7.7 refuses that call (valid_params: its default
pl_package 'ww' fits the power law only: "pl_package only supports PowerLaw fits, but fit=TPL"), and with
pl_package='powerlaw' clip_xmax and TPL do not combine either: the clipped branch fits a plain
power law and fit='TPL' then replaces its alpha with a TPL's fitted at the clipped fit's xmin (the clipped
alpha is lost; num_fingers and raw_alpha stay). So the harness tries the literal call (and prints why it
is refused), then runs three calls:
  A  analyze(randomize=True, mp_fit=True, detX=True, fix_fingers='clip_xmax')        every matrix
  C  analyze(fix_fingers='clip_xmax', fit='TPL', pl_package='powerlaw')              every matrix
  B  analyze(fit='TPL', pl_package='powerlaw', layers=<ids>)                         a subset (--tpl-blocks)
C is the issue's call made valid (randomize, mp_fit and detX, which change no fit, are A's): where it
clips nothing its alpha and Lambda are a TPL fitted at the plain power law's xmin, which is where ours
fits it, so it compares like with like. B is what fit='TPL' alone reports: powerlaw.Fit(
xmin_distribution='truncated_power_law') fits a TPL at every xmin candidate and keeps the least KS
distance (slow: about 35 CPU s for 576 eigenvalues, 6 s for 192 on the dev VM). WeightWatcher 0.7.7
passes `distribution=` to powerlaw.Fit, which powerlaw 2.x refuses (TypeError, caught by
WeightWatcher: every fit with pl_package='powerlaw' then reports alpha = Lambda = -1, status failed);
--tpl-powerlaw-path puts a folder holding powerlaw 1.5 first on B's and C's path
(`pip install --no-deps --target DIR powerlaw==1.5`); ours needs no powerlaw (an exact MLE).

Ours: blockscope.analysis.diagnostics.unit_diagnostics on every unit's tensors of the same run
(results/<model>/tensors), with each matrix's singular values from that run's spectra, and the
`diagnostics` settings of schemas/config.schema.yaml (the spec's defaults where it has none yet).

Matched by name: WeightWatcher's layer_id indexes model.named_modules() (its `longname` column
holds the same name); ours is the parameter name, `<module>.weight`. Prints per new column the
matrices compared, how many agree within the stated tolerance, and the largest difference;
for the randomisation (a random permutation on each side) the flags and spike counts, and the
rank correlation of rand_distance, not the values.

    .venv/bin/pip install -r benchmarks/requirements.txt     # or --ww-path DIR: a --target install
    .venv/bin/python benchmarks/diagnostics_vs_weightwatcher.py --run DIR [--model smollm2-135m]
        [--tpl-blocks 0,7,14,21,29|all|none] [--tpl-powerlaw-path DIR] [--ww-path DIR]
        [--ww-cache DIR] [--ww-only]
"""

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# Issue 29's `diagnostics` defaults, used where schemas/config.schema.yaml has none.
DEFAULT_SETTINGS = {"enabled": True, "seed": 0, "max_fingers": 10, "finger_threshold": 1.0, "tpl_level": 0.95,
                    "trap_entries": 5, "vectors": False, "vector_k": 10, "vector_top_entries": 10}

# Tolerances: alpha agrees with WeightWatcher's to 3e-5 (auto) on the demo (README, spectra_vs_weightwatcher);
# the clipped fit is the same estimator on fewer eigenvalues. WeightWatcher's TPL is powerlaw 1.5's numerical
# MLE (scipy's fmin), ours an exact one: 1e-2 on alpha; lambda agrees when |d lambda| * lambda_max <= 1e-2
# ("cutoff": the cut-off factors exp(-lambda x) differ by under 1 % over the whole tail, so 0 and powerlaw's
# 1e-10 agree). detX_val is an eigenvalue: relative 1e-4 covers float32 SVDs against the float64 Gram.
TOLERANCES = {"alpha_clipped": ("abs", 1e-3), "num_fingers": ("abs", 0), "D_clipped": ("abs", 1e-3),
              "tpl_alpha": ("abs", 1e-2), "tpl_lambda": ("cutoff", 1e-2),
              "detx_num": ("abs", 0), "detx_val": ("rel", 1e-4),
              "rand_num_spikes": ("abs", 0)}

WW_CHILD = r"""
import json, sys, time
import transformers, weightwatcher, powerlaw
mode, checkpoint, out = sys.argv[1], sys.argv[2], sys.argv[3]
blocks = sys.argv[4] if len(sys.argv) > 4 else "all"
model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint)
names = [name for name, _ in model.named_modules()]
info = {"weightwatcher": weightwatcher.__version__, "powerlaw": getattr(powerlaw, "__version__", "?"),
        "powerlaw_file": powerlaw.__file__, "mode": mode}
watcher = weightwatcher.WeightWatcher(model=model)
if mode == "literal":
    import logging
    said = []  # what valid_params logs: the reason it refuses
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("weightwatcher").addHandler(handler)
    try:
        watcher.analyze(randomize=True, mp_fit=True, detX=True, fix_fingers="clip_xmax", fit="TPL", layers=[-1])
        info["refused"] = ""
    except Exception as err:  # 0.7.7 validates the options before any layer
        info["refused"] = f"{str(err).splitlines()[0]} ({'; '.join(m for m in said if not m.startswith('Error'))})"
    json.dump({"info": info, "rows": []}, open(out, "w"))
    sys.exit(0)
if mode == "A":
    kwargs = dict(randomize=True, mp_fit=True, detX=True, fix_fingers="clip_xmax")
elif mode == "C":
    kwargs = dict(fix_fingers="clip_xmax", fit="TPL", pl_package="powerlaw")
else:  # B: TPL on the blocks asked for (and the embedding), never lm_head (tied to the embedding)
    import re
    keep = None if blocks == "all" else {int(b) for b in blocks.split(",")}
    ids = [i for i, n in enumerate(names) if n == "model.embed_tokens"
           or (m := re.match(r"model\.layers\.(\d+)\.", n)) and (keep is None or int(m.group(1)) in keep)]
    kwargs = dict(fit="TPL", pl_package="powerlaw", layers=ids)
started = time.process_time(), time.perf_counter()
details = watcher.analyze(**kwargs)
info["cpu_s"], info["wall_s"] = time.process_time() - started[0], time.perf_counter() - started[1]
info["kwargs"] = {k: v for k, v in kwargs.items() if k != "layers"}
details.insert(0, "module", [names[int(i)] for i in details["layer_id"]])
rows = json.loads(details.to_json(orient="records"))
json.dump({"info": info, "rows": rows}, open(out, "w"))
"""

TPL_REASON = ("WeightWatcher 0.7.7 passes distribution= to powerlaw.Fit, which this powerlaw refuses; "
              "it catches the error and reports alpha = Lambda = -1 (rerun with --tpl-powerlaw-path, powerlaw 1.5)")


def run_weightwatcher(mode, checkpoint, out: Path, blocks="all", path_first=()):
    """One child analyze() (WW_CHILD), its JSON kept in out; (info, details DataFrame)."""
    if not out.exists():
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([*path_first, *filter(None, [env.get("PYTHONPATH")])])
        done = subprocess.run([PYTHON, "-c", WW_CHILD, mode, str(checkpoint), str(out), blocks], env=env,
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"WeightWatcher call {mode} failed:\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    return result["info"], pd.DataFrame(result["rows"])


def settings() -> dict:
    """The schema's `diagnostics` defaults, else the spec's."""
    schema = yaml.safe_load((ROOT / "schemas/config.schema.yaml").read_text())
    block = schema.get("properties", {}).get("diagnostics", {}).get("properties", {})
    found = {key: spec["default"] for key, spec in block.items() if "default" in spec}
    return {**DEFAULT_SETTINGS, **found}


def our_diagnostics(run: Path, model: str, config: dict) -> tuple:
    """(every unit's diagnostics table as one DataFrame, CPU seconds, module -> its eigenvalues) from the
    run's tensors and spectra."""
    from blockscope.analysis.anatomy import sigmas_by_matrix
    from blockscope.analysis.diagnostics import unit_diagnostics
    from blockscope.io.tables import records

    inventory = pq.read_table(run / f"results/{model}/inventory.parquet").to_pandas()
    tables, eigenvalues, started = [], {}, time.process_time()
    for tensor_path in sorted(glob.glob(str(run / f"results/{model}/tensors/*.parquet"))):
        unit = Path(tensor_path).stem
        sigmas = sigmas_by_matrix(pq.read_table(run / f"results/{model}/spectra/{unit}.parquet"))
        rows = records(inventory[inventory["unit"] == unit])
        out = unit_diagnostics(model, unit, tensor_path, rows, sigmas, config, backend="cpu", device="cpu")
        tables.append(out["diagnostics"].to_pandas())
        eigenvalues.update({m.removesuffix(".weight"): np.asarray(v, np.float64) ** 2 for m, v in sigmas.items()})
    return pd.concat(tables, ignore_index=True), time.process_time() - started, eigenvalues


UNITS = {"abs": "", "rel": " rel", "cutoff": " x lambda_max"}


def agreement(name, ours: pd.Series, theirs: pd.Series, tolerance, scale=None) -> str:
    """'compared, agree, largest |difference| (where)' of two aligned numeric columns; tolerance (kind, tol),
    kind abs, rel (to WW's value) or cutoff (|difference| x scale, the matrix's lambda_max)."""
    kind, tol = tolerance
    both = ours.notna() & theirs.notna()
    a, b = ours[both].astype(float), theirs[both].astype(float)
    diff = (a - b).abs()
    if kind == "rel":
        diff = diff / b.abs().where(b != 0, 1.0)
    elif kind == "cutoff":
        diff = diff * scale.reindex(diff.index)
    if not len(a):
        return f"{name:30s} no matrix with both values"
    worst = diff.idxmax()
    return (f"{name:30s} {len(a):4d} compared, {int((diff <= tol).sum()):4d} agree "
            f"(|diff|{UNITS[kind]} <= {tol:g}), largest {diff[worst]:.2e}{UNITS[kind]} at {worst} "
            f"(ours {a[worst]:.6g}, WW {b[worst]:.6g}); {int((~both).sum())} without both")


def tpl_loglikelihood(tail: np.ndarray, alpha: float, lam: float) -> float:
    """Sum of ln p(x) of the truncated power law x^-alpha e^(-lam x) / Z over tail (x >= xmin = its least),
    Z by mpmath's incomplete gamma, independent of both fits: Z = lam^(alpha-1) Gamma(1 - alpha, lam xmin),
    or xmin^(1-alpha) / (alpha - 1) at lam = 0."""
    import mpmath

    xmin, n = float(tail.min()), tail.size
    if lam > 0:
        log_z = (alpha - 1) * math.log(lam) + float(mpmath.log(mpmath.gammainc(1 - alpha, lam * xmin)))
    else:
        log_z = (1 - alpha) * math.log(xmin) - math.log(alpha - 1)
    return float(-alpha * np.log(tail).sum() - lam * tail.sum() - n * log_z)


def crosstab(ours: pd.Series, theirs: pd.Series) -> str:
    both = ours.notna() & theirs.notna()
    a, b = ours[both].astype(int), theirs[both].astype(int)
    cells = {(x, y): int(((a == x) & (b == y)).sum()) for x in (1, 0) for y in (1, 0)}
    return (f"{len(a)} compared, {cells[1, 1] + cells[0, 0]} agree: both trapped {cells[1, 1]}, "
            f"ours only {cells[1, 0]}, WW only {cells[0, 1]}, neither {cells[0, 0]}")


def column(frame, name) -> pd.Series:
    """frame[name], or NaN where a side lacks the column (printed as 'no matrix with both values')."""
    return frame[name] if name in frame else pd.Series(np.nan, index=frame.index)


def by_module(ours: pd.DataFrame) -> pd.DataFrame:
    """Our rows indexed by module name (the parameter name less .weight), whole matrices only."""
    ours = ours[ours["expert"].isna()] if "expert" in ours else ours
    return ours.set_index(ours["matrix"].str.removesuffix(".weight"))


def compare(ours: pd.DataFrame, plain: pd.DataFrame, ww_a: pd.DataFrame):
    """Print the agreement table of call A: ours (unit_diagnostics rows) against WeightWatcher's,
    joined on the module name; WeightWatcher's columns carry the prefix ww_."""
    ours = by_module(ours)
    a = ww_a.set_index("module").add_prefix("ww_")
    only_ww, only_ours = sorted(set(a.index) - set(ours.index)), sorted(set(ours.index) - set(a.index))
    print(f"matched by name: {len(set(a.index) & set(ours.index))} matrices; WW only: {only_ww or 'none'}; "
          f"ours only: {only_ours or 'none'}")
    if "ww_longname" in a:
        same = sum(a.loc[m, "ww_longname"] == m for m in a.index)
        print(f"WW's longname equals model.named_modules()[layer_id] for {same} of {len(a)} rows")
    j = ours.join(a, how="inner").join(plain["alpha"], how="left")
    print("\n-- fix_fingers='clip_xmax' (call A) --")
    print(agreement("alpha (metrics) vs raw_alpha", j["alpha"], j["ww_raw_alpha"], ("abs", 1e-3)))
    print(agreement("alpha_clipped vs alpha", column(j, "alpha_clipped"), j["ww_alpha"], TOLERANCES["alpha_clipped"]))
    print(agreement("num_fingers vs num_fingers", column(j, "num_fingers"), j["ww_num_fingers"],
                    TOLERANCES["num_fingers"]))
    # WeightWatcher drops k eigenvalues and reports num_fingers = k - 1 (fit_clipped_powerlaw: idx - 1)
    dropped = j["ww_num_fingers"].where(j["ww_num_fingers"] == 0, j["ww_num_fingers"] + 1)
    print(agreement("num_fingers vs WW's dropped k", column(j, "num_fingers"), dropped, TOLERANCES["num_fingers"]))
    print(agreement("D_clipped vs D", column(j, "D_clipped"), j["ww_D"], TOLERANCES["D_clipped"]))
    print(f"  matrices clipped: WW {int((j['ww_num_fingers'] > 0).sum())}, "
          f"ours {int((column(j, 'num_fingers') > 0).sum())}")
    print("\n-- detX=True (call A) --")
    print(agreement("detx_num vs detX_num", column(j, "detx_num"), j["ww_detX_num"], TOLERANCES["detx_num"]))
    print(agreement("detx_val vs detX_val", column(j, "detx_val"), j["ww_detX_val"], TOLERANCES["detx_val"]))
    print("\n-- randomize=True, mp_fit=True (call A; each side its own random permutation) --")
    ww_trap = (j["ww_rand_num_spikes"] > 0).astype(int)
    print(f"{'correlation_trap vs WW rand_num_spikes > 0':44s} {crosstab(column(j, 'correlation_trap'), ww_trap)}")
    print(agreement("rand_num_spikes (counts)", column(j, "rand_num_spikes"), j["ww_rand_num_spikes"],
                    TOLERANCES["rand_num_spikes"]))
    for label, flags, spikes in (("ours", column(j, "correlation_trap") == 1, column(j, "rand_num_spikes")),
                                 ("WW", ww_trap == 1, j["ww_rand_num_spikes"])):
        trapped = j.index[flags.fillna(False)]
        print(f"  trapped ({label}, spikes): " + (", ".join(f"{m} ({spikes[m]:.0f})" for m in trapped) or "none"))
    print(f"  spikes in total: ours {column(j, 'rand_num_spikes').sum():.0f}, WW {j['ww_rand_num_spikes'].sum():.0f}; "
          f"W's own spikes (WW num_spikes, mp_fit=True): {j['ww_num_spikes'].sum():.0f}")
    for name, theirs in (("rand_distance", "ww_rand_distance"), ("rand_mp_softrank", "ww_rand_mp_softrank"),
                         ("rand_bulk_max", "ww_rand_bulk_max"), ("rand_max_eval", "ww_max_rand_eval")):
        mine = column(j, name)
        both = mine.notna() & j[theirs].notna()
        rho = spearmanr(mine[both], j.loc[both, theirs]).statistic if both.sum() > 2 else float("nan")
        ratio = (mine[both] / j.loc[both, theirs]).median()
        print(f"{name + ' vs ' + theirs:44s} {int(both.sum())} compared, Spearman rank correlation {rho:.3f}, "
              f"median ours / WW {ratio:.3g}")


def compare_tpl(ours: pd.DataFrame, plain: pd.DataFrame, eigenvalues: dict, ww_b, ww_c: pd.DataFrame,
                failed_why: str):
    """Print the agreement of the truncated power law: against call C where it clipped nothing (a TPL at
    powerlaw's plain xmin, where ours fits it) and against call B (fit='TPL' alone: its own xmin scan)."""
    print("\n-- fit='TPL' --")
    if failed_why:
        print(f"no comparison: every TPL fit failed ({failed_why})")
        return
    ours = by_module(ours).join(plain["xmin"], how="left")
    c = ww_c.set_index("module").add_prefix("c_")
    k = ours.join(c, how="inner")
    k = k[k["c_status"] == "success"]
    at_plain = k[(k["c_num_fingers"] == 0) & np.isclose(k["c_xmin"], k["xmin"], rtol=1e-6)]
    print(f"call C (clip_xmax + TPL, pl_package='powerlaw'): {len(k)} fitted; {int((k['c_num_fingers'] == 0).sum())} "
          f"clipped nothing, {len(at_plain)} of them at our plain xmin (rel 1e-6): there WW's alpha and Lambda are "
          f"a TPL fitted at the plain power law's xmin, as ours is")
    top = pd.Series({m: float(e.max()) for m, e in eigenvalues.items()})
    print("  " + agreement("tpl_alpha vs alpha", column(at_plain, "tpl_alpha"), at_plain["c_alpha"],
                           TOLERANCES["tpl_alpha"]))
    print("  " + agreement("tpl_lambda vs Lambda", column(at_plain, "tpl_lambda"), at_plain["c_Lambda"],
                           TOLERANCES["tpl_lambda"], top))
    off = at_plain[((at_plain["tpl_alpha"] - at_plain["c_alpha"]).abs() > TOLERANCES["tpl_alpha"][1])
                   | ((at_plain["tpl_lambda"] - at_plain["c_Lambda"]).abs() * top.reindex(at_plain.index)
                      > TOLERANCES["tpl_lambda"][1])]
    gains = []
    for m, r in off.iterrows():  # whose (alpha, lambda) is likelier on the same tail
        tail = eigenvalues[m][eigenvalues[m] >= r["xmin"] * (1 - 1e-9)]
        gains.append(tpl_loglikelihood(tail, r["tpl_alpha"], r["tpl_lambda"])
                     - tpl_loglikelihood(tail, r["c_alpha"], r["c_Lambda"]))
        print(f"    {m:34s} n {tail.size:3d}  ours alpha {r['tpl_alpha']:.4f} lambda {r['tpl_lambda']:.3e}  "
              f"WW alpha {r['c_alpha']:.4f} Lambda {r['c_Lambda']:.3e}  log-likelihood ours - WW {gains[-1]:+.3g}")
    if gains:
        print(f"  where they differ ({len(gains)}), ours has the higher log-likelihood on the same tail in "
              f"{sum(g > 0 for g in gains)} (mpmath's normaliser), WW's in {sum(g < 0 for g in gains)}; "
              f"largest gain of ours {max(gains):.3g}, of WW's {max(-min(gains), 0):.3g}")
    if ww_b is None or not len(ww_b):
        print("call B: not run (--tpl-blocks none)")
        return
    b = ww_b.set_index("module")[["alpha", "Lambda", "xmin", "status"]].add_prefix("b_")
    k = ours.join(b, how="inner")
    failed = k["b_status"] != "success"
    k = k[~failed]
    same = np.isclose(k["b_xmin"], k["xmin"], rtol=1e-6)
    print(f"call B (fit='TPL' alone): {len(k)} matrices ({int(failed.sum())} failed fits left out); its xmin (a TPL "
          f"fit at every candidate, the least KS distance) is our plain xmin for {int(same.sum())}")
    print("  " + agreement("tpl_alpha vs alpha", column(k, "tpl_alpha"), k["b_alpha"], TOLERANCES["tpl_alpha"]))
    print("  " + agreement("tpl_lambda vs Lambda", column(k, "tpl_lambda"), k["b_Lambda"], TOLERANCES["tpl_lambda"],
                           top))
    print("  " + agreement("xmin (plain fit) vs TPL xmin", k["xmin"], k["b_xmin"], ("rel", 1e-6)))
    print(f"  WW's TPL alpha at powerlaw 1.5's bound 1 (within 1e-3) for {int((k['b_alpha'] < 1.001).sum())} of "
          f"{len(k)}, ours for {int((k['tpl_alpha'] < 1.001).sum())}; where the xmin is the same ({int(same.sum())}):")
    print("    " + agreement("tpl_alpha vs alpha", column(k, "tpl_alpha")[same], k["b_alpha"][same],
                             TOLERANCES["tpl_alpha"]))
    print("    " + agreement("tpl_lambda vs Lambda", column(k, "tpl_lambda")[same], k["b_Lambda"][same],
                             TOLERANCES["tpl_lambda"], top))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished demo run: resources/models/<model> and "
                        "results/<model>/{inventory.parquet,tensors,spectra}")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tpl-blocks", default="0,7,14,21,29",
                        help="transformer blocks of WW's TPL call (plus the embedding): comma list, all or none")
    parser.add_argument("--tpl-powerlaw-path", help="a folder with powerlaw<2, first on the TPL call's path")
    parser.add_argument("--ww-path",
                        help="a folder with weightwatcher 0.7.7 (pip --target), first on the children's path")
    parser.add_argument("--ww-cache", help="keep WeightWatcher's JSON here (default RUN/ww_diagnostics); a file "
                        "already there is reused as is, so use one folder per checkpoint")
    parser.add_argument("--ww-only", action="store_true", help="run WeightWatcher's calls only (fills --ww-cache)")
    args = parser.parse_args()
    run = Path(args.run).resolve()
    checkpoint = run / "resources/models" / args.model
    cache = Path(args.ww_cache or run / "ww_diagnostics")
    cache.mkdir(parents=True, exist_ok=True)
    path = [args.ww_path] if args.ww_path else []
    literal, _ = run_weightwatcher("literal", checkpoint, cache / "literal.json", path_first=path)
    print(f"WeightWatcher {literal['weightwatcher']} (the literal call and A with powerlaw {literal['powerlaw']}); "
          f"checkpoint {checkpoint}")
    print(f"the literal call analyze(randomize=True, mp_fit=True, detX=True, fix_fingers='clip_xmax', fit='TPL'): "
          f"{'refused: ' + literal['refused'] if literal['refused'] else 'accepted'}")
    info_a, ww_a = run_weightwatcher("A", checkpoint, cache / "A.json", path_first=path)
    print(f"call A {info_a['kwargs']}: {len(ww_a)} layers, {info_a['cpu_s']:.0f} CPU s ({info_a['wall_s']:.0f} s wall)")
    tpl_path = [args.tpl_powerlaw_path] if args.tpl_powerlaw_path else []
    suffix = "_" + Path(tpl_path[0]).name if tpl_path else ""
    info_c, ww_c = run_weightwatcher("C", checkpoint, cache / f"C{suffix}.json", path_first=[*tpl_path, *path])
    tpl_failed = (ww_c["status"] != "success").all()
    print(f"call C {info_c['kwargs']}, powerlaw {info_c['powerlaw']}: {len(ww_c)} layers, "
          f"{info_c['cpu_s']:.0f} CPU s ({info_c['wall_s']:.0f} s wall)")
    ww_b = None
    if args.tpl_blocks != "none":
        name = f"B_{args.tpl_blocks.replace(',', '-')}{suffix}.json"
        info_b, ww_b = run_weightwatcher("B", checkpoint, cache / name, args.tpl_blocks, [*tpl_path, *path])
        print(f"call B {info_b['kwargs']} on blocks {args.tpl_blocks} and the embedding, powerlaw "
              f"{info_b['powerlaw']}: {len(ww_b)} layers, {info_b['cpu_s']:.0f} CPU s ({info_b['wall_s']:.0f} s wall)")
    if args.ww_only:
        return
    config = settings()
    ours, seconds, eigenvalues = our_diagnostics(run, args.model, config)
    print(f"ours: unit_diagnostics over {ours['unit'].nunique()} units, {len(ours)} rows, {seconds:.0f} CPU s; "
          f"settings {config}")
    statuses = ours["diagnostics_status"].value_counts().to_dict()
    print(f"our diagnostics_status: {statuses}")
    metrics = pd.concat(pd.read_parquet(p, columns=["matrix", "alpha", "xmin"])
                        for p in glob.glob(str(run / f"results/{args.model}/metrics/*.parquet")))
    plain = metrics.set_index(metrics["matrix"].str.removesuffix(".weight"))  # the run's plain power-law fit
    compare(ours, plain, ww_a)
    compare_tpl(ours, plain, eigenvalues, ww_b, ww_c, TPL_REASON if tpl_failed else "")


if __name__ == "__main__":
    main()
