"""The README's Python snippets run as written, in order, in a fresh folder."""

import os
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def train_commands() -> list[list[str]]:
    """The flags of every ``ddpo train`` command in the README's bash blocks (also after
    ``accelerate launch ... -m ddpo``), continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for i in range(len(words) - 1):
                if words[i : i + 2] == ["ddpo", "train"]:
                    commands.append([w for w in words[i + 2 :] if w != "&"])
    return commands


def test_readme_train_commands_parse() -> None:
    """Each documented ``ddpo train`` command passes the flag checks (e.g. the ``ocr`` reward
    needs prompts with quoted text)."""
    from ddpo.cli import parse_train_args

    commands = train_commands()
    assert len(commands) >= 6
    ocr = [c for c in commands if "ocr" in c]
    assert ocr and all("text_rendering" in c for c in ocr)
    for flags in commands:
        parse_train_args(flags)


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
