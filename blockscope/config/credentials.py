"""No config key may hold a credential: Snakemake keeps config values in plain text (under
.snakemake/metadata), so a token belongs in the environment. The value is never echoed."""

import re
from collections.abc import Mapping

from blockscope.config.origins import Origins, dotted, fail

# A credential key: one of these words anywhere, `api key`, or ending in `token` unless the word
# before names a vocabulary token or a rate (cls_token, n_token, num_experts_per_token are settings).
SECRET_WORDS = {"secret", "secrets", "password", "passwd", "passphrase", "credential", "credentials", "apikey"}
TOKEN_ROLES = {"cls", "mask", "pad", "bos", "eos", "unk", "sep", "class", "n", "image", "audio", "video",
               "vision", "boi", "eoi", "boa", "eoa", "start", "end", "special", "per"}


def is_credential_key(key) -> bool:
    """True for token, hf_token, api_key, password, client_secret, ...; False for pad_token_id,
    max_tokens, cls_token, max_position_embeddings."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key)).lower()
    words = re.findall(r"[a-z0-9]+", text)
    if not words:
        return False
    if SECRET_WORDS.intersection(words) or any(a == "api" and b == "key" for a, b in zip(words, words[1:])):
        return True
    return words[-1] == "token" and (len(words) == 1 or words[-2] not in TOKEN_ROLES)


def _credential_keys(node, keys=()):
    if isinstance(node, Mapping):
        for key, value in node.items():
            here = keys + (key,)
            if keys != ("models",) and is_credential_key(key):  # model slugs are names, not keys
                yield here
            yield from _credential_keys(value, here)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _credential_keys(value, keys + (index,))


def check_no_credentials(config: dict, origins: Origins):
    for keys in _credential_keys(config):
        fail(origins, keys,
             f"config key {dotted(keys)} looks like a credential; blockscope takes none from the config "
             f"(Snakemake stores config values in plain text under .snakemake/metadata)",
             "delete the key (its value is not shown here) and export HF_TOKEN in the environment instead")
