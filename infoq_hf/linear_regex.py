"""Regular expressions matched in linear time: a Thompson NFA built from Python's own regex parser.

A `re:` policy key can come from a downloaded config.json, so it must not be able to stall loading:
Python's backtracking `re` takes exponential time on patterns such as `(.|.)*Z`. `LinearRegex` parses
with `re` (the same syntax and errors) and simulates every alternative at once (Thompson, "Regular
Expression Search Algorithm", 1968; as RE2 does), so `fullmatch` costs O(len(name) x pattern size).
Supported: literals, `.`, classes and `\\d \\w \\s`, groups, `|`, `* + ? {m,n}` (greedy or lazy: the
same for a yes/no match), `^` and `$`. Back-references, look-arounds and inline flags are refused.
"""

from __future__ import annotations

import re

try:  # the parser `re` itself uses (named sre_parse before Python 3.11)
    from re import _constants as sre  # noqa: PLC2701
    from re import _parser as sre_parse
except ImportError:  # pragma: no cover
    import sre_constants as sre  # type: ignore[no-redef]
    import sre_parse  # type: ignore[no-redef]

MAX_STATES = 20_000  # a {m,n} repeat is unrolled: bound the automaton's size


def _word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


_CATEGORIES = {
    sre.CATEGORY_DIGIT: str.isdecimal,
    sre.CATEGORY_NOT_DIGIT: lambda c: not c.isdecimal(),
    sre.CATEGORY_WORD: _word,
    sre.CATEGORY_NOT_WORD: lambda c: not _word(c),
    sre.CATEGORY_SPACE: str.isspace,
    sre.CATEGORY_NOT_SPACE: lambda c: not c.isspace(),
}


class _State:
    __slots__ = ("test", "out", "at")

    def __init__(self, test=None, out=(), at=None):
        self.test, self.out, self.at = test, list(out), at  # test(ch) for a char state; at: "^"/"$" assertion


class LinearRegex:
    """`re.compile(pattern)` restricted to what a finite automaton can match; `fullmatch` in linear time."""

    def __init__(self, pattern: str):
        self.pattern = pattern
        parsed = sre_parse.parse(pattern)  # re.error for invalid syntax, as re.compile
        if parsed.state.flags & ~(re.UNICODE | getattr(sre, "SRE_FLAG_UNICODE", 0)):
            raise re.error("inline flags such as (?i) are not supported in a policy pattern")
        self._count = 0
        self.match_state = self._new()
        self.start = self._sequence(list(parsed), self.match_state)

    def _new(self, **kwargs) -> _State:
        self._count += 1
        if self._count > MAX_STATES:
            raise re.error(
                f"the pattern is too large (over {MAX_STATES} automaton states); write it without large {{m,n}} repeats"
            )
        return _State(**kwargs)

    def _sequence(self, items, nxt: _State) -> _State:
        for op, arg in reversed(items):
            nxt = self._item(op, arg, nxt)
        return nxt

    def _item(self, op, arg, nxt: _State) -> _State:
        if op is sre.LITERAL:
            char = chr(arg)
            return self._new(test=lambda c: c == char, out=[nxt])
        if op is sre.NOT_LITERAL:
            char = chr(arg)
            return self._new(test=lambda c: c != char, out=[nxt])
        if op is sre.ANY:
            return self._new(test=lambda c: c != "\n", out=[nxt])
        if op is sre.IN:
            return self._new(test=self._char_class(arg), out=[nxt])
        if op is sre.SUBPATTERN:
            group, add_flags, del_flags, sub = arg
            if add_flags or del_flags:
                raise re.error("inline flags such as (?i) are not supported in a policy pattern")
            return self._sequence(list(sub), nxt)
        if op is sre.BRANCH:
            return self._new(out=[self._sequence(list(alt), nxt) for alt in arg[1]])
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
            low, high, sub = arg
            sub = list(sub)
            if high is sre.MAXREPEAT:
                loop = self._new()
                loop.out = [self._sequence(sub, loop), nxt]
                nxt = loop
            else:
                for _ in range(high - low):
                    nxt = self._new(out=[self._sequence(sub, nxt), nxt])
            for _ in range(low):
                nxt = self._sequence(sub, nxt)
            return nxt
        if op is sre.AT and arg in (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING):
            return self._new(at="^", out=[nxt])
        if op is sre.AT and arg in (sre.AT_END, sre.AT_END_STRING):
            return self._new(at="$", out=[nxt])
        raise re.error(
            f"{str(op).lower()} (back-references, look-arounds, word boundaries) is not supported in a "
            "policy pattern: it cannot be matched in linear time"
        )

    def _char_class(self, items):
        negate, tests = False, []
        for op, arg in items:
            if op is sre.NEGATE:
                negate = True
            elif op is sre.LITERAL:
                char = chr(arg)
                tests.append(lambda c, v=char: c == v)
            elif op is sre.RANGE:
                low, high = chr(arg[0]), chr(arg[1])
                tests.append(lambda c, lo=low, hi=high: lo <= c <= hi)
            elif op is sre.CATEGORY and arg in _CATEGORIES:
                tests.append(_CATEGORIES[arg])
            else:
                raise re.error(f"{op} in a character class is not supported in a policy pattern")
        return lambda c: any(t(c) for t in tests) != negate

    def _closure(self, states, pos: int, end: int) -> list[_State]:
        seen, stack, out = set(), list(states), []
        while stack:
            s = stack.pop()
            if id(s) in seen:
                continue
            seen.add(id(s))
            if s.at == "^" and pos != 0 or s.at == "$" and pos != end:
                continue
            if s.test is not None or s is self.match_state:
                out.append(s)
            else:
                stack.extend(s.out)
        return out

    def fullmatch(self, text: str) -> bool | None:
        """True when the whole of `text` matches, else None (as `re.fullmatch` gives a match or None)."""
        current = self._closure([self.start], 0, len(text))
        for pos, ch in enumerate(text):
            following = [nxt for s in current if s.test is not None and s.test(ch) for nxt in s.out]
            current = self._closure(following, pos + 1, len(text))
            if not current:
                return None
        return True if any(s is self.match_state for s in current) else None


__all__ = ["LinearRegex"]
