"""The engines: token ids in, pooled vectors out, on one device.

* :mod:`.backend`: the :class:`~.backend.Backend` base every engine subclasses, the dtype names and the registry;
* :mod:`.checkpoint`: a BERT checkpoint's ``config.json`` and safetensors weights, checked before loading;
* :mod:`.packing`: a batch laid end to end, with the index tensors attention and pooling need;
* :mod:`.bert`: the lean packed-token BERT (layers, attention strategies, forward, pooling);
* :mod:`.packed`: the default engine on that BERT, with the CPU linear kernels (oneDNN float32, int8);
* :mod:`.graphs`: fixed-shape forwards captured as device graphs (accelerators);
* :mod:`.reference`: transformers' ``AutoModel``, the reference port's exact method;
* :mod:`.policy`: per-device engine choices (attention strategy, static-shape gears, dtypes, host allocator);
* :mod:`.cpu_kernels`: the running CPU's instruction sets and the kernels they select;
* :mod:`.cpu_execution`: how the host's threads are spent (worker shares, lanes, all-core runs, adaptive counts).

Imports go one way: encoder -> engine -> tokenization/modelfiles/devices.
"""
