"""The end of a run in one block: which models finished, which did not, and why.

Read from the files a run leaves: a model finished when its report was written during this run
or already existed with no job of the model failing now; the reason a model did not finish is
the first error line (`ERROR [model] file: what. Fix: ...`, or an exception's last line) of a
log of that model written during the run.
"""

from pathlib import Path

from blockscope.layout import REPORT


def _first_error(log: Path) -> str | None:
    lines = log.read_text(errors="replace").splitlines()
    for line in lines:
        if line.startswith("ERROR "):
            return line.removeprefix("ERROR ")
    if any(line.startswith("Traceback") for line in lines):
        last = next((line for line in reversed(lines) if line.strip()), "")
        return f"{last.strip()} (see {log})"
    return None


def model_outcome(model: str, since: float, root=".") -> dict:
    """{model, finished, reason} of one model for the run that started at `since` (epoch seconds)."""
    root = Path(root)
    errors = []
    logs = root / "logs" / model
    if logs.is_dir():
        for log in sorted(logs.rglob("*.log"), key=lambda p: p.stat().st_mtime):
            if log.stat().st_mtime >= since and (error := _first_error(log)):
                errors.append(f"{log.relative_to(root / 'logs' / model).with_suffix('')}: {error}")
    report = root / REPORT.format(model=model)
    if errors:
        return {"model": model, "finished": False, "reason": errors[0]}
    if report.exists():
        return {"model": model, "finished": True, "reason": ""}
    return {"model": model, "finished": False, "reason": "not reached: a job it needs failed or was not run"}


def summary_lines(models, since: float, root=".") -> list:
    """Human-readable lines for the end of the run's log."""
    outcomes = [model_outcome(model, since, root) for model in models]
    done = [o["model"] for o in outcomes if o["finished"]]
    lines = [f"blockscope: {len(done)} of {len(outcomes)} models finished"
             + (f" ({', '.join(done)})" if done else "")]
    lines += [f"  NOT FINISHED {o['model']}: {o['reason']}" for o in outcomes if not o["finished"]]
    return lines
