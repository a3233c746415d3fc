"""Interoperability with the paper authors' PyTorch checkpoints (their ``save_pretrained`` format).

`load_pretrained` reads a directory (``config.json`` + ``model.pt`` / ``pytorch_model.bin`` /
``model.safetensors``) or ``hf://OWNER/NAME`` into our NNX model; `export_pretrained` writes a model or run
directory back; `import_pretrained` writes an ordinary run directory. No torch needed: ``torch_format`` reads and
writes ``torch.save`` zips with a restricted unpickler, ``safetensors`` the safetensors layout; the config and
tensor-name mapping, with its rules (tied ``lm_head``, Parcae's value-embedding placement), is in ``reference``.
"""

from attractor_jax.interop.api import export_pretrained, load_pretrained, read_reference, reference_state_dict
from attractor_jax.interop.reference import config_from_reference, config_to_reference
from attractor_jax.interop.safetensors import load_safetensors, save_safetensors
from attractor_jax.interop.torch_format import load_state_dict, save_state_dict

__all__ = ["config_from_reference", "config_to_reference", "export_pretrained", "load_pretrained",
           "load_safetensors", "load_state_dict", "read_reference", "reference_state_dict", "save_safetensors",
           "save_state_dict"]
