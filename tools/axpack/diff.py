"""``axpack diff``: what a config change does, not just which lines moved.

``axpack diff A.yaml B.yaml`` and ``axpack diff --git BASE_REV`` (every
config under ``configs/`` changed since ``BASE_REV`` against its old self)
print three things:

1. added / removed / changed keys, grouped by the section headers every
   config carries (``### model``, ``### adapter``, ``### data``,
   ``### training``, ``### precision``, ``### eval & save``, ``### output``);
   nested values are flattened to dotted keys (``datasets.0.path``);
2. the derived values of :func:`axpack.plan.compute.compute_plan` side by
   side, with the change in each (×0.5 effective batch, ×2 steps, α/r 2 → 1 ...);
3. warnings: every :data:`axpack.plan.rules.RULES` check that fires on B,
   marked ``new`` (not on A), ``still`` or ``resolved`` (fired on A only), plus
   the change rules of :data:`axpack.plan.rules.CHANGE_RULES` (same lr after an
   effective-batch change, a LoRA scale change at the same lr, a shorter
   ``sequence_len``, another base model or chat template). Every rule cites
   its source.

diff imports the plan *engine* (``axpack.plan.compute``, ``.render``,
``.rules``) and the foundations :mod:`axpack.formatting` and
:mod:`axpack.rules`, never the ``plan`` command module (``axpack.plan.cmd``).

Output is a rich terminal table, or ``--format markdown`` for a pull-request
comment (what ``.github/workflows/config-review.yml`` posts).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from .errors import AxpackError
from .formatting import fmt_num, md_cell, md_table, rich_table, show_value
from .plan.compute import Plan, plan_config
from .plan.render import render_markdown as plan_markdown
from .plan.render import render_terminal as plan_terminal
from .plan.rules import CHANGE_RULES
from .rules import fire

SECTION_ORDER = ["model", "adapter", "data", "training", "precision", "eval & save", "output"]
TOP = "(no section)"
_HEADER = re.compile(r"^###\s+(.+?)\s*$")
_TOPKEY = re.compile(r"^([A-Za-z_][\w\-]*)\s*:")


@dataclass
class KeyChange:
    """One dotted key added, removed or changed from A to B (values as the YAML spells them)."""

    section: str
    key: str
    kind: str  # added | removed | changed
    old: str
    new: str


@dataclass
class DerivedRow:
    """One derived plan value on both sides (display strings) and its change (``×2``, ``same``)."""

    key: str
    label: str
    a: str
    b: str
    change: str


@dataclass
class Finding:
    """A rule that fired: plan rules on B (``new``/``still``) or only on A (``resolved``), or a change rule."""

    rule: str
    status: str  # new | still | resolved | change
    message: str
    source: str


@dataclass
class ConfigDiff:
    """One config pair: key changes, derived values and warnings."""

    a_label: str
    b_label: str
    status: str  # modified | added | removed
    changes: list[KeyChange] = field(default_factory=list)
    derived: list[DerivedRow] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    plan_a: Plan | None = None
    plan_b: Plan | None = None
    why: str = ""  # B's own reason for the change: its header's "Why:" paragraph (a sibling variant's)


# ---- parsing -------------------------------------------------------------------
def load_text(text: str, where: str) -> dict[str, Any]:
    """Parse config YAML text (an old git revision or a file).

    Raises:
        AxpackError: invalid YAML (with where:line) or not a mapping.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark is not None else where
        raise AxpackError(f"{at}: invalid YAML ({getattr(err, 'problem', None) or err}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AxpackError(f"{where}: top level must be a mapping of Axolotl keys, got {type(data).__name__}")
    return data


def sections_of(text: str) -> dict[str, str]:
    """Top-level key -> the ``### section`` header above it (``(no section)`` before any)."""
    out: dict[str, str] = {}
    current = TOP
    for line in text.splitlines():
        m = _HEADER.match(line)
        if m:
            current = m.group(1).strip().lower()
            continue
        m = _TOPKEY.match(line)
        if m:
            out.setdefault(m.group(1), current)
    return out


_HEAD_LABEL = re.compile(r"^#\s*(?:[A-Z][\w ]{0,20}:|`|axpack:)")


def header_why(text: str) -> str:
    """The "Why:" paragraph of a config's leading comment block ('' when none).

    A sibling variant states its reason there (``# Why: ...`` and the comment
    lines after it, up to the next ``# Label:`` line, a backquoted command, or
    the end of the header), so ``diff RECIPE VARIANT`` shows it beside the numbers.
    """
    out: list[str] = []
    for line in text.splitlines():
        if not line.startswith("#") or line.startswith("###"):
            break
        if out and _HEAD_LABEL.match(line):
            break
        if out or line.lstrip("# ").startswith("Why:"):
            out.append(line.lstrip("#").strip())
    return " ".join(out).removeprefix("Why:").strip()


def flatten(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings and lists of mappings as ``(dotted.key, leaf)`` pairs in order.

    A list of scalars stays one value (``roles_to_train: [assistant]``).
    """
    out: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                out += flatten(v, key + ".")
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                for i, item in enumerate(v):
                    out += flatten(item, f"{key}.{i}.")
            else:
                out.append((key, v))
    return out


def key_changes(a: dict[str, Any], b: dict[str, Any], a_text: str, b_text: str) -> list[KeyChange]:
    """Added / removed / changed dotted keys, grouped in :data:`SECTION_ORDER`."""
    sec = {**sections_of(a_text), **sections_of(b_text)}
    fa, fb = dict(flatten(a)), dict(flatten(b))
    # B's order, with each removed key placed after the A key it followed
    order = list(fb)
    pos = {k: float(i) for i, k in enumerate(order)}
    prev = -1.0
    for j, k in enumerate(fa):
        if k in pos:
            prev = pos[k]
        else:
            prev += 1e-3
            pos[k] = prev
    order = sorted(pos, key=pos.__getitem__)
    changes = []
    for key in order:
        top = key.split(".")[0]
        section = sec.get(top, TOP)
        if key not in fa:
            changes.append(KeyChange(section, key, "added", "—", show_value(fb[key])))
        elif key not in fb:
            changes.append(KeyChange(section, key, "removed", show_value(fa[key]), "—"))
        elif fa[key] != fb[key] or type(fa[key]) is not type(fb[key]):
            changes.append(KeyChange(section, key, "changed", show_value(fa[key]), show_value(fb[key])))
    rank = {s: i for i, s in enumerate(SECTION_ORDER)}
    seen: dict[str, int] = {}
    for c in changes:
        seen.setdefault(c.section, len(seen))
    return sorted(changes, key=lambda c: (rank.get(c.section, len(rank) + seen[c.section]),))


# ---- derived values and rules -------------------------------------------------
def _change(a: Any, b: Any) -> str:
    if a == b:
        return "same"
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if a and b and a > 0 and b > 0:
            return f"×{b / a:.3g}"
        return f"{fmt_num(a)} → {fmt_num(b)}"
    return "changed"


def derived_rows(pa: Plan, pb: Plan) -> list[DerivedRow]:
    """:meth:`Plan.derived` of A and B side by side; rows unknown on both sides are left out."""
    da, db = pa.derived(), pb.derived()
    rows = []
    for key, (label, va, sa) in da.items():
        _, vb, sb = db[key]
        if va is None and vb is None and sa == sb:
            continue
        rows.append(DerivedRow(key, label, sa, sb, _change(va, vb) if sa != sb or va != vb else "same"))
    return rows


def findings(pa: Plan, pb: Plan, a: dict[str, Any], b: dict[str, Any]) -> list[Finding]:
    """Plan checks on B (new / still), those only on A (resolved), then change rules."""
    on_a = {c.rule: c for c in pa.checks}
    on_b = {c.rule: c for c in pb.checks}
    out = [Finding(c.rule, "still" if c.rule in on_a else "new", c.message, c.source) for c in pb.checks]
    out += [Finding(c.rule, "resolved", c.message, c.source) for r, c in on_a.items() if r not in on_b]
    out += [Finding(rule.id, "change", msg, rule.source) for rule, msg in fire(CHANGE_RULES, pa, pb, a, b)]
    return out


# ---- entry points ----------------------------------------------------------------
@dataclass
class DataOpts:
    """How both sides count examples (shared by A and B so only the config differs)."""

    data_dir: str | Path | None = None
    num_examples: int | None = None
    tokens_per_example: float | None = None
    world_size: int = 1
    card: str | None = None
    tokenize: bool = True
    tokenizer_dir: str | Path | None = None


def _plan(cfg: dict[str, Any], path: str, opts: DataOpts) -> Plan:
    return plan_config(path, cfg=cfg, data_dir=opts.data_dir, num_examples=opts.num_examples,
                       tokens_per_example=opts.tokens_per_example, world_size=opts.world_size, card=opts.card,
                       tokenize=opts.tokenize, tokenizer_dir=opts.tokenizer_dir)


def diff_texts(a_text: str | None, b_text: str | None, a_label: str, b_label: str,
               opts: DataOpts | None = None) -> ConfigDiff:
    """Diff two config texts (either may be ``None``: added or removed config).

    Raises:
        AxpackError: invalid YAML on either side.
    """
    opts = opts or DataOpts()
    if a_text is None and b_text is None:
        raise AxpackError(f"{a_label}: nothing to compare")
    a = load_text(a_text, a_label) if a_text is not None else None
    b = load_text(b_text, b_label) if b_text is not None else None
    status = "added" if a is None else ("removed" if b is None else "modified")
    d = ConfigDiff(a_label, b_label, status)
    if a is not None:
        d.plan_a = _plan(a, a_label, opts)
    if b is not None:
        d.plan_b = _plan(b, b_label, opts)
    if a is not None and b is not None:
        d.changes = key_changes(a, b, a_text or "", b_text or "")
        d.why = header_why(b_text or "")
        d.derived = derived_rows(d.plan_a, d.plan_b)
        d.findings = findings(d.plan_a, d.plan_b, a, b)
    elif b is not None:
        d.findings = [Finding(c.rule, "new", c.message, c.source) for c in d.plan_b.checks]
    return d


def _read(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise AxpackError(f"{p}: config file not found; pass two config paths or --git BASE_REV")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AxpackError(f"{p}: not UTF-8 text; save the config as UTF-8") from None


def diff_files(a: str | Path, b: str | Path, opts: DataOpts | None = None) -> ConfigDiff:
    """Diff two config files on disk.

    Raises:
        AxpackError: a file is missing or invalid.
    """
    return diff_texts(_read(a), _read(b), str(a), str(b), opts)


def _git(args: list[str], cwd: Path) -> str:
    try:
        res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise AxpackError("diff --git: git is not installed; install git or diff two files") from None
    if res.returncode != 0:
        msg = (res.stderr.strip().splitlines() or ["git failed"])[-1]
        raise AxpackError(f"diff --git: git {' '.join(args[:2])}: {msg}")
    return res.stdout


def changed_configs(base_rev: str, root: Path, under: str = "configs") -> list[tuple[str, str | None, str | None]]:
    """``(status, old_path, new_path)`` of configs changed since ``base_rev`` (working tree included).

    Status is git's letter (A, M, D, R); untracked new configs count as A.

    Raises:
        AxpackError: not a git checkout or an unknown revision.
    """
    _git(["rev-parse", "--verify", "--quiet", f"{base_rev}^{{commit}}"], root)
    out = _git(["diff", "--name-status", "-M", base_rev, "--", under], root)
    rows: list[tuple[str, str | None, str | None]] = []
    for line in out.splitlines():
        parts = line.split("\t")
        st = parts[0][:1]
        if st == "R":
            rows.append(("R", parts[1], parts[2]))
        elif st == "A":
            rows.append(("A", None, parts[1]))
        elif st == "D":
            rows.append(("D", parts[1], None))
        else:
            rows.append(("M", parts[1], parts[1]))
    for path in _git(["ls-files", "--others", "--exclude-standard", "--", under], root).splitlines():
        rows.append(("A", None, path))
    is_yaml = lambda p: p is not None and p.endswith((".yaml", ".yml"))
    return sorted([r for r in rows if is_yaml(r[1]) or is_yaml(r[2])], key=lambda r: r[2] or r[1] or "")


def diff_git(base_rev: str, opts: DataOpts | None = None, root: str | Path | None = None,
             under: str = "configs") -> list[ConfigDiff]:
    """Every config under ``under`` changed since ``base_rev``, against its old self.

    ``root`` defaults to the git checkout holding the current directory (a
    user's fork of the pack), else the axpack checkout.

    Raises:
        AxpackError: git errors (not a checkout, unknown revision).
    """
    from .env import project_root

    if root is None:
        try:
            res = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                                 check=False)
            top = res.stdout.strip() if res.returncode == 0 else ""
        except FileNotFoundError:  # no git: _git below says so in one line
            top = ""
        root = top or project_root()
    root = Path(root)
    out = []
    for status, old, new in changed_configs(base_rev, root, under):
        old_text = _git(["show", f"{base_rev}:{old}"], root) if old else None
        new_text = (root / new).read_text(encoding="utf-8") if new else None
        # the @rev label keeps the folder, so cards still resolve by configs/<model>/
        a_label = f"{old}@{base_rev}" if old else f"(none)@{base_rev}"
        out.append(diff_texts(old_text, new_text, a_label, new or f"{old} (removed)", opts))
    return out


# ---- rendering -------------------------------------------------------------------
def _code(text: str) -> str:
    return "—" if text == "—" else f"`{text}`" if "`" not in text else text


def render_markdown(d: ConfigDiff, level: int = 3) -> str:
    """One config diff as GitHub-flavoured Markdown."""
    h = "#" * level
    if d.status == "added":
        out = [f"{h} `{d.b_label}` (new)", "", "New config.", "", render_plan_md(d.plan_b)]
        return "\n".join(out).rstrip() + "\n"
    if d.status == "removed":
        return f"{h} `{d.a_label}` (removed)\n\nConfig removed.\n"
    out = [f"{h} `{d.a_label}` → `{d.b_label}`", ""]
    n = {k: sum(1 for c in d.changes if c.kind == k) for k in ("changed", "added", "removed")}
    out.append(f"**Keys**: {n['changed']} changed, {n['added']} added, {n['removed']} removed")
    out.append("")
    if d.why:
        out += [f"**Why** (B's header): {md_cell(d.why)}", ""]
    if d.changes:
        rows = []
        last = None
        for c in d.changes:
            sec = c.section if c.section != last else ""
            last = c.section
            rows.append([md_cell(sec), f"`{c.key}`", md_cell(_code(c.old)), md_cell(_code(c.new))])
        out += md_table(["section", "key", "A", "B"], ["---"] * 4, rows)
        out.append("")
    out.append("**Derived values** (`axpack plan`)")
    out.append("")
    out += md_table(["value", "A", "B", "change"], ["---", "---:", "---:", "---"],
                    ([r.label, md_cell(r.a), md_cell(r.b), r.change] for r in d.derived))
    notes = [p.steps_note for p in (d.plan_a, d.plan_b) if p and p.steps_note]
    if notes:
        out.append("")
        for label, p in (("A", d.plan_a), ("B", d.plan_b)):
            if p and p.steps_note:
                out.append(f"- steps ({label}): {md_cell(p.steps_note)}")
    out.append("")
    out.append(render_findings_md(d.findings))
    return "\n".join(out).rstrip() + "\n"


def render_plan_md(p: Plan | None) -> str:
    """A new config's full plan (no title), for ``--git`` output."""
    return plan_markdown(p, title=False) if p is not None else ""


def render_findings_md(fs: list[Finding]) -> str:
    """The warnings as a Markdown list (resolved ones struck through), or "none"."""
    if not fs:
        return "**Warnings**: none"
    out = ["**Warnings**", ""]
    for f in fs:
        name = f"~~{f.rule}~~" if f.status == "resolved" else f"**{f.rule}**"
        out.append(f"- {name} ({f.status}): {md_cell(f.message)} — _source: {md_cell(f.source)}_")
    return "\n".join(out)


def render_git_markdown(diffs: list[ConfigDiff], base_rev: str) -> str:
    """All configs changed since ``base_rev``, as one PR comment."""
    out = ["## axpack config review", ""]
    if not diffs:
        out.append(f"No config under `configs/` changed since `{base_rev}`.")
        return "\n".join(out) + "\n"
    out.append(f"{len(diffs)} config(s) changed since `{base_rev}`. Estimates: memory ±10% of measured runs, "
               "time ±50% (formulas and sources: `python -m pydoc axpack.plan`).")
    out.append("")
    for d in diffs:
        out.append(render_markdown(d, level=3))
    return "\n".join(out).rstrip() + "\n"


def render_terminal(d: ConfigDiff) -> None:
    """Print one config diff as rich tables."""
    from rich.console import Console
    from rich.markup import escape as esc

    console = Console()
    console.rule(esc(f"{d.a_label} → {d.b_label}"))
    if d.status != "modified":
        console.print("new config" if d.status == "added" else "config removed")
        if d.plan_b is not None:
            plan_terminal(d.plan_b)
        return
    kt = rich_table([(col, {}) for col in ("section", "key", "A", "B")], title="keys", show_lines=False)
    last = None
    for c in d.changes:
        style = {"added": "green", "removed": "red"}.get(c.kind, "yellow")
        kt.add_row(esc(c.section) if c.section != last else "", f"[{style}]{esc(c.key)}[/]", esc(c.old), esc(c.new))
        last = c.section
    console.print(kt)
    if d.why:
        console.print(f"[bold]why[/] (B's header): {esc(d.why)}")
    dt = rich_table([("value", {}), ("A", {"justify": "right"}), ("B", {"justify": "right"}), ("change", {})],
                    title="derived values (axpack plan)")
    for r in d.derived:
        dt.add_row(esc(r.label), esc(r.a), esc(r.b), r.change if r.change == "same" else f"[bold]{esc(r.change)}[/]")
    console.print(dt)
    for label, p in (("A", d.plan_a), ("B", d.plan_b)):
        if p and p.steps_note:
            console.print(f"[dim]steps ({label}): {esc(p.steps_note)}[/]")
    for f in d.findings:
        color = {"resolved": "green", "still": "yellow", "new": "red", "change": "magenta"}[f.status]
        console.print(f"[{color}]{f.status}[/] {f.rule}: {esc(f.message)}\n  [dim]source: {esc(f.source)}[/]")


@click.command("diff")
@click.argument("configs", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--git", "base_rev", default=None, metavar="BASE_REV",
              help="diff every config under configs/ changed since BASE_REV against its old self")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="prep output folder both sides count examples from (sft/dpo by each config's rl key)")
@click.option("--num-examples", type=click.IntRange(min=0), default=None,
              help="examples for both sides (training examples when validation is its own file)")
@click.option("--tokens-per-example", type=click.FloatRange(min=1), default=None)
@click.option("--world-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--card", default=None, help="model card id when base_model is not recognised")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="model folder whose tokenizer + chat template count the tokens (both sides)")
@click.option("--no-tokenizer", is_flag=True, help="estimate tokens as chars/4 even when a local tokenizer exists")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown"]), default="table", show_default=True)
def command(configs: tuple[Path, ...], base_rev: str | None, data_dir: Path | None, num_examples: int | None,
            tokens_per_example: float | None, world_size: int, card: str | None, tokenizer_dir: Path | None,
            no_tokenizer: bool, fmt: str) -> None:
    """Semantic diff of two configs (A B), or of every config changed since --git BASE_REV."""
    if data_dir is not None and num_examples is not None:
        raise click.UsageError("pass --data or --num-examples, not both")
    opts = DataOpts(data_dir, num_examples, tokens_per_example, world_size, card, not no_tokenizer, tokenizer_dir)
    if base_rev is not None:
        if configs:
            raise click.UsageError("--git BASE_REV takes no config paths")
        diffs = diff_git(base_rev, opts)
        if fmt == "markdown":
            click.echo(render_git_markdown(diffs, base_rev), nl=False)
        else:
            if not diffs:
                click.echo(f"no config under configs/ changed since {base_rev}")
            for d in diffs:
                render_terminal(d)
        return
    if len(configs) != 2:
        raise click.UsageError("pass two configs (A.yaml B.yaml) or --git BASE_REV")
    d = diff_files(configs[0], configs[1], opts)
    if fmt == "markdown":
        click.echo(render_markdown(d), nl=False)
    else:
        render_terminal(d)
