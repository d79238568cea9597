"""The checkpoint's HF processor, also where its video processor needs torchvision.

Shared: the encoder service runs it on media, the gateway reads its placeholder names.

transformers' video processors are torchvision backends (`BaseVideoProcessor` ->
`TorchvisionBackend`), and torchvision does not load against this machine's CPU torch; without
it `AutoProcessor.from_pretrained` refuses every processor that has a video processor, even for
images. `load_processor` then builds the same processor with the checkpoint's own video
processor class, whose pixel operations are replaced by Pillow / torch ones:

- `normalize`, `center_crop`, `pad`, `convert_to_rgb`: the same arithmetic as torchvision's
  (subtract-divide, slicing, zero padding), so their output is identical;
- `resize`: Pillow per frame, as the processors' PIL image backends do (torchvision's
  antialiased resize differs by a few 1e-2 on CLIP; identical when frames already have the
  target size).

Frame sampling, sizes and the processor's replacement text stay the class's own. A user with
torchvision gets HF's processor unchanged.

Image processors that are torchvision backends with no PIL twin (Phi-4-multimodal's) are
replaced by our own torch ones (`_OWN_IMAGE_PROCESSORS`), computing the same outputs; the
processor is then built from its parts, as for video.

Other processor classes (PixtralProcessor) are marked as needing torchvision only because
their module imports a helper from the torchvision image processor's module, while the same
helper lives in the PIL image processor's module: `processor_class` imports them with that
module aliased to its PIL twin.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protos.errors import Unsupported

_VIDEO_CONFIG = "video_preprocessor_config.json"
_PREPROCESSOR = "preprocessor_config.json"
_MODELS = "transformers.models"
# HF image processor (torchvision only) -> (module, class) of ours that computes the same
_OWN_IMAGE_PROCESSORS = {
    "Phi4MultimodalImageProcessor": (
        "protos.phi4mm_image_processing",
        "Phi4MultimodalImageProcessorTorch",
    ),
}


def load_processor(path: str | Path, **kwargs: Any) -> Any:
    """`AutoProcessor.from_pretrained(path)`, else (torchvision missing) the same processor:
    with its video processor's pixel operations done by Pillow and torch, our own image
    processor, or its class imported beside the PIL image processor."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, **kwargs)
    # NOTE: AutoImageProcessor says "missing torchvision" with a ValueError, the others with
    # an ImportError
    except (ImportError, ValueError) as error:
        if "torchvision" not in str(error).lower():
            raise
        refused = ImportError(str(error))
    if (Path(path) / _VIDEO_CONFIG).is_file() or _own_image_processor(Path(path)):
        return _processor_from_parts(Path(path))
    return processor_class(_processor_class_name(path), refused).from_pretrained(path, **kwargs)


def _processor_from_parts(path: Path) -> Any:
    processor_class = _processor_class(path)
    processor_dict, _ = processor_class.get_processor_dict(str(path))
    parts = [_sub_processor(attribute, path) for attribute in processor_class.get_attributes()]
    # NOTE: same name, so the processor reads (and saves) as the checkpoint's own class
    accepting = type(processor_class.__name__, (_AcceptsPilVideo, processor_class), {})
    return accepting.from_args_and_dict(parts, processor_dict)


class _AcceptsPilVideo:
    """ProcessorMixin's class check looks `VideoProcessorMixin` up in transformers' exports,
    which lack it without torchvision; the stand-in is checked against the real class."""

    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> type:
        from transformers.video_processing_utils import VideoProcessorMixin

        if argument_name == "video_processor" and isinstance(argument, VideoProcessorMixin):
            return VideoProcessorMixin
        return super().check_argument_for_proper_class(argument_name, argument)  # type: ignore[misc]


def _processor_class(path: Path) -> type:
    """The class `AutoProcessor` would pick: processor_config.json's, else the config's."""
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    for name in ("processor_config.json", _VIDEO_CONFIG, "preprocessor_config.json"):
        file = path / name
        if file.is_file() and (class_name := json.loads(file.read_text()).get("processor_class")):
            return getattr(transformers, class_name)
    return PROCESSOR_MAPPING[type(AutoConfig.from_pretrained(path))]


def _own_image_processor(path: Path) -> type | None:
    """Our class standing in for the checkpoint's image processor, if it needs one."""
    name = None
    for file, key in (("processor_config.json", "image_processor"), (_PREPROCESSOR, None)):
        if (path / file).is_file():
            config = json.loads((path / file).read_text())
            name = name or (config.get(key, {}) if key else config).get("image_processor_type")
    if name not in _OWN_IMAGE_PROCESSORS:
        return None
    module, class_name = _OWN_IMAGE_PROCESSORS[name]
    return getattr(importlib.import_module(module), class_name)


def _sub_processor(attribute: str, path: Path) -> Any:
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.feature_extraction_auto import AutoFeatureExtractor

    if attribute == "video_processor":
        return pil_video_processor(path)
    loaders = {
        "tokenizer": AutoTokenizer,
        "image_processor": _own_image_processor(path) or AutoImageProcessor,
        "feature_extractor": AutoFeatureExtractor,
        "audio_processor": AutoFeatureExtractor,
    }
    if attribute not in loaders:
        raise Unsupported(
            f"the processor of {path} needs torchvision for its video processor, and its "
            f"{attribute} cannot be loaded without it; install torchvision"
        )
    return loaders[attribute].from_pretrained(str(path))


def pil_video_processor(path: Path) -> Any:
    """The checkpoint's video processor class with Pillow / torch pixel operations; where the
    class's own module imports torchvision, one that refuses videos with that reason."""
    config = json.loads((path / _VIDEO_CONFIG).read_text())
    class_name = config["video_processor_type"]
    try:
        video_class = _video_processor_class(class_name)
    except ImportError:
        from transformers.video_processing_utils import BaseVideoProcessor

        video_class = type(class_name, (BaseVideoProcessor,), {"preprocess": _needs_torchvision})
        return video_class.from_pretrained(str(path))
    from transformers.video_processing_utils import BaseVideoProcessor

    # NOTE: the ops sit right above BaseVideoProcessor in the MRO: the class's own overrides
    # (Qwen2-VL's smart resize) still run, and their super() calls reach Pillow / torch.
    ops = type("_PilVideoBackend", (_PilVideoOps, BaseVideoProcessor), {})
    stand_in = type(video_class.__name__, (video_class, ops), {})
    return stand_in.from_pretrained(str(path))


def _needs_torchvision(self: Any, *args: Any, **kwargs: Any) -> Any:
    raise Unsupported(
        f"{type(self).__name__} needs torchvision, which is not installed: this model's "
        "videos cannot be preprocessed here"
    )


def _video_processor_class(class_name: str) -> type:
    """The real class, from its own module (the package's lazy export is a torchvision dummy)."""
    import transformers

    # NOTE: transformers' lazy module records where each exported class is defined.
    module = getattr(transformers, "_class_to_module", {}).get(class_name)
    found = module and getattr(_import_video_module(f"transformers.{module}"), class_name, None)
    if not isinstance(found, type):
        raise Unsupported(f"transformers {transformers.__version__} has no {class_name}")
    return found


_TORCHVISION_MODULES = (
    "torchvision",
    "torchvision.transforms",
    "torchvision.transforms.v2",
    "torchvision.transforms.v2.functional",
)


class _TorchvisionStandIn(types.ModuleType):
    """What `import torchvision.transforms.v2.functional as tvF` binds in a video processor
    module that names tvF only in its annotations (Qwen2-VL's): any real use says why."""

    def __getattr__(self, name: str) -> Any:
        # NOTE: dunder and private names are introspection (hasattr, getattr with a default,
        # typing.get_type_hints, copy, pickle, inspect): they must see "no such attribute"
        if name.startswith("_"):
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        raise Unsupported(f"{self.__name__}.{name} needs torchvision, which is not installed")


def _import_video_module(name: str) -> Any:
    """The module; where its top-level `import torchvision...` fails, imported once more with
    stand-ins in sys.modules for that one import (then removed: nobody else sees them).
    NOTE: the pixel work is _PilVideoOps' anyway; a module using tvF at run time fails loudly."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        if "torchvision" not in str(error).lower():
            raise
    stand_ins = {part: _TorchvisionStandIn(part) for part in _TORCHVISION_MODULES}
    for parent, child in zip(_TORCHVISION_MODULES, _TORCHVISION_MODULES[1:], strict=False):
        setattr(stand_ins[parent], child.rsplit(".", 1)[1], stand_ins[child])
    saved = {part: sys.modules.get(part) for part in _TORCHVISION_MODULES}
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module(name)
    finally:
        for part, module in saved.items():
            if module is None:
                sys.modules.pop(part, None)
            else:
                sys.modules[part] = module


class _PilVideoOps:
    """The torchvision operations of `TorchvisionBackend`, on [..., C, H, W] tensors."""

    def convert_to_rgb(self, video: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Gray frames repeated to RGB; RGB kept (decoded videos are RGB)."""
        if video.shape[-3] == 1:
            return video.expand(*video.shape[:-3], 3, *video.shape[-2:])
        if video.shape[-3] != 3:
            raise Unsupported(f"frames with {video.shape[-3]} channels need torchvision")
        return video

    def normalize(
        self, image: torch.Tensor, mean: Any, std: Any, inplace: bool = False, **kwargs: Any
    ) -> torch.Tensor:
        """torchvision's normalize: (x - mean) / std per channel."""
        mean_t = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
        std_t = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
        return (image - mean_t) / std_t

    def center_crop(self, image: torch.Tensor, size: Any, **kwargs: Any) -> torch.Tensor:
        """torchvision's center_crop: zero padding when the crop is bigger, then a slice."""
        height, width = image.shape[-2:]
        crop_height, crop_width = size.height, size.width
        if crop_width > width or crop_height > height:
            pad_w, pad_h = max(crop_width - width, 0), max(crop_height - height, 0)
            padding = (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2)
            image = torch.nn.functional.pad(image, padding, value=0)
            height, width = image.shape[-2:]
        top, left = int((height - crop_height) / 2.0), int((width - crop_width) / 2.0)
        return image[..., top : top + crop_height, left : left + crop_width]

    def pad(self, images: Any, pad_size: Any = None, fill_value: int = 0, **kwargs: Any) -> Any:
        if kwargs.get("padding_mode", "constant") != "constant" or kwargs.get("return_mask"):
            raise Unsupported("this video processor pads in a way that needs torchvision")
        height, width = images.shape[-2:]
        padding = (0, pad_size.width - width, 0, pad_size.height - height)
        return torch.nn.functional.pad(images, padding, value=fill_value)

    def resize(
        self, image: torch.Tensor, size: Any, resample: Any = None, **kwargs: Any
    ) -> torch.Tensor:
        """Each frame through the PIL image backend's resize."""
        from transformers.image_processing_backends import PilBackend

        frames = image.reshape(-1, *image.shape[-3:])  # [N, C, H, W]
        resized = [
            PilBackend.resize(self, _to_uint8(frame), size, _pil_resample(resample))
            for frame in frames
        ]
        out = torch.from_numpy(np.stack(resized)).to(image.dtype)
        return out.reshape(*image.shape[:-2], *out.shape[-2:])


def _to_uint8(frame: torch.Tensor) -> np.ndarray:
    """A [C, H, W] uint8 frame for Pillow; float frames would lose precision: refused."""
    if frame.dtype != torch.uint8:
        raise Unsupported("this video processor resizes float frames, which needs torchvision")
    return frame.numpy()


def _pil_resample(resample: Any) -> Any:
    from transformers.image_utils import PILImageResampling

    if resample is None or isinstance(resample, PILImageResampling | int):
        return resample
    return PILImageResampling.BILINEAR


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
