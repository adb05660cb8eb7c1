"""Config validation, the entry point: the schema the caller names, with defaults filled in, then
what a schema cannot say.

First the raw config files (config_files.py): a key given twice in one mapping is refused with
its two lines (YAML keeps the last silently); then --config text is read as the schema's types
(command_line.py: Snakemake passes nested --config values as text). Then three passes, each
stopping at its first failure with one short BlockscopeError that names the key, the file (or
--config) that held it and the fix (origins.py):

1. credentials (credentials.py): no key may hold a secret (Snakemake keeps config values in
   plain text); the value is never echoed;
2. the schema (schema_check.py, draft 2020-12): unknown keys get the nearest valid name, long
   enums the nearest values, never the whole list;
3. rules across keys (cross_keys.py): like references, synthetic model types, k_min <= k_max,
   one more format than thresholds, ...; a model's base, compare pairs and series (model_pairs.py,
   which also names a peft model's missing base before the schema pass, with its fix); the
   evaluation keys (evaluation_keys.py): those still under headmerge read as eval's with a
   warning, windows that fit in max_tokens.

It runs on every snakemake invocation, so the valid path reads no file but the config files
(composed by libyaml, about a millisecond) and the schema, and imports nothing heavy
(transformers' model types are read from its source, not imported).
"""

from blockscope.config.command_line import coerce_command_line
from blockscope.config.config_files import check_config_files
from blockscope.config.credentials import check_no_credentials
from blockscope.config.cross_keys import check_cross_keys
from blockscope.config.evaluation_keys import check_evaluation, given_keys, move_deprecated_keys
from blockscope.config.model_pairs import check_adapter_base
from blockscope.config.origins import Origins
from blockscope.config.schema_check import check_schema, load_schema


def validate_config(config: dict, schema_path, *, configfiles=("config.yaml",), cli_configfiles=(),
                    command_line=None) -> dict:
    """Validate `config` in place against the JSON schema at `schema_path` (the workflow's
    schemas/config.schema.yaml: the caller names it), fill defaults, check rules across keys.
    Returns config.

    configfiles: every file the config was read from (Snakemake's workflow.configfiles);
    cli_configfiles: those given with --configfile (workflow.overwrite_configfiles), which
    take precedence; command_line: the --config values. The files are read again for keys
    given twice; otherwise these serve to name, in an error, the file (or the command line)
    that held the bad key, and to find the --config text to read as the schema's types.
    """
    origins = Origins(configfiles, cli_configfiles, command_line)
    check_config_files(origins.files)  # no key given twice (YAML would keep the last silently)
    check_no_credentials(config, origins)
    if command_line:  # nested --config values arrive as text: "8" -> 8 where the schema says integer
        coerce_command_line(config, command_line, load_schema(schema_path), origins)
    given = given_keys(config)
    check_adapter_base(config, origins)  # a peft model without base, with a fix the schema's message lacks
    check_schema(config, schema_path, origins)
    read_from = move_deprecated_keys(config, given, origins)  # headmerge's keys of before 0.3.0, with a warning
    check_cross_keys(config, origins)
    check_evaluation(config["eval"], origins, read_from)
    return config
