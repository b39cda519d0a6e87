"""The environment a stack's name decides: the one rule config load, the policy pack, the offline preview and CI
share (a stack file cannot declare itself into laxer rules than its name gives it).

The rule, as docs/runbook.md states it:

1. The name is cut into words at every character that is not a letter: `-`, `_`, `.`, `/`, spaces and digits
   (`prod2`, `eu-west-1-prod`, `Team_PROD`); case does not matter.
2. A word decides an environment when it is made of environment words and qualifiers glued together, in any
   order: environment words `dev`, `develop`, `development` (dev), `staging`, `stage`, `stg` (staging), `prod`,
   `production`, `prd` (prod); qualifiers `QUALIFIERS` (regions, places, deployment colours) decide nothing.
   `prodeu`, `euprod`, `produseast`, `stgap` are read; `product`, `devops`, `backstage` are not (other words).
3. `pre` before a prod word, glued or not, means the stage before prod: `preprod`, `pre-prod`, `preproduction`
   are staging. `non` before a prod word means not prod, and names no environment: `nonprod` decides nothing
   on its own (`nonprod-dev` is dev).
4. A name with words of several environments gets the strictest (prod > staging > dev): `dev-prod-mirror` is
   prod. A name with none (`sandbox`, `product`) decides nothing: the stack file's `environment` stands.
"""

from __future__ import annotations

import re
from functools import lru_cache

ENVIRONMENT_WORDS = {
    "dev": "dev",
    "develop": "dev",
    "development": "dev",
    "staging": "staging",
    "stage": "staging",
    "stg": "staging",
    "prod": "prod",
    "production": "prod",
    "prd": "prod",
}
STRICTNESS = ("dev", "staging", "prod")

# Words glued to an environment word that decide nothing themselves: AWS region parts, places, colours.
QUALIFIERS = frozenset(
    """us eu ap sa ca me af il mx cn gov east west north south central northeast southeast northwest southwest
    uk de fr jp au in br sg kr emea apac amer latam na global intl blue green canary primary secondary dr""".split()
)
# Before a prod word: `pre` makes it the stage before prod (staging), `non` makes it no environment.
_BEFORE_PROD = {"pre": "staging", "non": None}

_VOCABULARY = frozenset(ENVIRONMENT_WORDS) | QUALIFIERS | frozenset(_BEFORE_PROD)


@lru_cache(maxsize=1024)
def _parts(word: str) -> tuple[str, ...] | None:
    """`word` as vocabulary words glued together (the reading with the fewest parts), or None when it is not."""
    if not word:
        return ()
    best: tuple[str, ...] | None = None
    for end in range(len(word), 0, -1):
        head = word[:end]
        if head not in _VOCABULARY:
            continue
        rest = _parts(word[end:])
        if rest is not None and (best is None or len(rest) + 1 < len(best)):
            best = (head, *rest)
    return best


def words_of(stack: str) -> list[str]:
    """The parts of a stack name the rule reads, in order: `eu-preprod2` → eu, pre, prod."""
    found: list[str] = []
    for word in re.split(r"[^a-z]+", stack.lower()):
        parts = _parts(word)
        if parts:
            found.extend(parts)
        elif word:
            found.append(word)  # another word: kept, so that `pre product` does not read as `pre prod`
    return found


def environments_named(stack: str) -> set[str]:
    """Every environment the words of a stack name decide."""
    words = words_of(stack)
    found: set[str] = set()
    skip = False
    for index, word in enumerate(words):
        if skip:
            skip = False
            continue
        following = words[index + 1] if index + 1 < len(words) else None
        if word in _BEFORE_PROD and following is not None and ENVIRONMENT_WORDS.get(following) == "prod":
            if _BEFORE_PROD[word]:
                found.add(_BEFORE_PROD[word])
            skip = True
        elif word in ENVIRONMENT_WORDS:
            found.add(ENVIRONMENT_WORDS[word])
    return found


def environment_of_stack(stack: str) -> str | None:
    """The environment a stack's name decides (the strictest its words name), None when it names none."""
    found = environments_named(stack)
    return max(found, key=STRICTNESS.index) if found else None
