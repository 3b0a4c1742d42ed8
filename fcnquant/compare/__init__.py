"""fcnquant.compare."""
