"""fcnquant.data."""
