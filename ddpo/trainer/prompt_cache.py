"""Text embeddings of prompts seen before, kept instead of encoded again (``DDPOConfig.
prompt_embedding_cache_size``).

With a fixed prompt set (the paper trains on 45 animals) the text encoder otherwise runs on the
same prompts every batch. A prompt not in the cache is encoded on its own (a batch of one), so
its embedding does not depend on which prompts shared its batch: a run gives the same
embeddings whether a prompt was cached or not, and a resumed run (its cache empty) continues
exactly.
"""

from collections import OrderedDict
from collections.abc import Sequence

from ddpo.policy import Conditioning, DiffusionPolicy


class PromptEmbeddingCache:
    """``encode(prompts, negative_prompt)`` of a policy, remembering up to ``size`` prompts
    (least recently used dropped first)."""

    def __init__(self, policy: DiffusionPolicy, size: int) -> None:
        if size <= 0:
            raise ValueError(f"PromptEmbeddingCache: size must be > 0, got {size!r}")
        self.policy = policy
        self.size = size
        self.rows: OrderedDict[tuple[str, str], Conditioning] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def encode(self, prompts: Sequence[str], negative_prompt: str) -> Conditioning:
        """The conditioning of ``prompts`` in order, one cached row per distinct prompt."""
        parts = []
        for prompt in prompts:
            key = (prompt, negative_prompt)
            row = self.rows.get(key)
            if row is None:
                self.misses += 1
                row = self.policy.encode([prompt], negative_prompt)
                self.rows[key] = row
                if len(self.rows) > self.size:
                    self.rows.popitem(last=False)
            else:
                self.hits += 1
                self.rows.move_to_end(key)
            parts.append(row)
        return Conditioning.cat(parts)
