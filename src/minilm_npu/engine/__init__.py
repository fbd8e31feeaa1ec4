"""The engines: token ids in, pooled vectors out, on one device.

* :mod:`.backend`: the :class:`~.backend.Backend` protocol, the dtype names and the backend registry;
* :mod:`.bert`: the lean packed-token BERT (weights, packing, forward, pooling);
* :mod:`.packed`: the default engine on that BERT, with the CPU linear kernels (oneDNN float32, int8);
* :mod:`.reference`: transformers' ``AutoModel``, the reference port's exact method;
* :mod:`.policy`: per-device engine choices (attention strategy, static-shape gears, dtypes, host allocator).

Imports go one way: encoder -> engine -> tokenization/modelfiles/devices.
"""
