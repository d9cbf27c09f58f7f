"""Text rendering as a reward: does the image show the prompt's quoted text? (Flow-GRPO's OCR task)

For a prompt such as ``a neon sign that says "Open Late"`` the target is the text between the
first pair of double quotes (ASCII ``"`` or typographic ``“ ”``). An OCR engine reads the image;
the lines it reads with confidence at least ``min_confidence`` are joined in reading order. As
in Flow-GRPO (Liu et al. 2025, §5 "visual text rendering"; its ``flow_grpo/ocr.py``), both texts
are compared without whitespace and lower-cased, and

    reward = 1 - min(d, n) / n,   d = Levenshtein(read, target), n = len(target),

except that a read text containing the target scores 1 (other text in the image is not
penalised). The reward lies in [0, 1]: 1 for the exact text, 0 for an image with no text.

The OCR engine is RapidOCR (PP-OCR detection and recognition on onnxruntime, CPU by default);
its models ship inside the ``rapidocr`` wheel, so it runs offline and downloads nothing. The
edit distance is rapidfuzz's. These packages are the extra ``ocr`` (``pip install 'ddpo[ocr]'``).
"""

import re
from typing import Any, Final, Literal, final

import numpy as np
import torch
from jaxtyping import Float

from ddpo.rewards._clip import check_prompts
from ddpo.rewards._images import to_uint8_nhwc

__all__ = [
    "OCR_EXTRA",
    "OcrReward",
    "normalize_text",
    "ocr_reward",
    "quoted_text",
    "text_similarity",
]

OCR_EXTRA: Final = "pip install 'ddpo[ocr]'"
_QUOTED: Final = re.compile(r'"([^"]*)"|“([^”]*)”')

MissingText = Literal["error", "zero"]


def _import_ocr_packages() -> tuple[Any, Any]:
    """``(RapidOCR, Levenshtein)``, or an ImportError that says how to install them."""
    try:
        import onnxruntime  # noqa: F401  # rapidocr's engine; rapidocr itself does not require it
        from rapidfuzz.distance import Levenshtein
        from rapidocr import RapidOCR
    except ImportError as exc:
        raise ImportError(
            f"the ocr reward needs rapidocr, onnxruntime and rapidfuzz: {OCR_EXTRA} ({exc})"
        ) from exc
    return RapidOCR, Levenshtein


def quoted_text(prompt: str) -> str | None:
    """The text between the first pair of quotes in ``prompt`` (None when there is none)."""
    match = _QUOTED.search(prompt)
    if match is None:
        return None
    return match.group(1) if match.group(1) is not None else match.group(2)


def normalize_text(text: str) -> str:
    """``text`` lower-cased, with all whitespace removed (Flow-GRPO's comparison)."""
    return "".join(text.split()).lower()


def text_similarity(read: str, target: str) -> float:
    """``1 - min(Levenshtein(read, target), n) / n`` on normalised texts, 1 if ``read``
    contains ``target``; ``n`` the normalised target's length.

    Raises:
        ValueError: if ``target`` has no characters besides whitespace.
    """
    _, levenshtein = _import_ocr_packages()
    read, goal = normalize_text(read), normalize_text(target)
    if not goal:
        raise ValueError(f"target must have a non-whitespace character, got {target!r}")
    if goal in read:
        return 1.0
    distance = min(int(levenshtein.distance(read, goal)), len(goal))
    return 1.0 - distance / len(goal)


@final
class OcrReward:
    """Reward ``(images, prompts, prompt_metadata) -> (similarity, metadata)``; see the module.

    The metadata holds, per sample, ``ocr_text`` (what the engine read, lines joined by spaces)
    and ``target_text`` (the quoted text of the prompt; ``""`` where it has none).

    Args:
        engine: a ``rapidocr.RapidOCR`` (see `ocr_reward`).
        missing_text: what a prompt with no quoted text gets: ``"error"`` (a ValueError naming
            the prompt, the default: such prompts are a configuration mistake, and a constant
            reward would train nothing) or ``"zero"`` (reward 0).
    """

    def __init__(self, engine: Any, *, missing_text: MissingText = "error") -> None:
        if missing_text not in ("error", "zero"):
            raise ValueError(f"missing_text must be 'error' or 'zero', got {missing_text!r}")
        self.engine = engine
        self.missing_text = missing_text

    def read(self, image: np.ndarray) -> str:
        """The text the engine reads in one ``(H, W, 3)`` uint8 RGB image ("" for none)."""
        result = self.engine(np.ascontiguousarray(image[..., ::-1]))  # RapidOCR takes BGR
        return " ".join(result.txts or ())

    def __call__(
        self, images: Any, prompts: Any, prompt_metadata: Any = None
    ) -> tuple[Float[torch.Tensor, " batch"], dict[str, Any]]:
        """Rewards (float32, CPU, ``(batch,)``) of images ``(batch, 3, H, W)`` in [0, 1] (or
        uint8 / PIL, see `ddpo.rewards._images`) for their prompts.

        Raises:
            ValueError: if prompts are not one str per image, or (``missing_text="error"``) a
                prompt has no quoted text; both before any OCR runs.
        """
        del prompt_metadata
        pixels = to_uint8_nhwc(images)
        texts = check_prompts(prompts, pixels.shape[0])
        targets = [quoted_text(p) for p in texts]
        targets = [t if t is not None and normalize_text(t) else None for t in targets]
        missing = [i for i, t in enumerate(targets) if t is None]
        if missing and self.missing_text == "error":
            raise ValueError(
                f"the ocr reward needs quoted text in each prompt (the text to render, e.g. "
                f'a sign that says "Hello"); prompts at indices {missing} have none: '
                f"{[texts[i] for i in missing][:3]}"
            )
        rewards, read = [], []
        for image, target in zip(pixels, targets, strict=True):
            if target is None:
                rewards.append(0.0)
                read.append("")
                continue
            read.append(self.read(image))
            rewards.append(text_similarity(read[-1], target))
        metadata = {"ocr_text": read, "target_text": [t or "" for t in targets]}
        return torch.tensor(rewards, dtype=torch.float32), metadata


def ocr_reward(
    *,
    min_confidence: float = 0.5,
    device: str | torch.device | None = None,
    num_threads: int | None = None,
    missing_text: MissingText = "error",
) -> OcrReward:
    """The OCR reward on RapidOCR's packaged PP-OCR models (detection and recognition; no
    angle classifier, as Flow-GRPO).

    Args:
        min_confidence: lines read with a lower recognition confidence are ignored (0.5, as
            PaddleOCR's default ``drop_score`` that Flow-GRPO used).
        device: ``None`` or ``"cpu"``: onnxruntime on CPU. ``"cuda"`` / ``"cuda:N"``: its CUDA
            provider, which needs the ``onnxruntime-gpu`` package (RapidOCR warns and stays on
            CPU without it).
        num_threads: onnxruntime threads per inference (default: onnxruntime's choice).
        missing_text: ``"error"`` or ``"zero"``, see `OcrReward`.

    Returns:
        An `OcrReward` (images are read one at a time; RapidOCR takes one image per call).

    Raises:
        ValueError: for a bad argument (before anything loads).
        ImportError: naming ``pip install 'ddpo[ocr]'`` when the OCR packages are missing.
    """
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence!r}")
    if num_threads is not None and num_threads <= 0:
        raise ValueError(f"num_threads must be positive, got {num_threads!r}")
    if missing_text not in ("error", "zero"):
        raise ValueError(f"missing_text must be 'error' or 'zero', got {missing_text!r}")
    target = torch.device(device or "cpu")
    if target.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    rapid_ocr, _ = _import_ocr_packages()
    params: dict[str, Any] = {
        "Global.use_cls": False,
        "Global.text_score": float(min_confidence),
        "Global.log_level": "error",  # not a warning for every image without text
        # PaddleOCR's detector defaults, which Flow-GRPO ran: the longer side scaled down to
        # 960 when larger (RapidOCR's own default scales the shorter side up to 736)
        "Det.limit_type": "max",
        "Det.limit_side_len": 960,
    }
    if target.type == "cuda":
        params["EngineConfig.onnxruntime.use_cuda"] = True
        params["EngineConfig.onnxruntime.cuda_ep_cfg.device_id"] = target.index or 0
    if num_threads is not None:
        params["EngineConfig.onnxruntime.intra_op_num_threads"] = num_threads
    return OcrReward(rapid_ocr(params=params), missing_text=missing_text)
