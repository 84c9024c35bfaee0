"""What `privface run` checks before it starts Dagster: the profile and the params file
(against the schema), the defense names, and the data folder's structure and identity
count. These need no image decoding, so a wrong path or a typo is reported in a second,
not after a Dagster run has started, and nothing is created or written."""

from __future__ import annotations

from pathlib import Path


class InputProblem(Exception):
    """A refused input: `title` and `lines` of (key, value) for the CLI's block."""

    def __init__(self, title: str, lines: list[tuple[str, str]]):
        super().__init__(title)
        self.title = title
        self.lines = lines


def precheck(args, make_settings):
    """The settings of this run, or InputProblem. `make_settings(args)` builds them."""
    from components.config import ParamsError
    from components.data.errors import DataError
    from components.data.ingest import scan_folder
    from components.data.splits import split_sizes
    from components.defenses import DEFENSES

    names = [x.strip() for x in (args.defenses or "").split(",") if x.strip()]
    unknown = [d for d in names if d not in DEFENSES]
    if unknown:
        raise InputProblem(f"unknown defense(s) {unknown}", [("known", ", ".join(DEFENSES)),
                                                            ("fix", "pick from the known ones with --defenses")])
    if args.params and not Path(args.params).is_file():
        raise InputProblem("the params file does not exist", [("file", str(Path(args.params).resolve())),
                                                             ("fix", "pass an existing file with --params")])
    settings = make_settings(args)
    try:
        params = settings.params()
    except ParamsError as err:
        raise InputProblem("the params file cannot be used",
                           [("file", err.path), *(("problem", p) for p in err.problems), ("fix", err.hint)]) from err
    data = params["data"]
    if args.data_dir:
        root = Path(args.data_dir).expanduser().resolve()
    elif data["source"] == "folder":            # params.yaml names a folder of its own
        root = settings.path(data["dir"])
    else:                                       # the synthetic set: generated, never malformed
        return settings
    try:
        identities = scan_folder(root)
    except DataError as err:
        raise InputProblem("the data folder cannot be used",
                           [("file", err.path), ("problem", err.problem), ("fix", err.hint)]) from err
    k = len(identities)
    if k < data["min_identities"]:
        raise InputProblem("the data folder has too few identities", [
            ("folder", str(root)),
            ("problem", f"{k} identity folder(s); the {params['profile']} profile needs at least "
                        f"{data['min_identities']} (data.min_identities)"),
            ("fix", "add identities, or use a profile or params file with a lower data.min_identities")])
    try:
        split_sizes(k, data["splits"])
    except ValueError as err:
        raise InputProblem("the data folder has too few identities for the splits", [
            ("folder", str(root)), ("problem", str(err)),
            ("fix", "add identities, or change data.splits in the params file")]) from err
    return settings
