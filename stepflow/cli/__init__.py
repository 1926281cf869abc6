"""The `stepflow` command line."""
