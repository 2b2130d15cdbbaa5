"""The data: listings (layouts), samples table, decoded images, masks and the fixed folds."""
from typing import TYPE_CHECKING

from ..lazy import lazy_exports

__all__ = ["Samples", "SearchData", "load_samples", "prepare_data"]
__getattr__ = lazy_exports(__name__, {"SearchData": ".prepare", "prepare_data": ".prepare", "Samples": ".samples",
                                      "load_samples": ".samples"})

if TYPE_CHECKING:
    from .prepare import SearchData, prepare_data
    from .samples import Samples, load_samples
