"""Vigil's engine: the Faust app, the topology, transports, kernel state and the CLI."""
