"""axpack: an Axolotl config pack with the tooling around it.

Raw chat JSONL -> prep -> SFT -> DPO -> merge -> GGUF -> quantize -> probe.
Heavy libraries (torch, transformers, axolotl, llama_cpp) are imported inside
the functions that need them so that ``axpack --help`` stays instant.
"""

__version__ = "0.1.0"
