"""Which tensors compare reads, and how: the graph index (:mod:`.graph`), the float/quantized tensor pairs
(:mod:`.pairing`), the isolated rewrite (:mod:`.isolated`) and integer taps of DequantizeLinear outputs
(:mod:`.integer_taps`)."""
