"""The two probes of the Ascend field kit (``benchmarks/npu_check.py``), each run in its own process.

* ``python benchmarks/npu_probes.py runtime OUT.json``: the runtime as minilm-npu sees it: torch and torch_npu
  versions (op-plugin is built into torch_npu; its git version is recorded), the devices, the SoC, the compile
  mode and who chose it, and the Ascend settings ``minilm-npu check`` explains (precision mode, HF32, fallbacks).
* ``python benchmarks/npu_probes.py client URL DTYPE``: one real client of a running ``minilm-npu serve`` (the
  openai package, httpx where it is missing) whose vectors are compared with the CPU's; prints JSON, exit 1 when
  the cosine is under the dtype's floor.
"""

from __future__ import annotations

import json
import sys

#: Texts of the client probe: short, another script, and one past the model's 256 tokens.
TEXTS = ["The cat sits on the mat.", "Ascend 910B 上的句向量", "x " * 300]


def runtime(out_path: str) -> int:
    out: dict[str, object] = {}
    try:
        import torch

        from minilm_npu import devices
        from minilm_npu.verify.ascend import ascend_settings

        out["torch"] = torch.__version__
        found = devices.available_devices()  # imports torch_npu and sets its compile mode up, as the engine does
        module = devices.torch_npu_module()
        out["torch_npu"] = getattr(module, "__version__", None)
        out["torch_npu_git"] = getattr(getattr(module, "version", None), "git_version", None)
        names = {d: devices.describe(devices.parse_devices(d)[0]).name for d in found}
        out["devices"] = names
        mode = devices.compile_mode()
        out["compile_mode"] = None if mode is None else {"jit_compile": mode.jit_compile, "source": mode.source}
        try:
            out["soc_version"] = module.npu.get_soc_version()
        except Exception as err:  # noqa: BLE001 - a release without it, or no torch_npu at all
            out["soc_version"] = f"unknown ({type(err).__name__})"
        chip = next((name for d, name in names.items() if d.startswith("npu")), None)
        out["settings"] = [s.as_dict() for s in ascend_settings(bool(chip), chip)]
    except Exception as err:  # noqa: BLE001 - the finding itself, written down
        out["error"] = f"{type(err).__name__}: {err}"
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(out, handle, indent=1)
    return 1 if "error" in out else 0


def client(url: str, dtype: str) -> int:
    import numpy as np

    try:
        import openai

        api = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        got = np.array([d.embedding for d in api.embeddings.create(model="m", input=TEXTS).data])
        used = f"openai {openai.__version__}"
    except ImportError:
        import httpx

        got = np.array(httpx.post(url + "/embed", json={"inputs": TEXTS}, timeout=120).json())
        used = f"httpx {httpx.__version__} (openai is not installed)"
    from minilm_npu import MiniLMEncoder

    want = MiniLMEncoder(device="cpu").encode(TEXTS)
    cosines = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    floor = 0.999 if dtype == "float32" else 0.99
    print(json.dumps({"client": used, "texts": len(TEXTS), "min_cosine_vs_cpu": float(cosines.min()), "floor": floor}))
    return 0 if cosines.min() >= floor else 1


if __name__ == "__main__":
    probe, *rest = sys.argv[1:]
    sys.exit(runtime(*rest) if probe == "runtime" else client(*rest))
