"""The registered MLflow model of a defended system: images in, stored templates out.

Logged as an MLflow "model from code" (`serving_entry.py`) with the system bundle as an
artifact, so that loading it reads tensors with `torch.load(weights_only=True)` and never
unpickles a model object."""

from __future__ import annotations

import numpy as np
import torch
from mlflow.pyfunc import PythonModel

from components.defenses import load_system


class TemplateModel(PythonModel):
    """template(embed(protect(x))) for float32 images (N, 3, H, W) in [-1, 1]."""

    def load_context(self, context):
        bundle = torch.load(context.artifacts["system"], map_location="cpu", weights_only=True)
        self.system = load_system(bundle)

    def predict(self, context, model_input, params=None):
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            return self.system(x).numpy()
