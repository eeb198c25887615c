"""Built-in tiny models: real transformers architectures at hidden size 64, random weights.

``resolve_model_path`` builds one once into ``cache_root()/models/<name>-v<_TINY_VERSION>`` with
``save_pretrained``; it is then loaded like any checkpoint through ``from_pretrained``, so the
embedded default exercises the same loading path as a real model. The processor (word-level
tokenizer, *Pil image processor, chat template) is made locally: nothing is downloaded. The
vision towers see 32x32 images (the synthetic data's size) as 4x4 patches of 8 pixels.

``TINY_MODELS`` maps each name to its builder, ``builder(path, image_size=32, patch_size=8,
seed=0)``, which saves a model and its processor to ``path``. One module per family;
``common`` holds the parts several families share.

To add a tiny model:

1. Write ``fedumm/models/tiny/<family>.py`` with ``build_tiny_<name>`` of that signature, made
   from ``common`` (``tiny_tokenizer``, ``llama_text_config``, ``vision_dims``, ``save_model``);
   import transformers inside the builder, so importing this package stays cheap.
2. Register it with one line below: ``register_tiny("tiny-<name>", <family>.build_tiny_<name>)``
   (a new module also joins the ``from fedumm.models.tiny import ...`` line). Parts that
   ``model.compose`` assembles (a vision encoder, a causal LM) register with
   ``register_tiny_part`` instead; ``resolve_model_path`` builds both kinds.
3. Test it in ``tests/models/tiny/test_<family>.py`` and add its row to ``CASES`` in
   ``tests/models/test_families.py``, which checks that every registered name is covered.

Changing what an existing builder writes needs a bump of ``_TINY_VERSION`` (every model) or of
its entry in ``_MODEL_VERSIONS`` (that model alone); a new name does not.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from fedumm.errors import ConfigError
from fedumm.models.tiny import blip_vqa, emu3, idefics3, janus, llava, minicpm_v, paligemma, parts, qwen2_vl
from fedumm.models.tiny.common import tiny_vocab

__all__ = [
    "TINY_MODELS",
    "TINY_PARTS",
    "build_once",
    "cache_root",
    "register_tiny",
    "register_tiny_part",
    "resolve_model_path",
    "tiny_vocab",
]

# Bump when the architecture or vocabulary changes so stale caches are not reused.
_TINY_VERSION = "3"  # 3: tiny-janus has a trained VQ tokenizer on an 8x8 grid
# A bump of one model's builder alone, so the others' caches (minutes of VQ training) stay valid.
# tiny-emu3 4: 64 px images, 8x8 codes. (tiny-janus keeps 3: since its VQ trains on one thread a
# build no longer depends on the thread count; a cached v3 was one of those equally trained draws.)
_MODEL_VERSIONS: dict[str, str] = {"tiny-emu3": "4"}

Builder = Callable[..., None]  # builder(path, image_size=32, patch_size=8, seed=0)

TINY_MODELS: dict[str, Builder] = {}
#: Parts of a composed model (``model.compose``): a vision encoder, a causal LM.
TINY_PARTS: dict[str, Builder] = {}


def _registrar(table: dict[str, Builder], what: str, name: str, builder: Builder | None):
    def add(fn: Builder) -> Builder:
        if name in TINY_MODELS or name in TINY_PARTS:
            raise ValueError(f"{what} {name!r} is already registered by {(TINY_MODELS | TINY_PARTS)[name].__name__}")
        table[name] = fn
        return fn

    return add if builder is None else add(builder)


def register_tiny(name: str, builder: Builder | None = None):
    """Add ``builder`` as the tiny model ``name``; without ``builder``, a decorator that does.
    A name registered twice (as a model or a part) is a ValueError."""
    return _registrar(TINY_MODELS, "tiny model", name, builder)


def register_tiny_part(name: str, builder: Builder | None = None):
    """As ``register_tiny``, for a part that ``model.compose`` names (not a whole VLM)."""
    return _registrar(TINY_PARTS, "tiny part", name, builder)


register_tiny("tiny-llava", llava.build_tiny_llava)  # the default
register_tiny("tiny-llava-next", llava.build_tiny_llava_next)
register_tiny("tiny-qwen2-vl", qwen2_vl.build_tiny_qwen2_vl)
register_tiny("tiny-qwen2.5-vl", qwen2_vl.build_tiny_qwen2_5_vl)
register_tiny("tiny-idefics3", idefics3.build_tiny_idefics3)
register_tiny("tiny-smolvlm", idefics3.build_tiny_smolvlm)
register_tiny("tiny-paligemma", paligemma.build_tiny_paligemma)
register_tiny("tiny-janus", janus.build_tiny_janus)
register_tiny("tiny-minicpm-v", minicpm_v.build_tiny_minicpm_v)
register_tiny("tiny-minicpm-v4.7", minicpm_v.build_tiny_minicpm_v4_7)
register_tiny("tiny-blip-vqa", blip_vqa.build_tiny_blip_vqa)
register_tiny("tiny-emu3", emu3.build_tiny_emu3)
register_tiny_part("tiny-clip-vision", parts.build_tiny_clip_vision)
register_tiny_part("tiny-llama", parts.build_tiny_llama)

# "name" or "org/name", each part starting with a letter, digit or underscore.
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?")


def cache_root() -> Path:
    return Path(os.environ.get("FEDUMM_CACHE", Path.home() / ".cache" / "fedumm"))


def resolve_model_path(name_or_path: str) -> str:
    """Map a built-in tiny model or part name to its cached folder (building it once); pass
    others on."""
    builder = TINY_MODELS.get(name_or_path) or TINY_PARTS.get(name_or_path)
    if builder is None:
        path = Path(name_or_path).expanduser()
        if path.exists():
            return str(path)
        if _HUB_ID.fullmatch(name_or_path):
            return name_or_path
        raise ConfigError(f"model.name_or_path: no such folder {name_or_path!r}")
    version = _MODEL_VERSIONS.get(name_or_path, _TINY_VERSION)
    return build_once(cache_root() / "models" / f"{name_or_path}-v{version}", builder)


def build_once(target: Path, builder: Callable[[Path], None]) -> str:
    """``target`` as a string, after ``builder(folder)`` wrote a checkpoint there unless one
    (its config.json) is already present. It builds in a sibling temp folder and renames, so a
    crash never leaves half a checkpoint and concurrent builders keep one result."""
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            builder(tmp)
            if (target / "config.json").is_file():  # another process won the race
                shutil.rmtree(tmp)
            else:
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return str(target)
