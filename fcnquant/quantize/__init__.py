"""fcnquant.quantize."""
