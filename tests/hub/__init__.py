"""Tests of publishing to and loading from the Hub, and of the loopback Hub the tests use."""
