"""Sensitivity search: InfoQ probing and the baselines it is judged against."""

from .infoq import InfoQOptions
from .search import DATA_FREE_METHODS, METHODS, search
from .table import SensitivityTable

__all__ = ["DATA_FREE_METHODS", "METHODS", "InfoQOptions", "SensitivityTable", "search"]
