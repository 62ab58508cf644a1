"""The library's own exceptions. The CLI prints their message and exits 2, with no traceback."""


class SltlabError(Exception):
    """Base class: anything a user can fix from the message alone."""


class ConfigError(SltlabError, ValueError):
    """A config field has a bad value. The message names the field and what it accepts."""

    def __init__(self, field: str, problem: str, accepts: str | None = None):
        self.field = field
        self.problem = problem
        self.accepts = accepts
        msg = f"config field '{field}': {problem}"
        if accepts:
            msg += f" (accepts: {accepts})"
        super().__init__(msg)


class DataError(SltlabError):
    """Input data is missing or malformed. The message names the file (and line) and the setting to change."""


class ArtifactError(SltlabError):
    """A ticket artifact is truncated, corrupted, of a wrong kind or of a newer format."""


class StoreError(SltlabError):
    """The results store cannot answer (unknown run id, unreadable file)."""


class DivergedError(SltlabError):
    """A search or training run blew up (non-finite loss, or a loss far above where it started). Not a bug: the
    executor records the cell as `diverged`, with the reason and the step, and the sweep goes on."""

    def __init__(self, reason: str, step: int | None = None, loss: float | None = None):
        self.reason, self.step, self.loss = reason, step, loss
        where = f" at step {step}" if step is not None else ""
        super().__init__(f"diverged{where}: {reason}")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler's pre-emption, `kill PID`): stopped like Ctrl-C, so every path that keeps
    finished runs and marks running ones interrupted on Ctrl-C does so here too."""
