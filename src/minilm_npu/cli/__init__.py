"""Command line: ``minilm-npu COMMAND``; see :mod:`minilm_npu.cli.main`."""
