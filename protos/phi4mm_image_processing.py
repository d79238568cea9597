"""Phi-4-multimodal's image preprocessing with torch only (HF's needs torchvision).

transformers' `Phi4MultimodalImageProcessor` is a torchvision backend with no PIL twin, so
`load_processor` builds `Phi4MultimodalProcessor` with this class instead. It computes what
HF's computes, in the same order (transformers 5.24, image_processing_phi4_multimodal.py):

1. dynamic HD: the image is resized (bilinear, antialiased, on uint8 as torchvision does on
   CPU) to fit a grid of `w x h` crops of `size` pixels, keeping its aspect ratio, then padded
   right / bottom with white; more than `dynamic_hd` crops picks the closest allowed ratio;
2. a mask per crop of `size // patch_size` patches, 0 where a whole patch is padding;
3. rescale + normalize fused ((x - mean * 255) / (std * 255), as torchvision's backend does);
4. a global crop: the normalized image resized to `size` (bicubic, no antialias);
5. `num_img_tokens`: 256 + 1 + the 2x-downsampled mask's ones + its first column + 16 (HF's
   formula: the sub-crop features, a newline per row, the separator and the global crop).

A user with torchvision gets HF's class unchanged (`AutoProcessor` works for them).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812
from transformers.image_processing_base import ImageProcessingMixin

_WHITE = 255


def crop_grid(width: int, height: int, crop: int, max_crops: int) -> tuple[int, int]:
    """(columns, rows) of `crop`-pixel crops the image is fitted to (HF's dynamic_preprocess)."""
    columns, rows = math.ceil(width / crop), math.ceil(height / crop)
    if columns * rows <= max_crops:
        return columns, rows
    ratios = sorted(
        {
            (i, j)
            for i in range(1, max_crops + 1)
            for j in range(1, max_crops + 1)
            if i * j <= max_crops
        },
        key=lambda ratio: ratio[0] * ratio[1],
    )
    return _closest_ratio(width / height, ratios, width * height, crop)


def _closest_ratio(
    aspect: float, ratios: list[tuple[int, int]], area: int, crop: int
) -> tuple[int, int]:
    """HF's find_closest_aspect_ratio: the first closest, a later tie wins if the image is big."""
    best, best_diff = (1, 1), float("inf")
    for ratio in ratios:
        diff = abs(aspect - ratio[0] / ratio[1])
        if diff < best_diff:
            best, best_diff = ratio, diff
        elif diff == best_diff and area > 0.5 * crop * crop * ratio[0] * ratio[1]:
            best = ratio
    return best


def fit_size(width: int, height: int, grid: tuple[int, int], crop: int) -> tuple[int, int]:
    """(width, height) the image is resized to before padding it to the grid."""
    target_w, target_h = crop * grid[0], crop * grid[1]
    if target_w / width < target_h / height:
        return target_w, int(height * (target_w / width))
    return int(width * (target_h / height)), target_h


def patch_mask(
    fitted: tuple[int, int], grid: tuple[int, int], crop: int, patch: int
) -> torch.Tensor:
    """[rows * crop // patch, columns * crop // patch]: 0 on patches that are all padding."""
    mask_size = crop // patch
    mask = torch.ones(mask_size * grid[1], mask_size * grid[0])
    pad_w, pad_h = crop * grid[0] - fitted[0], crop * grid[1] - fitted[1]
    if pad_w >= patch:
        mask[:, -math.floor(pad_w / patch) :] = 0
    if pad_h >= patch:
        mask[-math.floor(pad_h / patch) :, :] = 0
    return mask


def num_image_tokens(mask: torch.Tensor, grid: tuple[int, int], mask_size: int) -> int:
    """HF's count: 256 global + 1 separator + 16 global newlines + the kept sub-crop
    features (mask downsampled 2x) + one newline per kept row."""
    crops = _crops_of_mask(mask, grid, mask_size)[:, 0::2, 0::2]  # [N, m', m']
    side = mask_size // 2 + mask_size % 2
    down = crops.reshape(grid[1], grid[0], side, side).transpose(1, 2)
    down = down.reshape(grid[1] * side, grid[0] * side)
    return 256 + 1 + int(down.sum().item()) + int(down[:, 0].sum().item()) + 16


def _crops_of_mask(mask: torch.Tensor, grid: tuple[int, int], mask_size: int) -> torch.Tensor:
    """[rows * columns, mask_size, mask_size], crops in row-major order."""
    crops = mask.reshape(grid[1], mask_size, grid[0], mask_size).transpose(1, 2)
    return crops.reshape(-1, mask_size, mask_size).contiguous()


class Phi4MultimodalImageProcessorTorch(ImageProcessingMixin):
    """Stand-in for HF's Phi4MultimodalImageProcessor (same config, same outputs)."""

    model_input_names: ClassVar[list[str]] = [
        "image_pixel_values",
        "image_sizes",
        "image_attention_mask",
    ]

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        size = config.get("size", {"height": 448, "width": 448})
        if size["height"] != size["width"]:
            raise ValueError("Phi4MultimodalImageProcessor only supports square sizes.")
        self.crop = int(size["height"])
        self.patch_size = int(config.get("patch_size", 14))
        self.dynamic_hd = int(config.get("dynamic_hd", 36))
        self.rescale_factor = float(config.get("rescale_factor", 1 / 255))
        self.image_mean = list(config.get("image_mean", [0.5, 0.5, 0.5]))
        self.image_std = list(config.get("image_std", [0.5, 0.5, 0.5]))

    def __call__(self, images: Any, **kwargs: Any) -> Any:
        from transformers.feature_extraction_utils import BatchFeature

        crops, masks, sizes, tokens = zip(
            *(self._one(image) for image in _flat(images)), strict=True
        )
        most = max(c.shape[0] for c in crops)
        data = {
            "image_pixel_values": torch.stack([_pad_crops(c, most, 0.0) for c in crops]),
            "image_sizes": torch.tensor(sizes, dtype=torch.long),
            "image_attention_mask": torch.stack([_pad_crops(m, most, 1.0) for m in masks]),
            "num_img_tokens": list(tokens),
        }
        return BatchFeature(data=data, tensor_type=kwargs.get("return_tensors"))

    def _one(self, image: Any) -> tuple[torch.Tensor, torch.Tensor, list[int], int]:
        """One image -> ([1 + N, 3, crop, crop], [1 + N, m, m], [H, W], num_img_tokens)."""
        pixels = _uint8_chw(image)  # [3, H, W] uint8
        height, width = pixels.shape[-2:]
        grid = crop_grid(width, height, self.crop, self.dynamic_hd)
        fitted = fit_size(width, height, grid, self.crop)
        if min(fitted[1], self.crop * grid[1]) < 10 or min(fitted[0], self.crop * grid[0]) < 10:
            raise ValueError(f"the aspect ratio is very extreme {fitted}")
        # NOTE: torchvision's uint8 bilinear resize is this very kernel (rounded uint8 output)
        resized = F.interpolate(
            pixels[None], size=(fitted[1], fitted[0]), mode="bilinear", antialias=True
        )[0]
        padding = (0, self.crop * grid[0] - fitted[0], 0, self.crop * grid[1] - fitted[1])
        padded = F.pad(resized, padding, value=_WHITE)  # [3, rows * crop, columns * crop]
        normal = self._normalize(padded)
        global_crop = F.interpolate(normal[None], size=(self.crop, self.crop), mode="bicubic")
        tiles = normal.reshape(3, grid[1], self.crop, grid[0], self.crop).permute(1, 3, 0, 2, 4)
        tiles = tiles.reshape(-1, 3, self.crop, self.crop)
        mask_size = self.crop // self.patch_size
        mask = patch_mask(fitted, grid, self.crop, self.patch_size)
        masks = torch.cat(
            [torch.ones(1, mask_size, mask_size), _crops_of_mask(mask, grid, mask_size)]
        )
        count = num_image_tokens(mask, grid, mask_size)
        return torch.cat([global_crop, tiles]), masks, list(normal.shape[-2:]), count

    def to_dict(self) -> dict[str, Any]:
        """Saved as HF's class with HF's keys only, so a user with torchvision loads HF's own."""
        saved = {k: v for k, v in super().to_dict().items() if k != "crop"}  # `crop`: ours
        return {**saved, "image_processor_type": "Phi4MultimodalImageProcessor"}

    def _normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """torchvision backend's fused rescale + normalize, in float32."""
        mean = torch.tensor(self.image_mean) * (1.0 / self.rescale_factor)
        std = torch.tensor(self.image_std) * (1.0 / self.rescale_factor)
        return (pixels.to(torch.float32) - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)


def _flat(images: Any) -> list[Any]:
    if isinstance(images, list | tuple):
        return [image for item in images for image in _flat(item)]
    return [images]


def _uint8_chw(image: Any) -> torch.Tensor:
    """[3, H, W] uint8 from a PIL image (converted to RGB, as HF's do_convert_rgb does)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    raise TypeError(f"Phi-4-multimodal images must be PIL images here, not {type(image).__name__}")


def _pad_crops(crops: torch.Tensor, count: int, value: float) -> torch.Tensor:
    """Pad the crop axis to `count` (HF pads pixels with zeros and masks with ones)."""
    missing = count - crops.shape[0]
    if missing <= 0:
        return crops
    return torch.cat([crops, torch.full((missing, *crops.shape[1:]), value, dtype=crops.dtype)])
