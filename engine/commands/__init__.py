"""Sub-command groups of the `slidestream` CLI, one module per area."""

SEED_MAX = 2 ** 32 - 1  # config.SEED_MAX (config, jsonschema and the plugins are not imported at CLI start)
