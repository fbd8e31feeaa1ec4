"""Port verification: the evidence a port report needs, produced by one command each.

* :mod:`.doctor` — what this machine has (devices, versions, Ascend settings) and one real encode per device;
* :mod:`.accuracy` — the device/dtype/backend under test against the CPU float32 reference;
* :mod:`.bench` — latency and throughput per batch size, device-synchronised;
* :mod:`.report` — JSON, Markdown tables and PNG plots for all three, and an ``index.md`` linking them;
* :mod:`.suite` — all three for one target in one go (``minilm-npu report``);
* :mod:`.settings` — what each run is asked to do; :mod:`.results` — what it found, typed, and its JSON form.

Encoders are used only through :class:`minilm_npu.contract.Encoder`. Nothing here imports torch_npu directly:
devices go through :mod:`minilm_npu.devices`.
"""
