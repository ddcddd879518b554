"""SqueezeNet: AlexNet-level accuracy with 50x fewer parameters, as practical software."""

from .errors import SqueezeNetError
from .model import (
           FIRES,
           VERSIONS,
           Fire,
           SqueezeNet,
           metaparameter_fires,
           squeezenet1_0,
           squeezenet1_1,
)
from .zoo import create_model, list_models, load_weights

__version__ = "0.1.0"
__all__ = [
           "FIRES",
           "VERSIONS",
           "Fire",
           "SqueezeNet",
           "SqueezeNetError",
           "create_model",
           "list_models",
           "load_weights",
           "metaparameter_fires",
           "squeezenet1_0",
           "squeezenet1_1",
]
