"""Tests of the `infoq` command."""
