"""Which tensors compare reads, and how: the graph index (:mod:`.graph`), the float/quantized tensor pairs
(:mod:`.pairing`), the isolated rewrite (:mod:`.isolated`), integer taps of DequantizeLinear outputs
(:mod:`.integer_taps`) and the copy that keeps an exposing model's logits those of the plain model
(:mod:`.plain_logits`)."""
