"""Held-out evaluation: a policy's images of a prompt set scored by any rewards, each reward's
mean over prompts with a 95 % confidence interval, and a fine-tuned model compared with its base
prompt by prompt (``ddpo eval`` on the command line).

- :func:`evaluate`, :class:`EvalReport`, :class:`EvalResult` and :func:`compare`
  (`ddpo.evaluation.run`);
- the named prompt sets, :data:`EVAL_PROMPT_SETS` and :func:`eval_prompts`
  (`ddpo.evaluation.prompt_sets`);
- the statistics, :func:`mean_interval`, :func:`paired_difference`, :class:`Interval` and
  :class:`Difference` (`ddpo.evaluation.stats`).
"""

from ddpo.evaluation.prompt_sets import EVAL_PROMPT_SETS, EvalPromptSetName, eval_prompts
from ddpo.evaluation.run import EvalReport, EvalResult, Sampler, compare, evaluate
from ddpo.evaluation.stats import Difference, Interval, mean_interval, paired_difference

__all__ = [
    "EVAL_PROMPT_SETS",
    "Difference",
    "EvalPromptSetName",
    "EvalReport",
    "EvalResult",
    "Interval",
    "Sampler",
    "compare",
    "eval_prompts",
    "evaluate",
    "mean_interval",
    "paired_difference",
]
