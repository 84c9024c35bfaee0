"""How an asset refuses: a `dg.Failure` whose metadata says which file or key, what is wrong
and what to do, so the Dagster UI and the `privface` command show the cause, not a stack
trace. Also the lineage guard: an asset never computes on values of two datasets."""

from __future__ import annotations

import contextlib

import dagster as dg

from components.config import ParamsError
from components.data.errors import DataError

RERUN = "run the prepare job again (`privface run`, or materialize face_dataset and everything downstream)"


def refusal(problem: str, fix: str, file: str | None = None, **more) -> dg.Failure:
    """A failure the user can act on; `problem` is also its description."""
    metadata = {**({"file": file} if file else {}), "problem": problem, "fix": fix,
                **{k: dg.MetadataValue.text(str(v)) for k, v in more.items()}}
    return dg.Failure(description=f"{file}: {problem}" if file else problem, metadata=metadata,
                      allow_retries=False)


@contextlib.contextmanager
def refuse_bad_input():
    """DataError and ParamsError (bad data, bad params.yaml) become refusals."""
    try:
        yield
    except DataError as err:
        raise refusal(err.problem, err.hint, file=err.path) from err
    except ParamsError as err:
        raise refusal("; ".join(err.problems), err.hint, file=err.path) from err


def data_version(value) -> str:
    """The dataset version a stored value was computed from ("unknown" for values written
    before privface recorded it)."""
    if hasattr(value, "version") and hasattr(value, "manifest"):     # a FaceDataset
        return str(value.version)
    if isinstance(value, dict) and "info" in value:                    # dataset_splits
        return str(value["info"]["version"].iloc[0])
    if isinstance(value, dict):
        return str(value.get("data_version", "unknown"))
    return "unknown"


def require_one_dataset(**values) -> str:
    """The one dataset version of every input, or a refusal naming which input came from
    which version (e.g. splits of the last good dataset over images of a newer one)."""
    versions = {name: data_version(v) for name, v in values.items()}
    if len(set(versions.values())) > 1:
        listing = ", ".join(f"{name} from dataset version {v}" for name, v in versions.items())
        raise refusal(f"inputs come from different datasets: {listing}", RERUN)
    return next(iter(versions.values()))
