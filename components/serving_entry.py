"""Entry file of the MLflow model-from-code: names the model class, nothing else."""

from mlflow.models import set_model

from components.serving import TemplateModel

set_model(TemplateModel())
