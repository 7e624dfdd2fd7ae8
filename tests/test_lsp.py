"""``mtl-dsl lsp``: the real server, started as a process and driven over its protocol by pygls's
client (initialize, didOpen, didChange, publishDiagnostics, hover, completion, definition,
documentSymbol, formatting, didChangeConfiguration), on the shipped specs and broken ones.

The diagnostics are compared with what ``mtl-dsl check`` prints for the same file, rendered the
same way; the server never imports torch (its ``-X importtime`` log).
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from lsprotocol import types as lsp
from pygls.uris import to_fs_path

from lsp_session import Session
from mtl_dsl.api import check_spec
from mtl_dsl.cli import main
from mtl_dsl.errors import Diagnostic
from mtl_dsl.fmt import format_source
from mtl_dsl.frontend.parser import parse_source
from mtl_dsl.frontend import iter_builtin_specs
from mtl_dsl.lsp.analysis import recover
from mtl_dsl.types import describe

SPECS = {p.name: p for p in iter_builtin_specs()}
TASKS = "nyud"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A copy of the shipped specs (the tests edit documents; the files stay as shipped)."""
    folder = tmp_path_factory.mktemp("specs")
    for name, path in SPECS.items():
        shutil.copy(path, folder / name)
    return folder


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    log = tmp_path_factory.mktemp("lsp") / "stderr.txt"
    s = Session(log, {"mtl": {"tasks": TASKS}})
    s.start()
    yield s
    s.stop()


def rendered(path: Path, text: str, diagnostics: list[lsp.Diagnostic]) -> str:
    """The server's diagnostics printed as ``mtl-dsl check`` prints errors (those of another
    file, which the server shows on an import, are printed where they point)."""
    lines = text.split("\n")
    out = []
    for d in diagnostics:
        message, *rest = d.message.split("\n")
        notes = tuple(r[len("note: "):] for r in rest if r.startswith("note: "))
        hint = next((r[len("hint: "):] for r in rest if r.startswith("hint: ")), "")
        where = re.match(r"(\S+):(\d+):(\d+): (.*)", message)
        if where and d.related_information:  # in an imported file
            file, line, column, message = where.group(1), int(where.group(2)), \
                int(where.group(3)), where.group(4)
            related = d.related_information[0].location
            source = Path(to_fs_path(related.uri)).read_text().split("\n")[line - 1]
            length = related.range.end.character - related.range.start.character
        else:
            file, line, column = str(path), d.range.start.line + 1, d.range.start.character + 1
            source = lines[line - 1]
            length = d.range.end.character - d.range.start.character
        out.append(Diagnostic(file, line, column, message, hint, source, length, notes).render())
    text = "\n\n".join(out)
    return text + (f"\n\n{len(out)} errors" if len(out) > 1 else "")


def check_output(path: Path, capsys, tasks: str = TASKS) -> str:
    status = main(["check", "--tasks", tasks, str(path)])
    err = capsys.readouterr().err.strip()
    assert (status == 0) == (err == "")
    return err


def at(text: str, needle: str, offset: int = 0) -> tuple[int, int]:
    """(line, character) of the first ``needle`` in ``text``, plus ``offset`` characters."""
    index = text.index(needle) + offset
    return text.count("\n", 0, index), index - (text.rfind("\n", 0, index) + 1)


# -- diagnostics -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SPECS))
def test_diagnostics_of_shipped_specs_equal_check(session, work, name, capsys):
    path = work / name
    diagnostics = session.open(path)
    assert rendered(path, path.read_text(), diagnostics) == check_output(path, capsys)


def test_errors_in_an_imported_file_are_checks_and_sit_on_the_import(session, tmp_path, capsys):
    lib, top = tmp_path / "parts.mtl", tmp_path / "uses_parts.mtl"
    lib.write_text("# parts\nblock head(x, task) {\n  return dense_head(x, tsk = task)\n}\n")
    text = ('# a model\nimport "parts.mtl"\n\nmodel m() {\n  x = conv_bn_act(images, 16)\n'
            '  for t in tasks {\n    out[t] = head(x, t)\n  }\n}\n')
    top.write_text(text)
    diagnostics = session.open(top)
    assert diagnostics
    assert rendered(top, text, diagnostics) == check_output(top, capsys)
    imports = at(text, 'import "parts.mtl"')[0]
    assert all(d.range.start.line == imports and d.message.startswith(f"{lib}:3:24: ") and
               d.related_information[0].location.uri == lib.resolve().as_uri()
               for d in diagnostics)


BROKEN = {
    "syntax": "model m(dim = 8) {\n  x = conv_bn_act(images, channels = dim\n  out[t] = x\n}\n",
    "unknown block": ("model m() {\n  for t in tasks {\n    out[t] = conv_bn_ac(images, 8)\n"
                      "  }\n}\n"),
    "bad argument": ("model m() {\n  x = conv_bn_act(images, channels = 8, kernal = 3)\n"
                     "  for t in tasks {\n    out[t] = dense_head(x, task = t)\n  }\n}\n"),
    "shape": ("model m() {\n  x = conv_bn_act(images, 8) :: [B, 9, H, W]\n"
              "  for t in tasks {\n    out[t] = dense_head(x, task = t)\n  }\n}\n"),
    "several": ("block b(x) {\n  return conv_bn_act(x, channels = q)\n}\n\nmodel m() {\n"
                "  y = undefined_name + 1\n  for t in tasks {\n    out[t] = b(images)\n  }\n}\n"),
    "missing import": 'import "nowhere.mtl"\n\nmodel m() {\n  out[t] = images\n}\n',
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_specs_get_checks_diagnostics_with_ranges(session, tmp_path, kind, capsys):
    path = tmp_path / f"{kind.replace(' ', '_')}.mtl"
    path.write_text(BROKEN[kind])
    diagnostics = session.open(path)
    assert diagnostics, f"no diagnostics for the {kind} error"
    assert rendered(path, BROKEN[kind], diagnostics) == check_output(path, capsys)
    for d in diagnostics:
        assert d.severity == lsp.DiagnosticSeverity.Error and d.source == "mtl-dsl"
        assert d.range.end.character > d.range.start.character or d.range.start.line == 0


def test_did_change_checks_the_unsaved_text(session, tmp_path, capsys):
    path = tmp_path / "edited.mtl"
    good = ("model m() {\n  x = conv_bn_act(images, 16)\n  for t in tasks {\n"
            "    out[t] = dense_head(x, task = t)\n  }\n}\n")
    path.write_text(good)
    assert session.open(path) == []
    broken = good.replace("conv_bn_act(images", "conv_bn_act(imagez")
    diagnostics = session.change(path, broken)  # the file on disk is still the good one
    assert [d.message.split("\n")[0] for d in diagnostics] == ["unknown name 'imagez'"]
    assert (diagnostics[0].range.start.line, diagnostics[0].range.start.character) == \
        at(broken, "imagez")
    path.write_text(broken)
    assert rendered(path, broken, diagnostics) == check_output(path, capsys)
    assert session.change(path, good) == []


def test_a_change_to_an_open_import_rechecks_the_importer(session, tmp_path):
    lib, top = tmp_path / "lib.mtl", tmp_path / "top.mtl"
    lib.write_text("block head(x, task) {\n  return dense_head(x, task = task)\n}\n")
    top.write_text('import "lib.mtl"\n\nmodel m() {\n  x = conv_bn_act(images, 16)\n'
                   '  for t in tasks {\n    out[t] = head(x, t)\n  }\n}\n')
    assert session.open(top) == []
    session.open(lib)
    session.change(lib, "block head(x, task) {\n  return dense_head(x, tsk = task)\n}\n")
    published = session.published[top.resolve().as_uri()]
    session.run(_until(lambda: any("tsk" in d.message for d in published[-1])))
    assert all(d.range.start.line == 0 and  # on the import, naming where the error is
               d.message.startswith(f"{lib}:2:24: block 'dense_head' has no argument 'tsk'")
               for d in published[-1])


def test_workspace_setting_chooses_the_task_profile(session, work, capsys):
    path = work / "atrc_pascal_hrnet18.mtl"
    session.open(path)
    uri = path.resolve().as_uri()
    try:
        assert session.configure({"mtl": {"tasks": "pascal", "input": "64x64"}}, uri) == []
        assert check_output(path, capsys, "pascal") == ""
    finally:
        assert session.configure({"mtl": {"tasks": TASKS}}, uri)



def test_a_bad_workspace_setting_is_named_as_the_setting(session, tmp_path):
    """The editor's user set mtl.input / mtl.tasks; they never typed --input or --tasks."""
    path = tmp_path / "settings.mtl"
    path.write_text((Path(__file__).parents[1] / "specs" / "baseline_mt.mtl").read_text())
    session.open(path)
    uri = path.resolve().as_uri()
    try:
        got = session.configure({"mtl": {"tasks": TASKS, "input": "abc"}}, uri)
        assert [d.message for d in got] == [
            "setting mtl.input: expected HxW such as 425x560, got 'abc'"]
        got = session.configure({"mtl": {"tasks": "bogus"}}, uri)
        assert len(got) == 1 and got[0].message.startswith("setting mtl.tasks: "), got
        assert "bogus" in got[0].message and "--tasks" not in got[0].message
    finally:
        assert session.configure({"mtl": {"tasks": TASKS}}, uri) == []

# -- hover, completion, definition, symbols, formatting ---------------------------------------

def test_hover_on_a_block_shows_what_mtl_dsl_blocks_prints(session, work, capsys):
    path = work / "demt.mtl"
    text = path.read_text()
    session.open(path)
    hover = session.hover(path, *at(text, "upsample_concat(feats)", 3))
    assert main(["blocks", "upsample_concat"]) == 0
    expected = capsys.readouterr().out.rstrip("\n")
    assert hover.contents.value == f"```\n{expected}\n```"
    assert hover.range.start == lsp.Position(*at(text, "upsample_concat(feats)"))


def test_hover_on_a_user_block_shows_its_signature_and_comments(session, work):
    path = work / "hybrid_demt_tpanet.mtl"
    text = path.read_text()
    session.open(path)
    value = session.hover(path, *at(text, "demt.demt_encoder", 6)).contents.value
    assert value.startswith("```\nblock demt_encoder(x, dim: int, depth: int = 1, "
                            "norm_first: bool = false)\n```")
    assert "Section 3.3: reduce the aggregated features" in value and "demt.mtl:" in value


def test_hover_on_a_node_shows_its_inferred_shape(session, work):
    path = work / "demt.mtl"
    text = path.read_text()
    session.open(path)
    graph = check_spec(path, tasks=TASKS)
    value = session.hover(path, *at(text, "  x = upsample_concat", 2)).contents.value
    assert f"x: {describe(graph.types['x'][0])}" in value and "[B, 270, H/4, W/4]" in value
    value = session.hover(path, *at(text, "d = demt_encoder", 0)).contents.value
    for task in ("semseg", "depth", "normals", "edge"):
        assert f"d.d.{task}.m.0: {describe(graph.types[f'd.d.{task}.m.0'][0])}" in value


def test_completion_of_blocks_arguments_tasks_parameters_and_imports(session, tmp_path):
    path = tmp_path / "typing.mtl"
    text = ('import "demt.mtl" as demt\n\nmodel m(width: int = 16, depth = 1) {\n'
            '  x = conv_bn_act(images, \n  y = demt.\n}\n')
    path.write_text(text)
    session.open(path)  # a half-typed spec: a syntax error, still answered
    labels = {i.label: i for i in session.completion(path, *at(text, "images, ", 8))}
    assert {"channels", "kernel", "norm"} <= set(labels)
    assert labels["channels"].insert_text == "channels = "
    assert {"upsample_concat", "deformable_mixer", "width", "depth", "semseg", "edge", "demt",
            "for", "if", "return"} <= set(labels)
    imported = {i.label for i in session.completion(path, *at(text, "demt.\n", 5))}
    assert {"demt_encoder", "mixer_stack", "demt_query"} <= imported
    assert "conv_bn_act" not in imported



def test_a_position_past_the_end_is_the_end_as_the_protocol_says(session, tmp_path):
    """An editor may ask about a position of a text newer than the server's: a character past
    its line's end is the line's end, a line past the last is the document's end (the server
    answered an internal error, IndexError, for both)."""
    path = tmp_path / "short.mtl"
    text = "model m(width: int = 16) {\n  x = conv_bn_act(images, \n"
    path.write_text(text)
    session.open(path)
    past_line = {i.label for i in session.completion(path, 1, 400)}
    assert {"channels", "kernel", "width"} <= past_line  # inside conv_bn_act( at the line's end
    past_end = {i.label for i in session.completion(path, 40, 3)}
    assert {"channels", "upsample_concat", "for"} <= past_end
    assert session.hover(path, 40, 3) is None

def test_completion_of_a_user_blocks_parameters(session, work):
    path = work / "demt.mtl"
    text = path.read_text()
    session.open(path)
    line, character = at(text, "mixer_stack(e, depth = depth)", len("mixer_stack(e, "))
    labels = {i.label for i in session.completion(path, line, character)}
    assert {"x", "depth"} <= labels


def test_definition_of_blocks_aliases_and_imported_files(session, work):
    path = work / "hybrid_demt_tpanet.mtl"
    text = path.read_text()
    session.open(path)
    demt = (work / "demt.mtl").read_text()
    found = session.definition(path, *at(text, "demt.demt_encoder", 7))
    assert found.uri == (work / "demt.mtl").resolve().as_uri()
    assert (found.range.start.line, found.range.start.character) == \
        at(demt, "block demt_encoder", 6)
    assert session.definition(path, *at(text, '"tpanet.mtl"', 3)).uri == \
        (work / "tpanet.mtl").resolve().as_uri()
    assert session.definition(path, *at(text, "tpanet.tpanet_decoder", 2)).uri == \
        (work / "tpanet.mtl").resolve().as_uri()
    own = work / "demt.mtl"
    session.open(own)
    found = session.definition(own, *at(demt, "m[0] = deformable_mixer", -2))
    assert found is None  # `m`: a variable, no definition to go to
    found = session.definition(own, *at(demt, "d = demt_encoder(", 6))
    assert found.uri == own.resolve().as_uri()
    assert (found.range.start.line, found.range.start.character) == \
        at(demt, "block demt_encoder", 6)


def test_document_symbols_are_models_blocks_presets_and_tables(session, work):
    path = work / "atrc.mtl"
    session.open(path)
    symbols = {s.name: s for s in session.symbols(path)}
    assert {"needs_labels", "has_sources", "atrc_head", "atrc"} <= set(symbols)
    assert symbols["atrc"].kind == lsp.SymbolKind.Class
    assert symbols["atrc_head"].kind == lsp.SymbolKind.Function
    children = {c.name: c.kind for c in symbols["atrc"].children}
    assert children == {"global": lsp.SymbolKind.Constant, "local": lsp.SymbolKind.Constant,
                        "t_label": lsp.SymbolKind.Constant, "s_label": lsp.SymbolKind.Constant,
                        "hrnet48": lsp.SymbolKind.Constant, "ctx": lsp.SymbolKind.Struct}
    text = path.read_text()
    model = symbols["atrc"]
    assert (model.range.start.line, model.range.start.character) == at(text, "model atrc(")
    assert text.split("\n")[model.range.end.line][:model.range.end.character] == "}"


def test_formatting_gives_what_mtl_dsl_fmt_gives(session, tmp_path):
    path = tmp_path / "ugly.mtl"
    ugly = "model m(){  # c\nfor t in tasks{out[t]=dense_head(images,task=t)}}"
    path.write_text(ugly)
    session.open(path)
    (edit,) = session.formatting(path)
    assert edit.range.start == lsp.Position(0, 0)
    assert edit.range.end == lsp.Position(1, len(ugly.split("\n")[1]))
    assert edit.new_text == format_source(ugly)
    session.change(path, edit.new_text)
    assert session.formatting(path) == []
    session.change(path, "model m( {")
    assert session.formatting(path) == []  # does not parse: the diagnostics say why


def test_closing_a_document_clears_its_diagnostics(session, tmp_path):
    path = tmp_path / "closed.mtl"
    path.write_text("model m( {")
    assert session.open(path)
    session.close(path)
    uri = path.resolve().as_uri()
    session.run(_until(lambda: session.published[uri][-1] == []))


async def _until(condition) -> None:
    import asyncio

    while not condition():
        await asyncio.sleep(0.005)


def test_the_server_never_imports_torch(tmp_path):
    log = tmp_path / "stderr.txt"
    s = Session(log, {"mtl": {"tasks": TASKS}})
    s.start()
    try:
        path = SPECS["hybrid_demt_invpt.mtl"]
        text = path.read_text()
        assert s.open(path) == []
        assert s.hover(path, *at(text, "upsample_concat", 2)) is not None
        assert s.hover(path, *at(text, "  x = upsample_concat", 2)) is not None
        assert s.completion(path, *at(text, "upsample_concat(", 16))
        assert s.symbols(path)
        s.formatting(path)
    finally:
        s.stop()
    modules = [line.split("|")[-1].strip() for line in log.read_text().splitlines()
               if line.startswith("import time:")]
    assert "mtl_dsl.lsp.server" in modules and "mtl_dsl.checker" in modules
    assert not [m for m in modules if m == "torch" or m.startswith("torch.")]


def test_recover_keeps_what_parses_where_it_was():
    text = ('import "demt.mtl" as demt\n\nblock b(x, k: int = 3) {\n  return conv_bn_act(x, 8,\n'
            '}\n\nmodel m(width: int = 16) {\n  y = b(images\n}\n\nblock ok(x) {\n  return x\n}\n')
    kept = recover(text)
    assert len(kept) == len(text) and kept.count("\n") == text.count("\n")
    spec = parse_source(kept)
    assert [i.path for i in spec.imports] == ["demt.mtl"]
    assert [b.name for b in spec.blocks] == ["b", "ok"] and [m.name for m in spec.models] == ["m"]
    assert [p.name for p in spec.blocks[0].params] == ["x", "k"] and spec.blocks[0].body == []
    assert len(spec.blocks[1].body) == 1  # the block that parses is kept whole
    for d in spec.blocks + spec.models:  # at the offsets of the text
        assert text[d.span.start:].startswith(("block " if not d.is_model else "model ") + d.name)
