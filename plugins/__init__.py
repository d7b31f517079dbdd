"""Built-in slidestream plugins, one folder per kind."""
