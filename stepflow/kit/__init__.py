"""What step authors ship: the entrypoint that runs a Python step or an SDK function from an Input, and the
packaging that bundles it with its dependencies (Docker images; Lambda zips)."""
