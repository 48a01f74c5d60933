"""One error hierarchy. Each error carries data and knows its exit code; the CLI turns
it into one sentence (its ``str``) and that code, never a traceback."""

from __future__ import annotations


class ImggenhubError(Exception):
    exit_code = 1


class SpecError(ImggenhubError):
    """Bad input: prompts, flags, files. Nothing ran."""

    exit_code = 2


class MissingDependencyError(ImggenhubError):
    def __init__(self, module: str, extra: str = "local"):
        super().__init__(
            f"This needs the Python package '{module}', which is not installed; "
            f"install it with: pip install 'imggenhub[{extra}]'")
        self.module = module
        self.extra = extra


class CredentialsError(ImggenhubError):
    exit_code = 4


class RunNotFoundError(ImggenhubError):
    exit_code = 2


class NotebookFailedError(ImggenhubError):
    """The job's notebook raised: carries the failing cell and what it said."""

    def __init__(self, message: str, *, cell_index: int | None = None, ename: str = "",
                 evalue: str = "", log_tail: str = "", run_id: str | None = None):
        super().__init__(message)
        self.cell_index = cell_index
        self.ename = ename
        self.evalue = evalue
        self.log_tail = log_tail
        self.run_id = run_id
