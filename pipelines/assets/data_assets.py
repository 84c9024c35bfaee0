"""Data assets: the face dataset (generated if it is the embedded synthetic set and
missing) and its identity-disjoint splits with verification pairs."""


import dagster as dg
import pandas as pd

from components.data.ingest import FaceDataset, load_image_folder
from components.data.splits import assign_splits, make_pairs
from components.data.synthetic import SyntheticConfig, write_dataset
from pipelines.resources import PrivfaceSettings, dvc_data_md5


def ensure_synthetic(params: dict, settings: PrivfaceSettings, log=None) -> None:
    """Write the embedded synthetic dataset if the profile uses it and it is missing."""
    data = params["data"]
    root = settings.path(data["dir"])
    if data["source"] == "synthetic" and not (root.exists() and any(root.iterdir())):
        if log:
            log.info(f"generating the synthetic dataset into {root}")
        write_dataset(root, SyntheticConfig(**data["synthetic"]), progress=settings.progress)


@dg.asset(group_name="data", kinds={"python", "pandas"},
          description="The face dataset, ingested into the canonical RGB uint8 store with its manifest.")
def face_dataset(context: dg.AssetExecutionContext, settings: PrivfaceSettings) -> FaceDataset:
    params = settings.params()
    ensure_synthetic(params, settings, context.log)
    data = params["data"]
    ds = load_image_folder(settings.path(data["dir"]), size=data["image_size"], name=data["name"],
                           progress=settings.progress)
    context.add_output_metadata({
        "identities": int(ds.manifest["identity"].nunique()),
        "images": len(ds.manifest),
        "image_size": int(data["image_size"]),
        "version": ds.version,
        "dvc_data_md5": dvc_data_md5(),
        "source": str(settings.path(data["dir"])),
        "preview": dg.MetadataValue.md(ds.manifest.head(8).to_markdown(index=False)),
    })
    return ds


@dg.asset(group_name="data", kinds={"python", "pandas"},
          description="Identity-disjoint train/test/public splits and LFW-style verification pairs in 10 folds.")
def dataset_splits(context: dg.AssetExecutionContext, settings: PrivfaceSettings,
                   face_dataset: FaceDataset) -> dict:
    data = settings.params()["data"]
    manifest = assign_splits(face_dataset.manifest, data["splits"], seed=data["split_seed"])
    pairs = make_pairs(manifest, split="test", n_folds=data["pairs"]["folds"],
                       pairs_per_fold=data["pairs"]["pairs_per_fold"], seed=data["pairs"]["seed"])
    counts = manifest.groupby("split")["identity"].nunique().to_dict()
    context.add_output_metadata({
        **{f"identities_{k}": int(v) for k, v in counts.items()},
        "pairs": len(pairs),
        "genuine_pairs": int(pairs["label"].sum()),
        "folds": int(pairs["fold"].nunique()),
    })
    info = pd.DataFrame([{"name": face_dataset.name, "version": face_dataset.version}])
    return {"manifest": manifest, "pairs": pairs, "info": info}
