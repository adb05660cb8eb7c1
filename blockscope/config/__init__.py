"""The workflow's config: schema, credentials, cross-key rules."""
