"""Tools that drive the engine: the ``vigil`` command line, offline replay, the demo."""
