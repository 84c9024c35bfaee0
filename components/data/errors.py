"""The one error type for bad input data, so callers can tell a user's data problem
(named file, named problem) from a bug."""


class DataError(ValueError):
    """Bad input data. The message names the file (or folder) and what is wrong with it."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
