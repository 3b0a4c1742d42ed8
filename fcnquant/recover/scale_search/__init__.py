"""Power-of-two activation scales chosen by the int8 model's output error: the search (``exponent_search``, numpy
only), the searchable scales of a QDQ model (``groups``) and the driver (:func:`search_activation_scales`,
:func:`output_error`)."""
from __future__ import annotations

from fcnquant.recover.scale_search.groups import ScaleGroup, scale_groups, with_scale_inputs
from fcnquant.recover.scale_search.scale_search import (DEFAULT_IMAGES, METRICS, ScaleChange, ScaleSearchOptions,
                                                        ScaleSearchResult, error_shard, kl_divergence, output_error,
                                                        reference_shard, search_activation_scales)

__all__ = ["DEFAULT_IMAGES", "METRICS", "ScaleChange", "ScaleGroup", "ScaleSearchOptions", "ScaleSearchResult",
           "error_shard", "kl_divergence", "output_error", "reference_shard", "scale_groups",
           "search_activation_scales", "with_scale_inputs"]
