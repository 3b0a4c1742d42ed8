"""fcnquant.observers."""
