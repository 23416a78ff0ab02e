"""``axpack twin``: build shape twins, and run every shipped config's whole chain on one.

``axpack twin BASE_MODEL [--out DIR]`` builds the twin of a base model (see
:mod:`axpack.shape_twin`): offline, seconds, ``models/twins/<slug>`` by default.

``axpack twin --chain [CONFIG...] [--out runs/twins]`` (``make twins``) runs,
for each config (default: every ``configs/**/*.yaml``), on the twin of its
base model: prep its sample data by the config's ``# Data:`` command → train
a few steps (``axpack smoke --cpu``) → ``axpack merge`` → for DPO configs
the same on the merged SFT twin (Plan C) → GGUF f16 + ``q8_0`` with the
pinned converter → ``axpack verify`` → the label audit (``labels.md``) and
serving parity (:mod:`axpack.twin_audit`). Configs whose CPU-resolved YAML is
identical (batch/launcher variants) share one run. Writes
``<out>/summary.json``: ``{config: {"base_model", "architecture", "train",
"merge", "gguf", "verify", "labels", "serving_parity", "seconds"}}`` with
``"ok"`` or the failing step's one-line reason; exit 1 when any step failed.
"""

from __future__ import annotations

import glob
import json
import shlex
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from . import env
from .errors import AxpackError
from .fsutil import atomic_write_json

STEPS = ("train", "merge", "gguf", "verify", "labels", "serving_parity")
MAX_STEPS = 2
QUANT = "q8_0"
# script windows short enough for the CPU run's 256-token rows (the default 35-turn
# windows are ~500 tokens and Axolotl would drop them all); as tests/test_smoke.py did
SCRIPT_SMOKE_ARGS = ["--window", "6", "--context", "2", "--min-completion", "2", "--stride", "2"]
PATH_KEYS = ("output_dir", "dataset_prepared_path")
# the demo's data command (the Makefile's `make prep RUN=demo`; its configs carry no # Data: header)
DEMO_DATA = ["prep", "data/demo/*.jsonl", "--out", "runs/demo/data", "--system", "strip"]


def shipped_configs(root: Path | None = None) -> list[Path]:
    """Every ``configs/**/*.yaml`` (relative to the checkout), sorted."""
    root = root or env.project_root()
    return sorted(Path(p).relative_to(root) for p in glob.glob(str(root / "configs" / "**" / "*.yaml"),
                                                                   recursive=True))


def data_command(config: Path) -> list[str] | None:
    """The ``# Data: axpack ...`` header command of a config (argv after ``axpack``)."""
    for line in (env.project_root() / config).read_text(encoding="utf-8").splitlines():
        if line.startswith("# Data: axpack "):
            return shlex.split(line[len("# Data: axpack "):])
    return None


def system_of(cfg: dict[str, Any]) -> str:
    """``runs/<system>/...`` -> system."""
    return Path(str(cfg["output_dir"])).parts[1]


def prep_system(system: str, args: list[str], out: Path) -> Path:
    """Run a config's data command with ``--out`` under ``out``; return the data folder."""
    root = env.project_root()
    argv = []
    for a in args:
        matches = sorted(glob.glob(str(root / a))) if "*" in a else []
        argv += matches or [a]
    i = argv.index("--out")
    argv[i + 1] = str(out / system)
    if argv[0] == "script":
        argv += SCRIPT_SMOKE_ARGS
    if (out / system / "summary.json").is_file():
        return out / system
    proc = subprocess.run([str(env.venv_bin() / "axpack"), *argv], cwd=root, capture_output=True, text=True,
                          env=env.child_env(), check=False)
    if proc.returncode != 0:
        raise AxpackError(f"axpack {' '.join(argv[:2])}: {(proc.stderr.strip().splitlines() or [''])[-1]}")
    return out / system


def _reason(err: BaseException) -> str:
    if isinstance(err, AxpackError):
        return err.message.splitlines()[0][:400]
    tb = traceback.extract_tb(err.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}{where}"


def run_chains(configs: list[Path], out: Path, max_steps: int = MAX_STEPS, audit: bool = True,
               verify: bool = True, echo: bool = False) -> dict[str, dict[str, Any]]:
    """Run the twin chain of every config; write and return ``out/summary.json``'s content.

    A DPO config trains on the merged SFT twin of the SFT config whose
    ``output_dir`` run it names (``runs/<run>/sft-merged``); that SFT config
    runs first even when not listed. Never raises for a failing step: the
    step gets its one-line reason and the later steps ``"skipped"``.
    """
    from .config import load_config
    from .cpu import hide_fla

    # the chain runs on CPU: hide fla before anything in this process imports a Qwen3.5 model
    # (the label audit and verify's reference forward run here; training runs in a CPU child)
    hide_fla()
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, Any]] = {}
    cfgs = {c: load_config(env.project_root() / c) for c in configs}
    # SFT configs first so each DPO config finds its merged SFT twin
    order = sorted(configs, key=lambda c: (cfgs[c].get("rl") is not None, str(c)))
    chain = _Chain(out, max_steps, audit, verify, echo, summary,
                   sft_by_system={system_of(cfgs[c]): c for c in order if not cfgs[c].get("rl")})
    for config in order:
        cfg = cfgs[config]
        t0 = time.monotonic()
        row: dict[str, Any] = {"base_model": str(cfg.get("base_model")), "architecture": None,
                               **{s: "skipped" for s in STEPS}}
        summary[str(config)] = row
        step = _Step()
        try:
            chain.run(config, cfg, row, step)
        except Exception as err:  # noqa: BLE001 - one failing step is a summary line, not a crash
            row[step.name] = f"failed: {_reason(err)}"
        finally:
            row.setdefault("seconds", round(time.monotonic() - t0, 1))
            atomic_write_json(out / "summary.json", summary)
    return summary


class _Step:
    """The step a config's chain is in (named in its summary row when it fails)."""

    name = "train"


@dataclass
class _Chain:
    """What every config's chain shares: settings, the summary, the merged SFT twins
    per system and the CPU-resolved YAMLs already run."""

    out: Path
    max_steps: int
    audit: bool
    verify: bool
    echo: bool
    summary: dict[str, dict[str, Any]]
    sft_by_system: dict[str, Path]
    merged_sft: dict[str, Path] = field(default_factory=dict)  # system -> merged SFT twin
    identity: dict[str, str] = field(default_factory=dict)  # CPU-resolved YAML -> config that ran it

    def run(self, config: Path, cfg: dict[str, Any], row: dict[str, Any], step: _Step) -> None:
        """Train (or share an identical earlier run), then :meth:`after_train`."""
        from .config import resolve
        from .smoke_run import smoke, smoke_overrides

        run_dir = self.out / config.parent.name / config.stem
        system = system_of(cfg)
        data_dir, base_dir, model_dir, reason = self.inputs(config, cfg, system, row)
        ovs = smoke_overrides(cfg, run_dir / "train", self.max_steps, True, data_dir=data_dir,
                              model_dir=Path(model_dir), model_reason=reason)
        ident = json.dumps({k: v for k, v in resolve(env.project_root() / config,
                                                    {o.key: o.value for o in ovs}).items()
                            if k not in PATH_KEYS}, sort_keys=True, default=str)
        if ident in self.identity:  # same CPU run as an earlier config: share it
            row.update({s: self.summary[self.identity[ident]][s] for s in STEPS})
            row["shared_with"] = self.identity[ident]
            row["seconds"] = 0.0
            return
        self.identity[ident] = str(config)
        res = smoke(env.project_root() / config, max_steps=self.max_steps, cpu=True, out=run_dir / "train",
                    data_dir=data_dir, echo=self.echo, base_dir=base_dir)
        row["train"] = "ok"
        row["final_loss"] = res.get("final_loss")
        self.after_train(config, cfg, system, res, run_dir, row, step)

    def inputs(self, config: Path, cfg: dict[str, Any], system: str,
               row: dict[str, Any]) -> tuple[Path, Path | None, Path, str]:
        """(prepared data folder, the merged SFT twin a DPO config trains on or None,
        the model to train, why that model); records the architecture in ``row``."""
        from .smoke_run import cpu_model

        args = data_command(config) or data_command(self.sft_by_system.get(system, config)) or \
            (DEMO_DATA if system == "demo" else None)
        if args is None:
            raise AxpackError(f"{config}: no '# Data: axpack ...' header to make its data with")
        data_dir = prep_system(system, args, self.out / "data")
        base_dir = None
        if cfg.get("rl"):
            base_dir = self.merged_sft.get(system)
            if base_dir is None:
                raise AxpackError(f"{config}: no merged SFT twin for runs/{system} (its SFT config failed)")
        model_dir, reason = (base_dir, "merged SFT twin") if base_dir else cpu_model(cfg, config)
        conf = json.loads((Path(model_dir) / "config.json").read_text())
        row["architecture"] = (conf.get("architectures") or [None])[0]
        if (Path(model_dir) / "axpack-twin.json").is_file():
            row["base_model"] = f"{cfg.get('base_model')} (twin: {model_dir})"
        return data_dir, base_dir, Path(model_dir), reason

    def after_train(self, config: Path, cfg: dict[str, Any], system: str, res: dict[str, Any], run_dir: Path,
                    row: dict[str, Any], step: _Step) -> None:
        """Merge -> GGUF -> verify -> label audit -> serving parity, each step named in ``step``."""
        from .gguf_build import build_ggufs
        from .merging import merge_adapter

        step.name = "merge"
        overrides = {o["key"]: o["value"] for o in res["overrides"]}
        merged = merge_adapter(env.project_root() / config, overrides, out=run_dir / "merged")
        row["merge"] = "ok"
        if not cfg.get("rl"):
            self.merged_sft[system] = merged
        step.name = "gguf"
        gguf_dir = run_dir / "gguf"
        build_ggufs(merged, gguf_dir, config.stem, [QUANT], source_config=str(config))
        row["gguf"] = "ok"
        if self.verify:
            step.name = "verify"
            row["verify"], row["verify_numbers"] = _verify(gguf_dir)
        if self.audit:
            from .twin_audit import label_audit, serving_parity

            step.name = "labels"
            row["labels"] = label_audit(env.project_root() / config, res["resolved"], run_dir)
            step.name = "serving_parity"
            row["serving_parity"] = serving_parity(res["resolved"], merged, gguf_dir, config.stem,
                                                   env.project_root() / config)


# verify's behavioural check that greedy answers end at end-of-turn cannot hold for a
# random twin trained 2 steps (nothing taught it to stop); every identity check
# (metadata, template, EOS/EOG ids, tokenization, argmax agreement, |Δlogit|) still counts
NOT_FOR_TWINS = ("generation stopped at end-of-turn",)


def _verify(gguf_dir: Path) -> tuple[str, dict[str, Any]]:
    """(``ok`` or the first failing GGUF's reason (axpack verify's checks, minus
    :data:`NOT_FOR_TWINS`), the quant's agreement numbers)."""
    # a quarter of verify's prompt set and one short stop prompt (its result is not counted):
    # the identity checks need positions, not coverage; on 2 busy cores the full set made
    # the Qwen3.5 twin's verify take minutes (reference generate + 24 x 248k-vocab logits)
    # The KLD statistics are measured on a short text and 256 conversation tokens and
    # reported, not gated: QUALITY_GATES are calibrated on trained models, and a random
    # twin's flat logits turn same-top-1 into a draw among near-ties. No drift: a twin's
    # base is random too.
    from . import quant_quality as qq
    from .verification import PROMPTS, STOP_PROMPTS, Budget, verify_export

    budget = Budget(prompts=tuple(map(tuple, PROMPTS[::4])), stop_prompts=tuple(STOP_PROMPTS[:1]), max_new_tokens=8,
                    gates={}, conv_tokens=256)
    short = gguf_dir / ".twin-eval-text.txt"
    short.write_text(" ".join(qq.EVAL_TEXT.read_text(encoding="utf-8").split()[:200]), encoding="utf-8")
    try:
        # the quant only: it is made from the f16 intermediate, so it proves conversion and quantization
        doc = verify_export(gguf_dir, threads=2, types=[QUANT], eval_text=short, drift=False, budget=budget)
    finally:
        short.unlink(missing_ok=True)
    numbers = {r["file"]: {k: r.get(k) for k in ("agreement", "positions", "max_abs_dlogit", "mean_abs_dlogit")}
               for r in doc["results"]}
    for r in doc["results"]:
        fails = [f for f in r.get("failures") or [] if not f.startswith(NOT_FOR_TWINS)]
        if fails:
            return f"failed: {r['file']}: " + "; ".join(fails)[:400], numbers
    return "ok", numbers


@click.command("twin")
@click.argument("targets", nargs=-1)
@click.option("--out", type=click.Path(file_okay=False),
              help="Twin folder [default: models/twins/<slug>]; with --chain the run folder [default: runs/twins].")
@click.option("--force", is_flag=True, help="Rebuild the twin even if the folder holds it.")
@click.option("--chain", is_flag=True, help="TARGETS are configs (default: all shipped): run each one's whole "
              "chain on its twin and write summary.json.")
@click.option("--max-steps", type=int, default=MAX_STEPS, show_default=True, help="--chain: steps per training.")
@click.option("--no-audit", is_flag=True, help="--chain: skip the label audit and serving parity.")
def command(targets, out, force, chain, max_steps, no_audit):
    """Build the shape twin of BASE_MODEL, or run configs' chains on their twins (--chain)."""
    if not chain:
        if len(targets) != 1:
            raise AxpackError("axpack twin BASE_MODEL: give one base model id (or --chain [CONFIG...])", 2)
        from .shape_twin import build_twin

        build_twin(targets[0], out, force)
        return
    root = env.project_root()
    configs = [Path(t).resolve().relative_to(root) if Path(t).is_absolute() else Path(t) for t in targets] \
        or shipped_configs(root)
    for c in configs:
        if not (root / c).is_file():
            raise AxpackError(f"{c}: no such config")
    summary = run_chains(configs, Path(out or "runs/twins"), max_steps, audit=not no_audit)
    width = max(len(k) for k in summary)
    for k, row in summary.items():
        bad = [f"{s}: {row[s]}" for s in STEPS if row[s] != "ok"]
        click.echo(f"{k:<{width}}  {row['seconds']:>6.1f}s  {'ok' if not bad else bad[0]}")
    failed = [k for k, r in summary.items() if any(r[s] != "ok" for s in STEPS)]
    if failed:
        raise AxpackError(f"twins: {len(failed)} of {len(summary)} configs failed a step; see "
                          f"{Path(out or 'runs/twins') / 'summary.json'}")
