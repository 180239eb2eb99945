"""genindex: image retrieval as generation (IRGen) behind a Faiss-shaped index.

>>> from genindex import GenerativeIndex
>>> index = GenerativeIndex.fit(xb, labels)
>>> D, I = index.search(xq, k=10)
"""

from .checks import NotTrainedError
from .config import DecoderConfig, IndexConfig, TokenizerConfig
from .container import IndexFormatError
from .faiss_api import SearchParameters
from .index import GenerativeIndex, SearchResult
from .refresh import RefreshHistory
from .train import TrainHistory

__version__ = "0.1.0"

__all__ = [
    "DecoderConfig",
    "GenerativeIndex",
    "IndexConfig",
    "IndexFormatError",
    "NotTrainedError",
    "RefreshHistory",
    "SearchParameters",
    "SearchResult",
    "TokenizerConfig",
    "TrainHistory",
    "__version__",
]
