"""Scores from the reward models' original packages, computed in a subprocess, for comparisons.

The originals (hpsv2 1.2.0, image-reward 1.5, torchmetrics 1.9.0, with open-clip-torch 3.3.0,
timm 0.6.13, lightning-utilities and einops; fairscale is stubbed) need torchvision, and the
registry's torchvision 0.28.0 is a CUDA build: beside the CPU torch its compiled ops do not load,
and a transformers that can find it imports it (which breaks diffusers' pipelines) and switches
to its torchvision image processors. So they are installed, ``--no-deps``, into a folder of their
own that never enters the pytest process: ``$DDPO_REFERENCE_PACKAGES``, by default
``<venv>/reference-packages`` (``nox -s tests`` fills it; by hand: ``pip install --no-deps
--target .venv/reference-packages`` with the pins in ``noxfile.py``).

A test writes the tiny weights and the images (8-bit PNG files, the images a user would have
saved) into its temporary folder and calls :func:`run_original`; this file, run as a script with
that folder on ``PYTHONPATH``, sets up the import work-arounds, scores with each package's own
code and writes JSON back. The work-arounds only let the packages import and run beside
today's torch and transformers; none changes what they compute:

- ``torchvision._meta_registrations``, which registers meta kernels for the compiled ops that
  cannot load, is an empty module; the image transforms the originals use are pure Python.
- hpsv2 imports ``clint`` (a download progress bar), ImageReward imports OpenAI's ``clip`` and
  its own training script ``ImageReward.ReFL``: empty modules.
- hpsv2's wheel lacks the BPE vocabulary its tokenizer module reads at import; the module is
  executed as if it lay beside open-clip-torch's identical ``bpe_simple_vocab_16e6.txt.gz``.
- ImageReward's BLIP text model calls transformers-4 helpers that transformers 5 moved or
  removed: the moved ones are re-exported, the removed ones (``invert_attention_mask``,
  ``get_head_mask``, ``init_weights`` without ``post_init``, the tokenizer's
  ``additional_special_tokens_ids``) written as transformers 4 had them.
- torchmetrics calls ``get_image_features``/``get_text_features`` and expects transformers 4's
  tensors (5 returns an output object holding them as ``pooler_output``): its documented
  model-and-processor callable passes a ``CLIPModel`` subclass that returns the tensors.
- hpsv2 creates its cache folder (``$HPS_ROOT``) when it scores: it is set inside the test's
  temporary folder.
"""

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE_PACKAGES_ENV = "DDPO_REFERENCE_PACKAGES"
UNAVAILABLE = 77
"""Exit status of the subprocess when an original package cannot be imported."""


class Unavailable(Exception):
    """An original package (or one it imports) cannot be imported."""


SIZES = ((224, 224), (512, 512), (512, 384), (384, 512), (1024, 768))
"""(height, width) of the compared images: square at and above the models' 224, both
orientations of a non-square size, and a large one."""

PROMPTS = (
    "a photo of a cat &amp; a dog",
    "“Hello,” said the ‘red’ fox",
    "  a   blue\tcar\n on the  road ",
    "Tom &amp;amp; Jerry at the caf\u00c3\u00a9",
)
"""Prompts with HTML entities (once and twice escaped), curly quotes, odd whitespace and
mojibake, which the HPS tokenizer's cleaning (ftfy, HTML unescaping) changes."""


def sample_images(size: tuple[int, int], batch: int, seed: int) -> Any:
    """``(batch, 3, H, W)`` float images in [0, 1]: smooth random shapes with fine noise."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 6, 5, generator=generator)
    smooth = F.interpolate(coarse, size=size, mode="bicubic", align_corners=False)
    noise = torch.rand(batch, 3, *size, generator=generator) - 0.5
    return (smooth + 0.3 * noise).clamp(0, 1)


def to_uint8(images: Any) -> Any:
    """Float images in [0, 1] as the uint8 images a user would save (``round(255 x)``)."""
    import torch

    return (images * 255).round().clamp(0, 255).to(torch.uint8)


def reference_packages() -> Path:
    """The folder holding the original packages (it may not exist)."""
    folder = os.environ.get(REFERENCE_PACKAGES_ENV)
    return Path(folder) if folder else Path(sys.prefix) / "reference-packages"


def save_pngs(images: Any, folder: Path, stem: str) -> list[str]:
    """``(batch, 3, H, W)`` uint8 images as PNG files (lossless); their paths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(np.asarray(images).transpose(0, 2, 3, 1)):
        path = folder / f"{stem}-{i}.png"
        Image.fromarray(np.ascontiguousarray(image)).save(path, compress_level=1)
        paths.append(str(path))
    return paths


def write_openai_clip_tokenizer(folder: Path) -> Path:
    """OpenAI's CLIP tokenizer (49,408 tokens) as a ``CLIPTokenizer`` folder, read from the BPE
    file that open-clip-torch ships; skips the calling test when it is not installed.

    The files are those of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``: every byte alone and
    word-final, then each merge's result, then start- and end-of-text (49406, 49407).
    """
    import gzip

    from ddpo.adapters.common.tokenizer import write_clip_tokenizer

    bpe = reference_packages() / "open_clip" / "bpe_simple_vocab_16e6.txt.gz"
    if not bpe.is_file():
        _unavailable(f"open-clip-torch is not installed in {reference_packages()}")
    with gzip.open(bpe) as file:
        lines = file.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    folder = write_clip_tokenizer(folder, [], model_max_length=77)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    bos_eos = sorted(vocab, key=vocab.__getitem__)[-2:]
    tokens = [t for t in sorted(vocab, key=vocab.__getitem__) if t not in bos_eos]
    tokens += ["".join(pair) for pair in merges] + bos_eos
    vocab = {token: i for i, token in enumerate(tokens)}
    assert len(vocab) == 49408, len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "\n".join(["#version: 0.2", *(" ".join(pair) for pair in merges)])
    (folder / "merges.txt").write_text(merges_text + "\n", encoding="utf-8")
    return folder


def _unavailable(reason: str) -> None:
    """Skip the calling test, unless ``$DDPO_REFERENCE_PACKAGES`` is set (``nox -s tests``, CI),
    where the originals were installed for these tests: there it fails."""
    import pytest

    if os.environ.get(REFERENCE_PACKAGES_ENV):
        pytest.fail(f"{REFERENCE_PACKAGES_ENV} is set but {reason}")
    pytest.skip(reason)


def run_original(task: str, request: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Run ``task`` of this script on ``request`` in a subprocess; its JSON answer.

    Skips the calling test (naming the package) if an original package cannot be imported, or
    fails it where the originals were meant to be installed (`_unavailable`).
    """

    folder.mkdir(parents=True, exist_ok=True)
    request_path, answer_path = folder / f"{task}-request.json", folder / f"{task}-answer.json"
    request_path.write_text(json.dumps(request))
    env = {
        **os.environ,
        "PYTHONPATH": str(reference_packages()),
        "OMP_NUM_THREADS": "1",
        "HPS_ROOT": str(folder / "hps_root"),  # hpsv2 creates it (default: ~/.cache/hpsv2)
    }
    done = subprocess.run(
        [sys.executable, __file__, task, str(request_path), str(answer_path)],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode == UNAVAILABLE:
        _unavailable(f"original package not importable from {reference_packages()}: {done.stderr}")
    if done.returncode != 0:
        raise AssertionError(f"the original {task} failed:\n{done.stderr[-4000:]}")
    answer: dict[str, Any] = json.loads(answer_path.read_text())
    return answer


# --- the subprocess ------------------------------------------------------------------------------


@contextlib.contextmanager
def _importing(package: str) -> Iterator[None]:
    """Turn an ImportError inside into :class:`Unavailable` (and only there)."""
    try:
        yield
    except ImportError as exc:
        raise Unavailable(f"{package}: {type(exc).__name__}: {exc}") from exc


def _empty_module(name: str, **attributes: Any) -> None:
    import types

    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module


def _hps_tokenizer_beside_open_clip_bpe() -> None:
    """Execute hpsv2's tokenizer module as if it lay beside open-clip-torch's BPE file."""
    import importlib.util

    hpsv2 = importlib.util.find_spec("hpsv2")
    open_clip = importlib.util.find_spec("open_clip")
    if hpsv2 is None or open_clip is None or hpsv2.origin is None or open_clip.origin is None:
        raise ImportError("hpsv2 and open_clip are needed")
    name = "hpsv2.src.open_clip.tokenizer"
    source = Path(hpsv2.origin).parent / "src" / "open_clip" / "tokenizer.py"
    spec = importlib.util.spec_from_file_location(name, source)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {source}")
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(Path(open_clip.origin).parent / "tokenizer.py")
    sys.modules[name] = module
    spec.loader.exec_module(module)


def _transformers_4_helpers() -> None:
    """What ImageReward's BLIP text model takes from transformers 4."""
    import torch
    import transformers.modeling_utils as modeling_utils
    import transformers.pytorch_utils as pytorch_utils

    def find_pruneable_heads_and_indices(*args: Any) -> Any:
        raise NotImplementedError("head pruning is not used for scoring")

    def invert_attention_mask(self: Any, mask: torch.Tensor) -> torch.Tensor:
        extended = mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]
        extended = extended.to(dtype=self.dtype)
        return (1.0 - extended) * torch.finfo(self.dtype).min

    def get_head_mask(self: Any, head_mask: Any, num_hidden_layers: int) -> Any:
        if head_mask is not None:
            raise NotImplementedError("head masks are not used for scoring")
        return [None] * num_hidden_layers

    modeling_utils.apply_chunking_to_forward = pytorch_utils.apply_chunking_to_forward  # type: ignore[attr-defined]
    modeling_utils.prune_linear_layer = pytorch_utils.prune_linear_layer  # type: ignore[attr-defined]
    modeling_utils.find_pruneable_heads_and_indices = find_pruneable_heads_and_indices  # type: ignore[attr-defined]
    modeling_utils.PreTrainedModel.invert_attention_mask = invert_attention_mask  # type: ignore[attr-defined]
    modeling_utils.PreTrainedModel.get_head_mask = get_head_mask  # type: ignore[attr-defined]


def _hps(request: dict[str, Any]) -> dict[str, Any]:
    """hpsv2's own ``img_score.score`` on each image with its prompt (a tiny OpenCLIP config)."""
    from PIL import Image

    _empty_module("clint")
    _empty_module("clint.textui", progress=None)
    with _importing("hpsv2"):
        _hps_tokenizer_beside_open_clip_bpe()
        from hpsv2 import img_score
        from hpsv2.src.open_clip import add_model_config, create_model_and_transforms

    config = Path(request["model_config"])
    add_model_config(config)
    model, _, preprocess_val = create_model_and_transforms(  # as img_score.initialize_model
        config.stem,
        None,
        precision="amp",
        device="cpu",
        jit=False,
        force_quick_gelu=False,
        force_custom_text=False,
        force_patch_dropout=False,
        force_image_size=None,
        pretrained_image=False,
        image_mean=None,
        image_std=None,
        light_augmentation=True,
        aug_cfg={},
        output_dict=True,
        with_score_predictor=False,
        with_region_predictor=False,
    )
    img_score.model_dict["model"] = model
    img_score.model_dict["preprocess_val"] = preprocess_val
    img_score.device = "cpu"
    scores = [
        float(img_score.score(Image.open(path), prompt, cp=request["checkpoint"])[0])
        for path, prompt in zip(request["images"], request["prompts"], strict=True)
    ]
    tokens = img_score.get_tokenizer(config.stem)(request["prompts"])
    return {"scores": scores, "tokens": tokens.tolist()}


def _image_reward(request: dict[str, Any]) -> dict[str, Any]:
    """ImageReward's own ``ImageReward.score``, its BLIP ViT built at a tiny size."""
    import torch
    from PIL import Image

    _empty_module("clip")
    _empty_module("ImageReward.ReFL")
    # BLIP's ViT imports fairscale's activation checkpointing, used only when training with
    # gradient checkpointing (off here); fairscale ships as an sdist that must be built.
    for name in ("fairscale", "fairscale.nn", "fairscale.nn.checkpoint"):
        _empty_module(name)
    _empty_module(
        "fairscale.nn.checkpoint.checkpoint_activations",
        checkpoint_wrapper=lambda module, **kwargs: module,
    )
    _transformers_4_helpers()
    with _importing("image-reward"):
        from ImageReward.ImageReward import ImageReward
        from ImageReward.models.BLIP import blip, blip_pretrain, med
        from ImageReward.models.BLIP.vit import VisionTransformer

    def init_weights(self: Any) -> None:
        """transformers 4's ``PreTrainedModel.init_weights`` for a model without pruned heads
        or tied weights (transformers 5's needs ``post_init``, which BLIP never calls)."""
        self.apply(self._init_weights)

    med.BertPreTrainedModel.init_weights = init_weights

    vision = request["vision"]

    def create_vit(vit: str, image_size: int, *args: Any) -> tuple[Any, int]:
        """``blip.create_vit('large', ...)`` at the request's width, depth and patch size."""
        encoder = VisionTransformer(
            img_size=image_size,
            patch_size=vision["patch_size"],
            embed_dim=vision["width"],
            depth=vision["depth"],
            num_heads=vision["heads"],
            use_grad_checkpointing=False,
            ckpt_layer=0,
            drop_path_rate=0.1,
        )
        return encoder, vision["width"]

    class LocalBertTokenizer(blip.BertTokenizer):  # type: ignore[misc, name-defined]
        """``bert-base-uncased`` read from the request's folder; transformers 4's
        ``additional_special_tokens_ids`` (which ``init_tokenizer`` reads) restored."""

        @classmethod
        def from_pretrained(cls, name: str, *args: Any, **kwargs: Any) -> Any:
            assert name == "bert-base-uncased", name
            return super().from_pretrained(request["tokenizer"], *args, **kwargs)

        @property
        def additional_special_tokens_ids(self) -> list[int]:
            return list(self.convert_tokens_to_ids(self.extra_special_tokens))

    blip_pretrain.create_vit = create_vit
    blip.BertTokenizer = LocalBertTokenizer
    model = ImageReward(med_config=request["med_config"], device="cpu")
    state = torch.load(request["checkpoint"], map_location="cpu", weights_only=True)
    loaded = model.load_state_dict(state, strict=False)  # as ImageReward.load
    if loaded.missing_keys or loaded.unexpected_keys:
        raise ValueError(f"the checkpoint does not fit: {loaded}")
    model.eval()
    with torch.no_grad():
        scores = [
            float(model.score(prompt, Image.open(path)))
            for path, prompt in zip(request["images"], request["prompts"], strict=True)
        ]
    return {"scores": scores}


def _clip_score(request: dict[str, Any]) -> dict[str, Any]:
    """torchmetrics' ``CLIPScore`` of each uint8 image with its prompt, one image at a time, and
    of the whole batch, the model and processor given through torchmetrics' documented callable.
    ``image_processor``: ``"pil"`` for transformers' PIL CLIP image processor, ``"default"`` for
    what ``CLIPProcessor.from_pretrained`` picks (the torchvision one, here)."""
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    with _importing("torchmetrics"):
        from torchmetrics.multimodal.clip_score import CLIPScore

    folder = request["model"]

    class FeaturesCLIPModel(CLIPModel):  # type: ignore[misc]
        """transformers 4's feature functions, which return the projected features (5's
        return an output object whose ``pooler_output`` they are)."""

        def get_image_features(self, *args: Any, **kwargs: Any) -> Any:
            return super().get_image_features(*args, **kwargs).pooler_output

        def get_text_features(self, *args: Any, **kwargs: Any) -> Any:
            return super().get_text_features(*args, **kwargs).pooler_output

    def model_and_processor() -> tuple[Any, Any]:
        if request["image_processor"] == "pil":
            processor = CLIPProcessor(
                image_processor=CLIPImageProcessorPil.from_pretrained(folder),
                tokenizer=CLIPTokenizer.from_pretrained(folder),
            )
        else:
            processor = CLIPProcessor.from_pretrained(folder)
        return FeaturesCLIPModel.from_pretrained(folder), processor

    metric = CLIPScore(model_name_or_path=model_and_processor)
    backend = metric.processor.image_processor.backend
    images = [
        torch.from_numpy(np.asarray(Image.open(path))).permute(2, 0, 1)
        for path in request["images"]
    ]
    scores = []
    with torch.no_grad():
        for image, prompt in zip(images, request["prompts"], strict=True):
            metric.update(image[None], [prompt])
            scores.append(float(metric.compute()))
            metric.reset()
        batch = request["batch"]
        metric.update(
            torch.stack(images[batch[0] : batch[1]]), request["prompts"][batch[0] : batch[1]]
        )
        whole = float(metric.compute())
    return {"scores": scores, "batch": whole, "backend": backend}


_TASKS = {"hps": _hps, "image_reward": _image_reward, "clip_score": _clip_score}


def _main(task: str, request_path: str, answer_path: str) -> int:
    import warnings

    warnings.simplefilter("ignore")
    _empty_module("torchvision._meta_registrations")
    request = json.loads(Path(request_path).read_text())
    try:
        answer = _TASKS[task](request)
    except Unavailable as exc:
        print(exc, file=sys.stderr)
        return UNAVAILABLE
    Path(answer_path).write_text(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(_main(*sys.argv[1:]))
