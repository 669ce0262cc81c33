"""Rule and station-registry schema, loader, compiler and the shipped rule packs."""
