"""Which file names a glob can match, compared exactly: does one set hold another?

Routing takes the first pipeline whose globs match a name, so a pipeline
whose every glob only matches names that an earlier pipeline (or `ignore`)
already takes can never receive a file.  Globs are regular languages, so this
is decided exactly, not guessed: each glob becomes a small automaton (a `*`
loops, anything else steps), and the union of the earlier globs is explored
together with the later one, character class by character class, until a
name is found that the later glob matches and none of the earlier do, or no
such name exists.

The glob syntax is fnmatch's, as routing compiles it (`compile_globs` below):
`*`, `?`, `[...]` and `[!...]`; everything else is literal.  A class is
tokenised with fnmatch's own rule for finding its "]" and its members are
tested with fnmatch's own translation, so the two can never disagree.  Real
names are never empty and never hold "/" or NUL; those are left out of the
alphabet.
"""

from __future__ import annotations

import fnmatch
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["TooComplexError", "overlaps", "uncovered_name"]

_MAX_CODE = 0x110000
_EXCLUDED = ("\0", "/")  # never in a file name
_STATE_LIMIT = 20_000  # product states explored before giving up (never reached by real globs)


class TooComplexError(Exception):
    """The comparison would explore too many states; the caller must not conclude."""


@dataclass(frozen=True)
class _Token:
    kind: str  # "star", "one" (any one character), "set" (a class or a literal)
    text: str  # the class text ("[a-z]") or the literal character


def _tokens(pattern: str) -> list[_Token]:
    """Split a glob as fnmatch.translate reads it (Python 3.11 to 3.13)."""
    tokens: list[_Token] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if not tokens or tokens[-1].kind != "star":  # "**" is "*"
                tokens.append(_Token("star", c))
        elif c == "?":
            tokens.append(_Token("one", c))
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                tokens.append(_Token("set", re.escape("[")))  # an unclosed "[" is literal
            else:
                tokens.append(_Token("set", pattern[i - 1 : j + 1]))
                i = j + 1
        else:
            tokens.append(_Token("set", re.escape(c)))
    return tokens


class _Alphabet:
    """Every character, cut into intervals that no glob involved tells apart.

    Each class or literal is a union of ranges whose ends are characters of
    the pattern text, so cutting at every character c and c+1 of every
    pattern gives intervals on which each of them matches all or nothing; one
    representative per interval stands for all of it.
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        cuts = {0}
        for text in (*patterns, *_EXCLUDED):
            for c in text:
                cuts.add(ord(c))
                if ord(c) + 1 < _MAX_CODE:
                    cuts.add(ord(c) + 1)
        self.starts = sorted(cuts)
        self.letters = [chr(s) for s in self.starts if chr(s) not in _EXCLUDED]

    def members(self, token: _Token) -> frozenset[int]:
        """Indices in `letters` that the token matches."""
        if token.kind != "set":
            return frozenset(range(len(self.letters)))
        # fnmatch's own translation of the class (or escaped literal) alone: its
        # members are decided by the same code that routing uses.
        one = re.compile(
            fnmatch.translate(token.text) if token.text.startswith("[") else token.text
        )
        return frozenset(i for i, ch in enumerate(self.letters) if one.fullmatch(ch))


_States = frozenset[tuple[int, int]]
_Triple = tuple[_States, _States, _States]  # the glob, those wanted, those not


class _Automaton:
    """The union of some globs: states are (glob, position) pairs."""

    def __init__(self, patterns: Sequence[str], alphabet: _Alphabet) -> None:
        self.tokens = [_tokens(p) for p in patterns]
        self.members = [[alphabet.members(t) for t in tokens] for tokens in self.tokens]

    def closure(self, states: set[tuple[int, int]]) -> _States:
        todo = list(states)
        seen = set(states)
        while todo:
            k, p = todo.pop()
            tokens = self.tokens[k]
            if p < len(tokens) and tokens[p].kind == "star" and (k, p + 1) not in seen:
                seen.add((k, p + 1))
                todo.append((k, p + 1))
        return frozenset(seen)

    def start(self) -> _States:
        return self.closure({(k, 0) for k in range(len(self.tokens))})

    def step(self, states: _States, letter: int) -> _States:
        after: set[tuple[int, int]] = set()
        for k, p in states:
            tokens = self.tokens[k]
            if p >= len(tokens):
                continue
            if tokens[p].kind == "star":
                after.add((k, p))
            elif letter in self.members[k][p]:
                after.add((k, p + 1))
        return self.closure(after)

    def accepts(self, states: _States) -> bool:
        return any(p == len(self.tokens[k]) for k, p in states)


def witness(
    glob: str, among: Sequence[str] | None = None, besides: Sequence[str] = ()
) -> str | None:
    """A file name GLOB matches, also one of AMONG (if given), and none of BESIDES.

    None means, exactly, that there is no such name.  Raises TooComplexError
    rather than answer when the exploration grows too big.
    """
    if among is not None and not among:
        return None
    alphabet = _Alphabet([glob, *(among or ()), *besides])
    mine = _Automaton([glob], alphabet)
    wanted = _Automaton(among, alphabet) if among is not None else None
    unwanted = _Automaton(besides, alphabet)
    start: _Triple = (mine.start(), wanted.start() if wanted else frozenset(), unwanted.start())
    parent: dict[_Triple, tuple[_Triple, int] | None] = {start: None}
    queue: deque[_Triple] = deque([start])
    while queue:
        state = queue.popleft()
        for letter in range(len(alphabet.letters)):
            a = mine.step(state[0], letter)
            b = wanted.step(state[1], letter) if wanted else frozenset()
            if not a or (wanted and not b):
                continue  # no longer a name of GLOB (or of AMONG), whatever follows
            nxt: _Triple = (a, b, unwanted.step(state[2], letter))
            if nxt in parent:
                continue
            parent[nxt] = (state, letter)
            if (
                mine.accepts(a)
                and (wanted is None or wanted.accepts(b))
                and not unwanted.accepts(nxt[2])
            ):
                return _spell(parent, nxt, alphabet)
            if len(parent) > _STATE_LIMIT:
                raise TooComplexError(glob)
            queue.append(nxt)
    return None


def _spell(
    parent: dict[_Triple, tuple[_Triple, int] | None], end: _Triple, alphabet: _Alphabet
) -> str:
    letters: list[str] = []
    link = parent[end]
    while link is not None:
        state, letter = link
        letters.append(alphabet.letters[letter])
        link = parent[state]
    return "".join(reversed(letters))


def uncovered_name(glob: str, earlier: Sequence[str]) -> str | None:
    """A file name GLOB matches and none of EARLIER do; None if EARLIER take all of them."""
    return witness(glob, besides=earlier)


def overlaps(glob: str, other: Sequence[str]) -> bool:
    """Whether some file name is matched both by GLOB and by one of OTHER."""
    return witness(glob, among=other) is not None


def compile_globs(patterns: Sequence[str]) -> re.Pattern[str]:
    """PATTERNS as one compiled alternation: matching a name costs one regex call,
    not one per glob."""
    if not patterns:
        return re.compile(r"(?!)")
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns), re.DOTALL)
