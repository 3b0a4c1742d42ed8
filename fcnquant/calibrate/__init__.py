"""fcnquant.calibrate."""
