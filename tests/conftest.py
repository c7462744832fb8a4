from hub_fixtures import hub_server  # noqa: F401  (the loopback Hub fixture)
