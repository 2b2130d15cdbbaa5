"""The data: listings (layouts), samples table, decoded images, masks and the fixed folds."""
from .prepare import SearchData, prepare_data
from .samples import Samples, load_samples

__all__ = ["Samples", "SearchData", "load_samples", "prepare_data"]
