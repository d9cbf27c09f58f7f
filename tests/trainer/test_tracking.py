"""`wrap_tracker`: TRL's documented image hook and every image layout on tensorboard and wandb."""

import io
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from accelerate import PartialState
from accelerate.tracking import TensorBoardTracker, WandBTracker
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ddpo.trainer.tracking import ImageTracker, to_pil_images, wrap_tracker


def image_outputs_logger(image_data: Any, global_step: int, accelerate_logger: Any) -> None:
    """The image hook of TRL's DDPO documentation, verbatim."""
    result = {}
    images, prompts, _, rewards, _ = image_data[-1]
    for i, image in enumerate(images):
        pil = Image.fromarray((image.cpu().numpy().transpose(1, 2, 0) * 255).astype(np.uint8))
        pil = pil.resize((256, 256))
        result[f"{prompts[i]:.25} | {rewards[i]:.2f}"] = [pil]
    accelerate_logger.log_images(result, step=global_step)


def _image_data() -> list[list[Any]]:
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    batch = [images, ("a red circle", "a blue square"), ({}, {}), torch.tensor([0.25, 0.75]), {}]
    return [batch]


def _tensorboard(tmp_path: Path) -> TensorBoardTracker:
    tracker = TensorBoardTracker("run", tmp_path)
    tracker.start()
    return tracker


def _logged_images(tracker: TensorBoardTracker) -> dict[str, list[tuple[int, int, int]]]:
    """Tag -> ``(step, width, height)`` of every image event the tracker wrote."""
    tracker.finish()
    events = EventAccumulator(tracker.logging_dir, size_guidance={"images": 0})
    events.Reload()
    logged = {}
    for tag in events.Tags()["images"]:
        logged[tag] = [(e.step, e.width, e.height) for e in events.Images(tag)]
        for event in events.Images(tag):  # the stored PNG has the stated size
            png = Image.open(io.BytesIO(event.encoded_image_string))
            assert png.size == (event.width, event.height) and png.mode == "RGB"
    return logged


def test_trl_hook_crashes_on_the_bare_tensorboard_tracker(tmp_path: Path) -> None:
    tracker = _tensorboard(tmp_path)
    with pytest.raises(NotImplementedError, match="list"):
        image_outputs_logger(_image_data(), 3, tracker)
    tracker.finish()


def test_trl_hook_logs_through_the_wrapped_tensorboard_tracker(tmp_path: Path) -> None:
    tracker = _tensorboard(tmp_path)
    image_outputs_logger(_image_data(), 3, wrap_tracker(tracker))
    assert _logged_images(tracker) == {
        "a red circle | 0.25": [(3, 256, 256)],
        "a blue square | 0.75": [(3, 256, 256)],
    }


def test_wrapped_tensorboard_takes_tensors_arrays_and_pil(tmp_path: Path) -> None:
    tracker = _tensorboard(tmp_path)
    wrapped = wrap_tracker(tracker)
    generator = torch.Generator().manual_seed(0)
    nchw = torch.rand(2, 3, 32, 48, generator=generator)
    nhwc = (np.random.default_rng(0).random((3, 32, 48, 3)) * 255).astype(np.uint8)
    pil = Image.fromarray(nhwc[0])
    wrapped.log_images(
        {
            "tensor_nchw_bf16": nchw.to(torch.bfloat16),
            "tensor_chw_uint8": (nchw[0] * 255).to(torch.uint8),
            "array_nhwc_uint8": nhwc,
            "array_hwc_float": nhwc[0] / 255.0,
            "array_hw": nhwc[0, ..., 0],
            "pil": pil,
            "pil_list": [pil, pil.convert("L"), pil.convert("RGBA")],
            "mixed": [pil, nchw[0], nhwc],  # 1 + 1 + 3 images, all 48x32
            "sizes": [pil, pil.resize((16, 16))],
        },
        step=5,
    )
    logged = _logged_images(tracker)
    one = [(5, 48, 32)]
    assert logged == {
        # add_images tiles a batch of n <= 8 images side by side
        "tensor_nchw_bf16": [(5, 2 * 48, 32)],
        "tensor_chw_uint8": one,
        "array_nhwc_uint8": [(5, 3 * 48, 32)],
        "array_hwc_float": one,
        "array_hw": one,
        "pil": one,
        "pil_list": [(5, 3 * 48, 32)],
        "mixed": [(5, 5 * 48, 32)],
        # different sizes under one key: one tag per image, no resizing
        "sizes/0": one,
        "sizes/1": [(5, 16, 16)],
    }


def test_to_pil_images_keeps_pixels_and_reads_layouts() -> None:
    rgb = (np.random.default_rng(1).random((8, 6, 3)) * 255).astype(np.uint8)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    for value in (rgb, chw, chw.float() / 255, chw.to(torch.bfloat16) / 255, Image.fromarray(rgb)):
        (image,) = to_pil_images("k", value)
        # bfloat16 keeps 8 significant bits: pixels within 1
        assert np.abs(np.asarray(image).astype(int) - rgb).max() <= 1
    (exact,) = to_pil_images("k", chw.float() / 255)
    np.testing.assert_array_equal(np.asarray(exact), rgb)
    # a tensor of shape (3, H, 3): channels first; an array of that shape: channels last
    square = torch.rand(3, 5, 3)
    assert to_pil_images("k", square)[0].size == (3, 5)
    assert to_pil_images("k", square.numpy())[0].size == (5, 3)
    # dataformats names the layout
    assert to_pil_images("k", square.numpy(), layout="CHW")[0].size == (3, 5)
    assert len(to_pil_images("k", torch.rand(4, 8, 8), layout="NHW")) == 4
    with pytest.raises(ValueError, match="channel axis"):
        to_pil_images("grey_batch", torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match=r"\[0, 300\]"):
        to_pil_images("k", np.array([[0, 300]]))
    with pytest.raises(ValueError, match="no images"):
        to_pil_images("empty", [])


def test_wrapped_tracker_rejects_what_is_not_an_image(tmp_path: Path) -> None:
    wrapped = wrap_tracker(_tensorboard(tmp_path))
    with pytest.raises(TypeError, match=r"'caption' must be .* got str"):
        wrapped.log_images({"caption": "a red circle"}, step=0)
    with pytest.raises(TypeError, match=r"'samples' holds a dict"):
        wrapped.log_images({"samples": [Image.new("RGB", (4, 4)), {"image": 1}]}, step=0)
    with pytest.raises(TypeError, match=r"'samples' holds an array of dtype complex"):
        wrapped.log_images({"samples": np.zeros((4, 4, 3), dtype=complex)}, step=0)
    wrapped.finish()


class _FakeRun:
    def __init__(self) -> None:
        self.logged: list[tuple[dict[str, Any], int | None, dict[str, Any]]] = []

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        self.logged.append((values, step, kwargs))


class _FakeWandbImage:
    """Stands in for ``wandb.Image``, which takes a PIL image or an HWC array."""

    def __init__(self, data: Any) -> None:
        assert isinstance(data, Image.Image | np.ndarray)
        self.data = data


@pytest.fixture
def fake_wandb(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("wandb")
    module.Image = _FakeWandbImage  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def test_trl_hook_logs_wandb_images(fake_wandb: types.ModuleType) -> None:
    # accelerate's own WandBTracker, its run replaced by a recorder (wandb.init is never called);
    # its logging needs the process state that the trainer's Accelerator holds
    PartialState()
    tracker = WandBTracker("run")
    tracker.run = _FakeRun()
    image_outputs_logger(_image_data(), 3, wrap_tracker(tracker))
    ((values, step, kwargs),) = tracker.run.logged
    assert step == 3 and kwargs == {}
    assert sorted(values) == ["a blue square | 0.75", "a red circle | 0.25"]
    for images in values.values():
        assert [type(im) for im in images] == [_FakeWandbImage]
        assert images[0].data.size == (256, 256)


def test_wandb_gets_a_list_of_images_per_key(fake_wandb: types.ModuleType) -> None:
    class Tracker:
        name = "wandb"

        def __init__(self) -> None:
            self.run = _FakeRun()

        def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
            self.run.log(values, step=step, **kwargs)

        def log_images(self, values: dict[str, Any], step: int | None = None) -> None:
            raise AssertionError("the wrapper logs wandb images itself")

    tracker = Tracker()
    batch = torch.rand(3, 3, 8, 12, device="cpu", dtype=torch.bfloat16)
    wrap_tracker(tracker).log_images(
        {"batch": batch, "pil": [Image.new("RGB", (5, 5))]}, step=2, dataformats="NCHW"
    )
    ((values, step, kwargs),) = tracker.run.logged
    assert step == 2 and kwargs == {}  # dataformats is a tensorboard word: not passed to wandb
    assert [im.data.size for im in values["batch"]] == [(12, 8)] * 3
    assert [im.data.size for im in values["pil"]] == [(5, 5)]


def test_wrapper_delegates_and_passes_other_trackers_through(tmp_path: Path) -> None:
    class Other:
        name = "aim"
        requires_logging_directory = False

        def __init__(self) -> None:
            self.calls: list[tuple[Any, ...]] = []

        @property
        def tracker(self) -> str:
            return "the run"

        def log(self, values: dict[str, Any], step: int | None = None) -> None:
            self.calls.append(("log", values, step))

        def log_images(self, values: Any, step: int | None = None, **kwargs: Any) -> None:
            self.calls.append(("log_images", values, step, kwargs))

    other = Other()
    wrapped = wrap_tracker(other)
    assert isinstance(wrapped, ImageTracker) and wrapped.unwrapped is other
    assert wrapped.name == "aim" and wrapped.tracker == "the run"
    assert not wrapped.requires_logging_directory
    values = {"raw": "anything"}
    wrapped.log({"loss": 1.0}, step=1)
    wrapped.log_images(values, step=2, caption="c")
    assert other.calls == [("log", {"loss": 1.0}, 1), ("log_images", values, 2, {"caption": "c"})]
    wrapped.extra = 3  # attributes are written to the tracker
    assert other.extra == 3
    assert repr(wrapped).startswith("ImageTracker(") and "Other" in repr(wrapped)
    with pytest.raises(AttributeError):
        _ = wrapped.missing

    # tensorboard's writer, config and finish are the tracker's own
    board = _tensorboard(tmp_path)
    wrapped_board = wrap_tracker(board)
    assert wrapped_board.writer is board.writer and wrapped_board.tracker is board.writer
    wrapped_board.log({"reward_mean": 0.5}, step=1)
    wrapped_board.finish()

    assert wrap_tracker(None) is None
    assert wrap_tracker(wrapped) is wrapped  # idempotent

    class Blank:  # accelerate's GeneralTracker(_blank=True) off the main process
        def log(self, values: dict[str, Any], step: int | None = None) -> None: ...

    blank = Blank()
    assert wrap_tracker(blank) is blank


# ---------------------------------------------------------------------------------------------
# Videos


def _video(frames: int = 4) -> torch.Tensor:
    return torch.rand(frames, 3, 10, 14, generator=torch.Generator().manual_seed(0))


def test_tensorboard_logs_a_video_as_an_animated_gif(tmp_path: Path) -> None:
    tracker = _tensorboard(tmp_path)
    frames = [Image.new("RGB", (6, 4), (40 * i, 0, 0)) for i in range(3)]
    wrap_tracker(tracker).log_videos({"clip": _video(), "pil": frames}, step=5, fps=8.0)
    tracker.finish()
    events = EventAccumulator(tracker.logging_dir, size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["clip", "pil"]
    for tag, size, count in (("clip", (14, 10), 4), ("pil", (6, 4), 3)):
        (event,) = events.Images(tag)
        gif = Image.open(io.BytesIO(event.encoded_image_string))
        assert event.step == 5 and (event.width, event.height) == size
        assert gif.format == "GIF" and gif.size == size and gif.n_frames == count
        assert gif.info["duration"] in (120, 130)  # 8 frames per second, in GIF's 10 ms steps


def test_wandb_gets_a_gif_video_and_other_trackers_their_own(
    fake_wandb: types.ModuleType,
) -> None:
    class FakeVideo:
        def __init__(self, data: Any, format: str) -> None:
            self.frames = Image.open(data).n_frames
            self.format = format

    fake_wandb.Video = FakeVideo  # type: ignore[attr-defined]

    class Tracker:
        name = "wandb"

        def __init__(self) -> None:
            self.run = _FakeRun()

        def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
            self.run.log(values, step=step, **kwargs)

        def log_images(self, values: dict[str, Any], step: int | None = None) -> None: ...

    tracker = Tracker()
    wrap_tracker(tracker).log_videos({"clip": _video(5)}, step=2)
    ((values, step, _),) = tracker.run.logged
    assert step == 2 and values["clip"].frames == 5 and values["clip"].format == "gif"

    class Own:
        name = "aim"

        def __init__(self) -> None:
            self.logged: list[tuple[Any, ...]] = []

        def log_images(self, values: Any, step: int | None = None) -> None: ...

        def log_videos(self, values: Any, step: int | None = None, fps: float = 0) -> None:
            self.logged.append((values, step, fps))

    own = Own()
    wrap_tracker(own).log_videos({"clip": _video(2)}, step=1, fps=4.0)
    ((values, step, fps),) = own.logged
    assert [f.size for f in values["clip"]] == [(14, 10)] * 2 and (step, fps) == (1, 4)

    class Plain:
        name = "mlflow"

        def log_images(self, values: Any, step: int | None = None) -> None: ...

    assert wrap_tracker(Plain()).log_videos({"clip": _video()}, step=1) is None
    with pytest.raises(ValueError, match=r"video must be \(frames, 3, H, W\)"):
        wrap_tracker(Plain()).log_videos({"clip": torch.rand(3, 8, 8)}, step=1)
    with pytest.raises(TypeError):  # "values must be a dict" (or the runtime shape checker's)
        wrap_tracker(Plain()).log_videos([_video()], step=1)  # type: ignore[arg-type]
