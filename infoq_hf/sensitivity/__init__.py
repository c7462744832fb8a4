"""Sensitivity search: InfoQ probing and the baselines it is judged against."""

from .table import SensitivityTable

__all__ = ["SensitivityTable"]
