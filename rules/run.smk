# The run's lifecycle: what happens before the first job (read-only outputs refused, a killed job's
# temporaries removed, damaged manifests logged) and the run's last lines (which models finished).
from blockscope.runtime.run_guards import lock_error, read_only_error

# The run's last lines say which models finished and, for the others, why not.
RUN_STARTED = time.time()


def report_outcomes():
    for line in summary_lines(MODELS, RUN_STARTED):
        print(line)


def start_run(jobs):
    """Before any job: the temporaries that killed jobs left beside this run's outputs go (the run's
    lock makes those outputs its own, and none of its jobs has started), and a model left out for
    a damaged manifest gets that line in its log, for the run's last lines (report_outcomes)."""
    from blockscope.io.atomic import remove_stale_temporaries

    outputs = [path for job in jobs for path in job.output]
    for path in remove_stale_temporaries(*outputs):
        print(f"blockscope: removed {path}, the temporary of a job that was killed", file=sys.stderr)
    for model in MODELS:
        log = Path("logs") / model / "manifest.log"
        if model in BROKEN_MANIFESTS:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(f"ERROR {BROKEN_MANIFESTS[model]}\n")
        else:
            log.unlink(missing_ok=True)  # repaired since


# A run that cannot start ends in one line, not in Snakemake's report or traceback: another run holds
# this folder (Snakemake checks its lock only after building the DAG, and a DAG built while that run
# replaces its outputs can fail first, on a file just removed, as "Write-protected output files"), or
# the run cannot write where its jobs write (a read-only results/): blockscope.runtime.run_guards.
def stop_run(line):
    """End the run before any job, with `line` as its last line."""
    print(f"ERROR {line}", file=sys.stderr)
    raise SystemExit(1)


def one_line_when_blocked(execute):
    """workflow.execute, ending in one line where Snakemake would end in its lock or write-protection
    report (the files that report lists follow "affected files:")."""
    from snakemake.exceptions import LockException, ProtectedOutputException, WorkflowError

    @functools.wraps(execute)
    def checked(*args, **kwargs):
        try:
            return execute(*args, **kwargs)
        except (LockException, ProtectedOutputException) as exc:
            files = [line.strip() for line in str(exc).partition("affected files:")[2].splitlines() if line.strip()]
            line = lock_error() if isinstance(exc, LockException) else read_only_error(files) or lock_error()
            if line is None:
                raise
            stop_run(line)
        except WorkflowError as exc:  # after LockException, one of its kind
            # The DAG read a file's time while another run (holding the lock) replaced it: that run's
            # lock, not the vanished file, is what the user needs to hear about.
            if "concurrent process has deleted it" in str(exc) and lock_error() is not None:
                stop_run(lock_error())
            raise

    return checked


workflow.execute = one_line_when_blocked(workflow.execute)


def refuse_read_only_outputs(jobs):
    """Before any job: every file the jobs to run write (outputs, logs, benchmarks) can be written;
    else one line, where the first job would end in a PermissionError traceback."""
    paths = [path for job in jobs for path in (*job.output, *job.log, *filter(None, [job.benchmark]))]
    if line := read_only_error(paths):
        stop_run(line)


onstart:
    jobs = list(workflow.dag.needrun_jobs())
    refuse_read_only_outputs(jobs)
    start_run(jobs)


onsuccess:
    report_outcomes()
    if BROKEN_MANIFESTS:  # a model was left out: the run did not do all it was asked to
        raise SystemExit(1)


onerror:
    report_outcomes()
