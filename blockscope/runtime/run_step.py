"""The glue every workflow script shares: log redirection and user-facing errors."""

import contextlib
import logging
import sys
import time
import traceback

from blockscope.errors import BlockscopeError


def run_step(snakemake, step):
    """Run step(snakemake) with stdout and stderr sent to the rule's log.

    A BlockscopeError ends the job with its one-line message (model, file, fix) as the
    last line of the log and of stderr, instead of a traceback.
    """
    log_path = snakemake.log[0]
    real_stderr = sys.stderr
    with open(log_path, "w", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        logging.basicConfig(stream=log, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                            force=True)
        started = time.perf_counter()
        try:
            step(snakemake)
        except BlockscopeError as exc:
            print(f"ERROR {exc}", file=log)
            print(f"ERROR {exc}", file=real_stderr)
            sys.exit(1)
        except Exception:  # an unexpected failure: its traceback belongs in the log too
            traceback.print_exc(file=log)
            raise
        logging.info("done in %.2f s", time.perf_counter() - started)
