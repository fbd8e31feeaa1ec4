"""Port verification: the evidence a port report needs, produced by one command each.

* :mod:`.doctor` — what this machine has (devices, versions, Ascend settings) and one real encode per device;
* :mod:`.accuracy` — the device/dtype/backend under test against the CPU float32 reference;
* :mod:`.bench` — latency and throughput per batch size, device-synchronised;
* :mod:`.report` — JSON, Markdown tables and PNG plots for all three, and an ``index.md`` linking them.

Nothing here imports torch_npu directly: devices go through :mod:`minilm_npu.devices`.
"""
