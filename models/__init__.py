"""FCN model zoo (installed as fcnquant.models)."""
