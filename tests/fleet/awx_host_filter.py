# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``host_filter`` of an AWX smart inventory, restricted to ``ansible_facts`` terms.

Written to the behaviour of AWX's ``SmartFilter`` (``awx/main/utils/filters.py`` in ansible/awx,
Apache-2.0; read, not copied), so that the filters our docs and examples give can be checked
against real ``gpuvirt`` fact output without an AWX server:

- Grammar: terms ``key=value`` joined by ``and`` (binds tighter) and ``or``, left to right, with
  parentheses; the whole filter is parsed as if it were in parentheses. A key or value is either
  a run of characters other than white space, ``(``, ``)``, ``=`` and ``"``, or a double-quoted
  string without ``"`` inside. The keywords are lower case.
- Values: an unquoted ``true``/``false``/``null``, integer or decimal becomes that JSON value; a
  quoted one stays a string (``""`` is the empty string; ``"null"`` keeps its quotes).
- An ``ansible_facts__a__b[]__c=v`` key becomes a PostgreSQL ``jsonb`` containment query on the
  host's facts: ``{"a": {"b": [{"c": v}]}}`` (``[]`` makes a level an array that must contain a
  matching element; a trailing ``__exact`` is dropped). Containment (``@>``): every key of an
  object pattern is in the document with a contained value, every element of an array pattern is
  contained in some element of the document's array, scalars are equal with the same JSON type.

Other keys (``name=``, ``groups__name=``, ``search=``) are Django lookups on the host record and
are refused here.
"""

from __future__ import annotations

import re

PREFIX = "ansible_facts"
_TOKEN = re.compile(r'\s*(?:(?P<quoted>"[^"]*")|(?P<paren>[()])|(?P<equals>=)|(?P<atom>[^\s()="]+))')


class FilterError(ValueError):
    pass


def _tokens(text):
    position, found = 0, []
    while True:
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            if text[position:].strip():
                raise FilterError("invalid query %r: cannot read %r" % (text, text[position:]))
            return found
        kind = match.lastgroup
        found.append((kind, match.group(kind)))
        position = match.end()


def typed(value):
    """An unquoted value as AWX reads it (its ``string_to_type``)."""
    if value == "null":
        return None
    if value in ("true", "false"):
        return value == "true"
    if re.fullmatch(r"[-+]?[0-9]+", value):
        return int(value)
    if re.fullmatch(r"[-+]?[0-9]+\.[0-9]+", value):
        return float(value)
    return value


def pattern(key, value):
    """The ``jsonb`` containment pattern of one ``ansible_facts`` term."""
    if key != PREFIX and not key.startswith(PREFIX + "__"):
        raise FilterError("%s is a lookup on the host record, not on ansible_facts" % key)
    if key.endswith("__exact"):
        key = key[: -len("__exact")]
    pieces = key[len(PREFIX) + 2:].split("__") if key != PREFIX else []
    if not pieces or not all(piece.rstrip("[]") for piece in pieces):
        raise FilterError("%s names no fact" % key)
    built = value
    for piece in reversed(pieces):
        built = {piece[:-2]: [built]} if piece.endswith("[]") else {piece: built}
    return built


def contains(document, wanted):
    """PostgreSQL's ``document @> wanted`` on JSON values."""
    if isinstance(wanted, dict):
        return isinstance(document, dict) and all(
            key in document and contains(document[key], value) for key, value in wanted.items())
    if isinstance(wanted, list):
        return isinstance(document, list) and all(any(contains(item, value) for item in document) for value in wanted)
    if isinstance(wanted, bool) or isinstance(document, bool):
        return isinstance(wanted, bool) and isinstance(document, bool) and wanted == document
    if isinstance(wanted, (int, float)) and isinstance(document, (int, float)):
        return wanted == document
    return type(wanted) is type(document) and wanted == document


class _Parser:
    def __init__(self, text):
        self.text = text
        self.tokens = _tokens(text)
        self.position = 0

    def peek(self):
        return self.tokens[self.position] if self.position < len(self.tokens) else (None, None)

    def take(self, kind=None, value=None):
        token = self.peek()
        if token[0] is None or (kind and token[0] != kind) or (value and token[1] != value):
            raise FilterError("invalid query %r at token %d" % (self.text, self.position + 1))
        self.position += 1
        return token

    def joined(self, operator, operand):
        """``operand (operator operand)*``, left to right."""
        terms = [operand()]
        while self.peek() == ("atom", operator):
            self.take()
            terms.append(operand())
        return (operator, terms) if len(terms) > 1 else terms[0]

    def either(self):
        return self.joined("or", self.both)

    def both(self):
        return self.joined("and", self.term)

    def term(self):
        if self.peek() == ("paren", "("):
            self.take()
            inner = self.either()
            self.take("paren", ")")
            return inner
        kind, key = self.peek()
        if kind not in ("atom", "quoted"):
            raise FilterError("invalid query %r: a term must start with a key" % self.text)
        self.take()
        key = key[1:-1] if kind == "quoted" else key
        self.take("equals")
        kind, value = self.peek()
        if kind == "quoted":
            self.take()
            # AWX keeps the quotes of "null", to tell it from the unquoted JSON null.
            value = value if value == '"null"' else value[1:-1]
        elif kind == "atom":
            self.take()
            value = typed(value)
        else:
            raise FilterError("invalid query %r: %s= has no value" % (self.text, key))
        return ("term", pattern(key, value))


def parse(text):
    """The filter as a tree of ``("and"|"or", [...])`` and ``("term", pattern)``."""
    parser = _Parser("(" + text + ")")
    tree = parser.either()
    if parser.peek()[0] is not None:
        raise FilterError("invalid query %r: unexpected %r" % (text, parser.peek()[1]))
    return tree


def matches(tree, facts):
    kind, content = tree
    if kind == "term":
        return contains(facts, content)
    results = [matches(item, facts) for item in content]
    return all(results) if kind == "and" else any(results)


def select(text, hosts):
    """The names of the hosts (name -> ansible_facts) the filter selects."""
    tree = parse(text)
    return sorted(name for name, facts in hosts.items() if matches(tree, facts))
