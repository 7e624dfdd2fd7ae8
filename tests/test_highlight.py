"""Highlighting follows the grammar: the Pygments lexer and the TextMate grammar give every token
of every shipped spec and of random sentences of the grammar a colour, the grammar's keywords and
operators theirs, and the committed TextMate grammar is the one the grammar gives."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from pygments.lexers import get_lexer_by_name, get_lexer_for_filename
from pygments.token import Comment, Error, Keyword, Name, Number, Operator, Punctuation, String

from grammar_sentences import grammar_sentences
from mtl_dsl.frontend import iter_builtin_specs
from mtl_dsl.frontend.parser import GRAMMAR
from mtl_dsl.highlight import textmate
from mtl_dsl.highlight.lexer import MtlLexer

ROOT = Path(__file__).resolve().parent.parent
VSCODE = ROOT / "editors" / "vscode"
SPECS = {p.name: p.read_text() for p in iter_builtin_specs()}
# The literal terminals of the grammar file, read here on their own (not through words.py).
LITERALS = dict(re.findall(r'^([A-Z_]+):\s*"([^"]+)"\s*$', GRAMMAR.read_text(), re.M))
KEYWORDS = {v for v in LITERALS.values() if v.isalpha()}


def pygments_tokens(text: str) -> list[tuple[object, str]]:
    return [(t, v) for t, v in MtlLexer().get_tokens(text) if v.strip()]


def assert_lexed(text: str) -> None:
    tokens = list(MtlLexer(stripnl=False).get_tokens(text))
    assert "".join(v for _, v in tokens) == text + ("" if text.endswith("\n") else "\n")
    errors = [v for t, v in tokens if t in Error]
    assert not errors, f"tokens the lexer does not know: {errors}"


# -- Pygments ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_token_of_every_shipped_spec_gets_a_type(name):
    assert_lexed(SPECS[name])


@settings(max_examples=150, deadline=None)
@given(text=grammar_sentences())
def test_every_sentence_of_the_grammar_lexes_without_errors(text):
    assert_lexed(text)


def test_keywords_and_operators_of_the_grammar_get_their_types():
    assert KEYWORDS >= {"import", "block", "model", "for", "if", "table", "preset", "true"}
    for word in KEYWORDS:
        ((kind, value),) = pygments_tokens(word)
        assert kind in Keyword and value == word
    for symbol in set(LITERALS.values()) - KEYWORDS:
        ((kind, value),) = pygments_tokens(symbol)
        assert (kind in Operator or kind in Punctuation) and value == symbol


def test_names_calls_definitions_literals_and_comments():
    tokens = pygments_tokens('block head(x) { return conv_bn_act(x, 1.5e-3, "s\\"q") }  # c\n'
                             'weights official { unused "a": "b" }\nformat = none\n')
    kinds = dict((v, t) for t, v in tokens)
    assert kinds["block"] in Keyword and kinds["head"] in Name.Function
    assert kinds["conv_bn_act"] in Name.Function and kinds["x"] in Name
    assert kinds["1.5e-3"] in Number and kinds['"s\\"q"'] in String
    assert kinds["# c"] in Comment and kinds["weights"] in Keyword and kinds["unused"] in Keyword
    assert kinds["format"] is Name and kinds["none"] in Keyword.Constant  # `for` is no prefix


def test_the_lexer_is_registered_for_pygments():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pygments.lexers"]["mtl"] == "mtl_dsl.highlight.lexer:MtlLexer"
    assert type(get_lexer_by_name("mtl")) is MtlLexer
    assert type(get_lexer_for_filename("demt.mtl")) is MtlLexer
    done = subprocess.run([sys.executable, "-m", "pygments", "-l", "mtl", "-f", "html"],
                          input=SPECS["demt.mtl"], capture_output=True, text=True, check=True)
    assert '<span class="kd">model</span>' in done.stdout and 'class="err"' not in done.stdout


# -- TextMate ------------------------------------------------------------------------------------

def textmate_scopes(text: str, grammar: dict) -> list[tuple[str, str]]:
    """(text, scope) of each match, as a TextMate engine scans one line: at each position the
    pattern matching earliest wins, the first listed on a tie."""
    rules = []
    for p in grammar["patterns"]:
        names = {0: p["name"]} if "name" in p else {int(k): v["name"]
                                                   for k, v in p["captures"].items()}
        rules.append((re.compile(p["match"]), names))
    out = []
    for line in text.split("\n"):
        pos = 0
        while pos < len(line):
            best = None
            for pattern, names in rules:
                m = pattern.search(line, pos)
                if m and m.end() > m.start() and (best is None or m.start() < best[0].start()):
                    best = (m, names)
            if best is None:
                out.append((line[pos:], ""))
                break
            m, names = best
            out.append((line[pos:m.start()], ""))
            for group, scope in names.items():
                out.append((m.group(group), scope))
            if 0 not in names:  # the text between captures (whitespace) has no scope
                rest = m.group(0)
                for group in names:
                    rest = rest.replace(m.group(group), "", 1)
                out.append((rest, ""))
            pos = m.end()
    return out


def assert_scoped(text: str) -> None:
    grammar = json.loads((VSCODE / "syntaxes" / "mtl.tmLanguage.json").read_text())
    unscoped = [t for t, scope in textmate_scopes(text, grammar) if not scope and t.strip()]
    assert not unscoped, f"text the TextMate grammar gives no scope: {unscoped}"


def test_the_textmate_grammar_is_the_one_the_grammar_gives():
    committed = (VSCODE / "syntaxes" / "mtl.tmLanguage.json").read_text()
    assert committed == textmate.render(), \
        "run: python -m mtl_dsl.highlight.textmate > editors/vscode/syntaxes/mtl.tmLanguage.json"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_token_of_every_shipped_spec_gets_a_textmate_scope(name):
    assert_scoped(SPECS[name])


@settings(max_examples=100, deadline=None)
@given(text=grammar_sentences())
def test_every_sentence_of_the_grammar_gets_textmate_scopes(text):
    assert_scoped(text)


def test_textmate_scopes_of_keywords_and_operators():
    grammar = json.loads((VSCODE / "syntaxes" / "mtl.tmLanguage.json").read_text())
    for word in KEYWORDS:
        ((text, scope),) = [x for x in textmate_scopes(word, grammar) if x[0].strip()]
        assert text == word and scope.split(".")[0] in ("keyword", "constant")
    for symbol in set(LITERALS.values()) - KEYWORDS:
        ((text, scope),) = [x for x in textmate_scopes(symbol, grammar) if x[0].strip()]
        assert text == symbol and scope.split(".")[0] in ("keyword", "punctuation")
    scopes = dict(textmate_scopes('model m(x) { y = f(x) :: [B] }  # note', grammar))
    assert scopes["model"] == "storage.type.mtl" and scopes["m"] == "entity.name.function.mtl"
    assert scopes["f"] == "entity.name.function.call.mtl" and scopes["y"] == "variable.other.mtl"
    assert scopes["# note"] == "comment.line.number-sign.mtl"


# -- the VS Code folder --------------------------------------------------------------------------

def test_the_vscode_extension_names_its_grammar_language_configuration_and_server():
    package = json.loads((VSCODE / "package.json").read_text())
    (language,) = package["contributes"]["languages"]
    (grammar,) = package["contributes"]["grammars"]
    assert language["extensions"] == [".mtl"] and grammar["language"] == language["id"]
    assert (VSCODE / grammar["path"]).is_file() and grammar["scopeName"] == textmate.SCOPE
    config = json.loads((VSCODE / language["configuration"]).read_text())
    comment_start = re.search(r'^COMMENT:\s*/(.)', GRAMMAR.read_text(), re.M).group(1)
    assert config["comments"]["lineComment"] == comment_start
    pairs = {(LITERALS[o], LITERALS[c]) for o, c in
             (("LPAR", "RPAR"), ("LSQB", "RSQB"), ("LBRACE", "RBRACE"))}
    assert {tuple(p) for p in config["brackets"]} == pairs
    properties = package["contributes"]["configuration"]["properties"]
    assert properties["mtl.server.command"]["default"] == ["mtl-dsl", "lsp"]
    assert {"mtl.tasks", "mtl.input"} <= set(properties)
    client = (VSCODE / package["main"]).read_text()
    assert 'configurationSection: "mtl"' in client and "initializationOptions" in client
