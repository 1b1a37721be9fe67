"""charrnn: character-level recurrent language models on a NumPy core."""

__version__ = "0.1.0"

from .layers import one_hot
from .model import CharRNN
from .sampling import sample

__all__ = ["CharRNN", "one_hot", "sample", "__version__"]
