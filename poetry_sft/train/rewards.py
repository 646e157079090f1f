"""The prosody critic's parts as TRL reward functions, for the GRPO stage.

One reward function per part and penalty of `poetry_sft.poetry.critic`, each returning that part for
every completion, and the critic's weights as GRPOConfig.reward_weights (penalties negative). TRL then
logs each one (`rewards/<part>/mean`), so the curves show which part the policy learns, and the weighted
sum it optimises is the critic's score times the parts' total weight: the same judge as best-of-N and
rejection sampling. Every part is graded in [0, 1] (a rhyme share, not "rhymes or not": a binary rhyme
reward gave a model that rhymes 3% of the time almost no signal, ../FACTS.md), and the penalties close
the tricks a reward invites: repeating one character or line, writing the title into the poem, foreign
text, never stopping. A repeated rhyme character (重韵) earns no rhyme (critic.rhyme_part).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from poetry_sft.poetry.critic import PENALTIES, WEIGHT_NAMES, Critique, critique, even_line_finals

RewardFunction = Callable[..., list[float | None]]  # GRPOTrainer's type (None: no reward)


def rhyme_variety(completions: list[str], prompts: list[Any], **_: Any) -> list[float | None]:
    """The share of a poem's rhyme characters (even-line finals) that the other poems of its group (the same
    prompt) do not end on. The critic judges one poem; this judges it beside its siblings, because a policy
    can rhyme every poem with the same pair: without it the demo's GRPO ended all its poems on 年/眠."""
    finals = [set(even_line_finals(text)) for text in completions]
    groups: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        groups.setdefault(str(prompt), []).append(index)
    rewards: list[float | None] = []
    for index, prompt in enumerate(prompts):
        siblings = [finals[j] for j in groups[str(prompt)] if j != index]
        used_elsewhere = set().union(*siblings) if siblings else set()
        mine = finals[index]
        rewards.append(len(mine - used_elsewhere) / len(mine) if mine else 0.0)
    return rewards


def reward_functions(
    weights: dict[str, float], form: str | None, eos_token_ids: Sequence[int], variety: float = 0.0
) -> tuple[list[RewardFunction], list[float]]:
    """(reward functions, their weights) for GRPOTrainer: the critic's parts with a weight > 0.

    Each function takes TRL's keyword arguments: `completions` (texts), `completion_ids` (ending in an
    end token when the completion stopped by itself) and the prompt dataset's `title` and `rhyme_group`
    columns (the subject asked for; the 韵部 a rhyme-aware prompt asked for, or None).
    """
    stops = frozenset(eos_token_ids)

    @functools.lru_cache(maxsize=4096)  # every part function of a step judges the same completions
    def judge(completion: str, title: str | None, group: str | None, stopped: bool) -> Critique:
        return critique(
            completion, weights, form=form, rhyme_group=group, title=title, stopped_at_eos=stopped
        )

    def make(part: str) -> RewardFunction:
        def reward(
            completions: list[str], completion_ids: list[list[int]], **columns: Any
        ) -> list[float | None]:
            titles = columns.get("title") or [None] * len(completions)
            groups = columns.get("rhyme_group") or [None] * len(completions)
            return [
                judge(text, title, group or None, bool(ids) and ids[-1] in stops).parts[part]
                for text, ids, title, group in zip(completions, completion_ids, titles, groups, strict=True)
            ]

        reward.__name__ = part  # TRL logs rewards/<__name__>/mean
        return reward

    names = [name for name in WEIGHT_NAMES if weights[name] > 0]
    signed = [-weights[name] if name in PENALTIES else weights[name] for name in names]
    functions = [make(name) for name in names]
    if variety > 0:  # stage.rhyme_variety
        functions.append(rhyme_variety)
        signed.append(variety)
    return functions, signed
