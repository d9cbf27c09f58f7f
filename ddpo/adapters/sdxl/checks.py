"""Checks of a Stable Diffusion XL model folder, from its JSON files only (before any weights load).

A DDPO policy needs SDXL *base*: both text encoders, both tokenizers and a UNet conditioned on
the pooled text embedding and the micro-conditioning time ids (``addition_embed_type=
"text_time"``). The refiner (``StableDiffusionXLImg2ImgPipeline``, no first text encoder) and
SD 1.x/2.x folders are refused with the class found; so are components that cannot work
together (tokenizers of different lengths, widths that do not add up).
"""

from pathlib import Path
from typing import Any

from ddpo.adapters.common.sources import read_json_object, read_model_index

SDXL_COMPONENTS: tuple[str, ...] = (
    "unet",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "scheduler",
)
"""Components an SDXL folder's ``model_index.json`` must list."""

_REFINER_CLASSES = ("StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline")


def _config(folder: Path, component: str, name: str = "config.json") -> dict[str, Any]:
    path = folder / component / name
    if not path.is_file():
        raise ValueError(f"{folder} is an incomplete SDXL folder: {component}/{name} is missing")
    return read_json_object(path)


def check_sdxl_folder(folder: Path) -> dict[str, Any]:
    """Check that ``folder`` holds an SDXL base model whose parts fit together.

    Returns:
        The folder's ``model_index.json``.

    Raises:
        ValueError: naming the folder and what is wrong: a refiner, another family (the class
            found), a UNet without SDXL's added conditioning, or mismatched encoders/tokenizers.
    """
    index_file = folder / "model_index.json"
    index = read_json_object(index_file) if index_file.is_file() else {}
    class_name = index.get("_class_name")
    if class_name in _REFINER_CLASSES or (
        index and not _listed(index.get("text_encoder")) and _listed(index.get("text_encoder_2"))
    ):
        raise ValueError(
            f"{folder} is an SDXL refiner or image-to-image model ({class_name!r}, without the "
            "first text encoder): DDPO fine-tunes a text-to-image base model such as "
            "stabilityai/stable-diffusion-xl-base-1.0"
        )
    if class_name == "StableDiffusionPipeline":
        raise ValueError(
            f"{folder} is a Stable Diffusion 1.x/2.x model ({class_name!r}), not SDXL: use "
            "DefaultDDPOStableDiffusionPipeline for it"
        )
    index = read_model_index(folder, SDXL_COMPONENTS, "Stable Diffusion XL")

    unet = _config(folder, "unet")
    text_1 = _config(folder, "text_encoder")
    text_2 = _config(folder, "text_encoder_2")
    if unet.get("addition_embed_type") != "text_time":
        raise ValueError(
            f"{folder}/unet is not an SDXL UNet: addition_embed_type="
            f"{unet.get('addition_embed_type')!r}, expected 'text_time' (pooled text embedding "
            "and micro-conditioning time ids)"
        )
    width = int(text_1.get("hidden_size", 0)) + int(text_2.get("hidden_size", 0))
    if unet.get("cross_attention_dim") != width:
        raise ValueError(
            f"{folder}: the UNet's cross_attention_dim={unet.get('cross_attention_dim')} is not "
            f"the two text encoders' widths added ({text_1.get('hidden_size')} + "
            f"{text_2.get('hidden_size')} = {width})"
        )
    time_dim = unet.get("addition_time_embed_dim")
    added = unet.get("projection_class_embeddings_input_dim")
    projection = text_2.get("projection_dim")
    if (
        isinstance(time_dim, int)
        and isinstance(projection, int)
        and added != 6 * time_dim + projection
    ):
        raise ValueError(
            f"{folder}: the UNet's projection_class_embeddings_input_dim={added} is not 6 time "
            f"ids x addition_time_embed_dim={time_dim} + text_encoder_2's projection_dim="
            f"{projection} (= {6 * time_dim + projection})"
        )
    _check_tokenizers(folder, text_1, text_2)
    return index


def _check_tokenizers(folder: Path, text_1: dict[str, Any], text_2: dict[str, Any]) -> None:
    lengths = {}
    for tokenizer, text in (("tokenizer", text_1), ("tokenizer_2", text_2)):
        config = _config(folder, tokenizer, "tokenizer_config.json")
        length = config.get("model_max_length")
        positions = text.get("max_position_embeddings")
        if isinstance(length, int) and isinstance(positions, int) and length > positions:
            encoder = "text_encoder" if tokenizer == "tokenizer" else "text_encoder_2"
            raise ValueError(
                f"{folder}: {tokenizer} pads to model_max_length={length} tokens, more than "
                f"{encoder} has positions (max_position_embeddings={positions})"
            )
        vocab_file = folder / tokenizer / "vocab.json"
        vocab_size = text.get("vocab_size")
        if vocab_file.is_file() and isinstance(vocab_size, int):
            size = len(read_json_object(vocab_file))
            if size > vocab_size:
                raise ValueError(
                    f"{folder}: {tokenizer} has {size} tokens, more than its text encoder's "
                    f"vocab_size={vocab_size}; the tokenizer does not belong to the encoder"
                )
        lengths[tokenizer] = length
    if lengths["tokenizer"] != lengths["tokenizer_2"]:
        raise ValueError(
            f"{folder}: tokenizer and tokenizer_2 pad to different lengths "
            f"(model_max_length {lengths['tokenizer']} and {lengths['tokenizer_2']}); SDXL "
            "concatenates the two encoders' hidden states token by token"
        )


def _listed(entry: Any) -> bool:
    return isinstance(entry, list) and bool(entry) and entry[0] is not None


__all__ = ["SDXL_COMPONENTS", "check_sdxl_folder"]
