"""resnet: ResNet image classifiers from a folder of photos to a trusted model."""

from .checkpoint import load_checkpoint
from .models import create_model, list_models
from .predict import Classifier

__all__ = ["Classifier", "create_model", "list_models", "load_checkpoint"]
__version__ = "0.1.0"
