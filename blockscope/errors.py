"""One error type for everything a user can fix: it names the model, the file and the fix."""


class BlockscopeError(Exception):
    """A user-facing failure. str() is one line: `[model] file: what went wrong. Fix: remedy`."""

    def __init__(self, what: str, *, model: str | None = None, path=None, fix: str | None = None):
        self.model, self.path, self.what, self.fix = model, path, what, fix
        parts = []
        if model:
            parts.append(f"[{model}]")
        if path:
            parts.append(f"{path}:")
        parts.append(what.rstrip("."))
        message = " ".join(parts) + "."
        if fix:
            message += f" Fix: {fix.rstrip('.')}."
        super().__init__(message)
