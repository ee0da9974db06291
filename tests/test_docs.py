"""The README and docs/ are tested like code: their Python runs, their command lines parse, their links resolve.

Every page's Python blocks run in order in one namespace (as a reader pasting them would); a block
that imports a module this environment lacks (FastAPI) is compiled, and its `receiver` imports are
checked. Every `montra-hooks ...` command line names a real command and real options of the click
group, so a renamed option fails here before a reader trips on it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from markdown.extensions.toc import slugify
from mkdocs_click._docs import make_command_docs

from replay.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
PAGE_IDS = [str(page.relative_to(ROOT)) for page in PAGES]

_FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"`([^`\n]+)`")
_STOP = {"|", "||", ">", ">>", "<", "&&", ";", "&", "2>&1"}


def blocks(page: Path, *langs: str) -> list[str]:
    return [m["code"] for m in _FENCE.finditer(page.read_text()) if m["lang"] in langs]


def prose(page: Path) -> str:
    """The page without its fenced blocks: where inline code spans live."""
    return _FENCE.sub("", page.read_text())


def command_lines(page: Path) -> Iterator[str]:
    """Every shell line of the page that runs `montra-hooks`, and every inline code span naming it."""
    for code in blocks(page, "sh", "bash", "console"):
        console = code.startswith("$ ")
        for line in code.replace("\\\n", " ").splitlines():
            if console:
                if not line.startswith("$ "):
                    continue  # output, not a command
                line = line[2:]
            if "montra-hooks" in line:
                yield line
    for span in _INLINE.findall(prose(page)):
        if span.startswith(("montra-hooks ", ".venv/bin/montra-hooks ")):
            yield span


def _command_path(tokens: list[str]) -> Iterator[list[str]]:
    """The arguments after each `montra-hooks` (or `.venv/bin/montra-hooks`) in a tokenized line."""
    for n, token in enumerate(tokens):
        if token == "montra-hooks" or token.endswith("/montra-hooks"):
            rest: list[str] = []
            for arg in tokens[n + 1 :]:
                if arg in _STOP:
                    break
                rest.append(arg)
            yield rest


def check_command_line(line: str) -> None:
    """Walk the click group with the line's words: each command must exist and each --option belong to it."""
    tokens = shlex.split(line, comments=True)
    for args in _command_path(tokens):
        command: click.Command = cli
        words = list(args)
        while isinstance(command, click.Group) and words and not words[0].startswith("-"):
            name = words.pop(0)
            if name.isupper() or name == "...":
                return  # a placeholder such as COMMAND: nothing more to check
            assert name in command.commands, f"{line!r}: no command {name!r} (have {sorted(command.commands)})"
            command = command.commands[name]
        options = {opt: param for param in command.params for opt in param.opts + param.secondary_opts}
        options["--help"] = options["-h"] = click.Option(["--help"], is_flag=True)
        positional = [p for p in command.params if isinstance(p, click.Argument)]
        given = 0
        while words:
            word = words.pop(0)
            if word == "...":
                continue
            if word.startswith("-"):
                name = word.split("=", 1)[0]
                assert name in options, f"{line!r}: {command.name} has no option {name}"
                param = options[name]
                takes_value = isinstance(param, click.Option) and not param.is_flag and not param.count
                if takes_value and "=" not in word:
                    assert words, f"{line!r}: {name} needs a value"
                    words.pop(0)
            else:
                given += 1
        assert given <= len(positional), f"{line!r}: {command.name} takes {len(positional)} argument(s), got {given}"


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


def _missing_modules(tree: ast.Module) -> list[str]:
    names = [alias.name for node in _imports(tree) if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module for node in _imports(tree) if isinstance(node, ast.ImportFrom) and node.module]
    return [name for name in names if importlib.util.find_spec(name.split(".")[0]) is None]


def check_receiver_imports(tree: ast.Module) -> None:
    for node in _imports(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "receiver":
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"


def run_page(page: Path) -> tuple[dict[str, object], int]:
    """Run the page's Python blocks in order in one namespace; (namespace, blocks run)."""
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    ran = 0
    for code in blocks(page, "python"):
        tree = ast.parse(code, filename=str(page))
        check_receiver_imports(tree)
        if _missing_modules(tree):
            compile(tree, str(page), "exec")  # FastAPI is not a dependency: the block must still be valid Python
            continue
        exec(compile(tree, str(page), "exec"), namespace)  # our own docs
        ran += 1
    return namespace, ran


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_python_block_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples name montra-events.db: keep whatever they create out of the checkout
    _, ran = run_page(page)
    if page.name in {"README.md", "handlers.md", "testing.md"}:
        assert ran >= 1, f"{page.name}: its Python examples must run"


def test_the_mounting_example_takes_webhooks_under_its_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The handlers page's Starlette app, with its lifespan around the receiver's, stores a signed event."""
    from starlette.testclient import TestClient

    from receiver import sign

    monkeypatch.chdir(tmp_path)
    namespace, _ = run_page(DOCS / "handlers.md")
    body = b'{"type": "customer.created"}'
    headers = sign(body, secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", msg_id="msg_docs_1")
    headers["content-type"] = "application/json"
    with TestClient(namespace["app"]) as client:
        response = client.post("/montra/webhooks", content=body, headers=headers)
        assert (response.status_code, response.json()) == (200, {"id": "msg_docs_1", "status": "stored"})
        assert client.get("/montra/healthz").json() == {"status": "ok"}
    assert (tmp_path / "montra-events.db").is_file()


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_command_line_names_real_commands_and_options(page: Path) -> None:
    lines = list(command_lines(page))
    for line in lines:
        check_command_line(line)


def test_the_command_line_check_catches_mistakes() -> None:
    check_command_line(".venv/bin/montra-hooks replay --status dead --app examples.handlers:hooks  # a comment")
    check_command_line("montra-hooks fixtures show refund.created > my-fixtures/refund.created.json")
    check_command_line("montra-hooks listen --from URL --token T")  # placeholders and missing options pass
    for wrong in (
        "montra-hooks replay --no-such-option",
        "montra-hooks no-such-command",
        "montra-hooks events list --json extra",
        "montra-hooks fixtures show a b",
        "X=1 .venv/bin/montra-hooks serve --inspect --port",
    ):
        with pytest.raises(AssertionError):
            check_command_line(wrong)


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_relative_link_resolves(page: Path) -> None:
    """mkdocs --strict checks links between pages; this also covers the README's links into docs/."""
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.is_file(), f"{page.name}: {target} names no file"
        if anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", prose(file), flags=re.MULTILINE)
            slugs = {slugify(re.sub(r"`", "", heading), "-") for heading in headings}
            if file.name == "cli.md":  # its command headings are generated at build time, with explicit ids
                generated = make_command_docs(prog_name="montra-hooks", command=cli, depth=1, has_attr_list=True)
                slugs |= {m[1] for line in generated if (m := re.search(r"\{ #([\w-]+)", line))}
            assert anchor in slugs, f"{page.name}: {target}: no such heading in {file.name}"


def test_every_docs_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:", 1)[1]
    for page in DOCS.glob("*.md"):
        assert f": {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"


def test_the_site_builds_strictly_and_offline(tmp_path: Path) -> None:
    """What `make test` runs: a broken link or anchor, or a plugin error, fails the build."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    reference = (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "montra-hooks listen" in reference and "--max-backoff" in reference
