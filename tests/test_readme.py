"""The README's Python snippets run as written, in order, in a fresh folder."""

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_the_usage_snippets() -> None:
    blocks = python_blocks()
    assert any("DDPOTrainer(config, reward_fn, prompt_fn" in b for b in blocks)
    assert any("StableDiffusionPipeline.from_pretrained(" in b for b in blocks)


@pytest.mark.slow
def test_readme_snippets_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme"}
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), namespace)
    metrics = (tmp_path / "runs" / "jpeg" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2  # num_epochs=2 in the snippet
    assert (tmp_path / "runs" / "jpeg" / "final" / "model_index.json").is_file()
    assert sorted(os.listdir(tmp_path)) == ["runs", "sample_0.png", "sample_1.png"]
