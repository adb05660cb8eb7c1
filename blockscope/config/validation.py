"""Config validation, the entry point: the schema the caller names, with defaults filled in, then
what a schema cannot say.

Three passes, each stopping at its first failure with one short BlockscopeError that names the
key, the file (or --config) that held it and the fix (origins.py):

1. credentials (credentials.py): no key may hold a secret (Snakemake keeps config values in
   plain text); the value is never echoed;
2. the schema (schema_check.py, draft 2020-12): unknown keys get the nearest valid name, long
   enums the nearest values, never the whole list;
3. rules across keys (cross_keys.py): like references, synthetic model types, k_min <= k_max,
   one more format than thresholds, windows that fit in max_tokens, ...

It runs on every snakemake invocation, so the valid path reads no file but the schema and
imports nothing heavy (transformers' model types are read from its source, not imported).
"""

from blockscope.config.credentials import check_no_credentials
from blockscope.config.cross_keys import check_cross_keys
from blockscope.config.origins import Origins
from blockscope.config.schema_check import check_schema


def validate_config(config: dict, schema_path, *, configfiles=("config.yaml",), cli_configfiles=(),
                    command_line=None) -> dict:
    """Validate `config` in place against the JSON schema at `schema_path` (the workflow's
    schemas/config.schema.yaml: the caller names it), fill defaults, check rules across keys.
    Returns config.

    configfiles: every file the config was read from (Snakemake's workflow.configfiles);
    cli_configfiles: those given with --configfile (workflow.overwrite_configfiles), which
    take precedence; command_line: the --config values. They only serve to name, in an
    error, the file (or the command line) that held the bad key.
    """
    origins = Origins(configfiles, cli_configfiles, command_line)
    check_no_credentials(config, origins)
    check_schema(config, schema_path, origins)
    check_cross_keys(config, origins)
    return config
