"""The one error type for bad input data, so callers can tell a user's data problem
(named file, named problem, what to do about it) from a bug."""

DEFAULT_HINT = "fix or remove it, then run again"


class DataError(ValueError):
    """Bad input data. The message names the file (or folder) and what is wrong with it;
    `hint` says what the user can do (the CLI prints it under the problem)."""

    def __init__(self, path, problem: str, hint: str = DEFAULT_HINT):
        self.path = str(path)
        self.problem = problem
        self.hint = hint
        super().__init__(f"{self.path}: {problem}")
