"""Tests of infoq_hf.information: the sliced mutual-information estimators."""
