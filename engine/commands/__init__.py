"""Sub-command groups of the `slidestream` CLI, one module per area."""
