"""Loading a checkpoint's HF processor, also where its class needlessly asks for torchvision.

Shared by the gateway (token names, text layout) and the encoder service (preprocessing): both
must see the same processor. Some processor classes (PixtralProcessor) are marked as needing
torchvision only because their module imports a helper from the torchvision image processor's
module, while the same helper lives in the PIL image processor's module. torchvision does not
load on a CPU-only torch here, so AutoProcessor refuses them. `load_hf_processor` then imports
the processor class with that module aliased to its PIL twin and builds it as AutoProcessor
would (its image processor comes from AutoImageProcessor, which picks the PIL backend).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

_MODELS = "transformers.models"


def load_hf_processor(path: str | Path, **kwargs: Any) -> Any:
    """`AutoProcessor.from_pretrained(path)`, or the same class built without torchvision."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, **kwargs)
    except ImportError as error:
        if "torchvision" not in str(error).lower():
            raise
        cls = processor_class(_processor_class_name(path), error)
        return cls.from_pretrained(path, **kwargs)


def processor_class(class_name: str, error: ImportError | None = None) -> type:
    """The real processor class `class_name` (not transformers' torchvision placeholder)."""
    from transformers.models.auto.processing_auto import (
        PROCESSOR_MAPPING_NAMES,
        model_type_to_module_name,
    )

    for model_type, name in PROCESSOR_MAPPING_NAMES.items():
        if name != class_name:
            continue
        module = model_type_to_module_name(model_type)
        _alias_pil_image_processor(module)
        try:
            found = importlib.import_module(f"{_MODELS}.{module}.processing_{module}")
        except ImportError:
            continue
        if hasattr(found, class_name):
            return getattr(found, class_name)
    raise ImportError(f"cannot load {class_name} without torchvision") from error


def _alias_pil_image_processor(module: str) -> None:
    """Point `image_processing_<module>` (torchvision) at `image_processing_pil_<module>`.

    NOTE: only when the torchvision module does not import: nothing that works is replaced.
    """
    name = f"{_MODELS}.{module}.image_processing_{module}"
    pil = f"{_MODELS}.{module}.image_processing_pil_{module}"
    if name in sys.modules or importlib.util.find_spec(pil) is None:
        return
    try:
        importlib.import_module(name)
    except ImportError:
        sys.modules[name] = importlib.import_module(pil)


def _processor_class_name(path: str | Path) -> str:
    from transformers.utils import cached_file

    for file in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        config = cached_file(str(path), file, _raise_exceptions_for_missing_entries=False)
        if config is not None:
            name = json.loads(Path(config).read_text()).get("processor_class")
            if name:
                return str(name)
    raise ImportError(f"{path} names no processor_class; its processor needs torchvision")
