"""Scale-out engine: the torchrun command, multi-node launch files and their
preflight checks. Used by ``axpack train --nproc N`` (one machine) and
``axpack launch`` (several machines); no click, no torch at import.

World size and batch
--------------------
``world = nodes × gpus_per_node`` ranks (one process per GPU). Each rank
draws its own micro batches from a distributed sampler, so one optimizer step
sees ``micro_batch_size × gradient_accumulation_steps × world`` rows
(Axolotl 0.21 ``normalize_config``: ``batch_size = micro × GA``, then
``× world_size`` under DDP/DeepSpeed/FSDP). ``tests/test_scale.py`` proves it
on CPU: 2 ranks × micro m × GA 1 take the same steps as 1 rank × micro m ×
GA 2 on the same data order.

``--eff-batch B`` keeps a recipe's effective batch when the world changes:
``GA = B / (micro × world)``, which must be a whole number (else the run
would silently train at another batch, or DeepSpeed would stop on
``train_batch_size is not equal to micro_batch_per_gpu *
gradient_acc_step * world_size``).

The launch forms (all start ``-m axolotl.cli.train CONFIG`` in every rank)
--------------------------------------------------------------------------
- ``torchrun``: one ``torchrun`` per node with a c10d rendezvous
  (``--rdzv-backend c10d --rdzv-endpoint HEAD:PORT``), as Axolotl's
  multi-node guide (docs/multi-node.qmd, "Torchrun"); one node:
  ``--standalone``.
- ``accelerate``: an accelerate config for ``accelerate launch
  --config_file F --machine_rank K`` on node K (docs/multi-node.qmd,
  "Accelerate"). ``distributed_type: MULTI_GPU``: DeepSpeed and FSDP come
  from the Axolotl YAML, whose ``prepare_optim_env`` sets
  ``ACCELERATE_USE_DEEPSPEED`` / ``ACCELERATE_USE_FSDP`` in every rank.
- ``slurm``: an ``sbatch`` script, one task per node, each running torchrun
  with the job id as rendezvous id and the first host as endpoint.
- ``ray``: Axolotl's Ray Train settings (``use_ray``, ``ray_num_workers``,
  ``resources_per_worker``; docs/ray-integration.qmd) written into the run's
  config, and the ``axolotl train CONFIG --use-ray`` line for the head node.

Preflight checks (each one line, file/key/option, what to do)
-------------------------------------------------------------
- ``batch``: ``--eff-batch`` not a multiple of ``micro × world``; a
  DeepSpeed JSON whose fixed ``train_batch_size`` /
  ``train_micro_batch_size_per_gpu`` / ``gradient_accumulation_steps``
  disagree with the YAML and the world size (DeepSpeed asserts at start-up).
- ``nccl``: a multi-node run without ``NCCL_SOCKET_IFNAME``: NCCL then picks
  the first interface it likes (often ``docker0`` or a link-local one other
  nodes cannot reach) and the first collective hangs until the 30-minute
  watchdog (Axolotl docs/nccl.qmd, NCCL's environment docs).
- ``shared-storage``: multi-node Ray with an ``output_dir`` that is not on
  storage every node mounts: Axolotl 0.21 hands Ray Train
  ``RunConfig(storage_path=Path(output_dir).absolute())``
  (axolotl/cli/train.py), and Ray writes checkpoints from the worker that
  holds them, so a relative or node-local path scatters the adapter over the
  nodes' disks (Ray ≥ 2.7 wants shared ``storage_path`` for multi-node runs).
  A network filesystem (``/proc/mounts``) or a ``--shared-dir`` the user
  vouches for passes.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TRAIN_MODULE = "axolotl.cli.train"
CPU_SHIM_MODULE = "axpack.cpu_shim"
DEFAULT_PORT = 29500
SCHEDULERS = ("torchrun", "accelerate", "slurm", "ray")
NETWORK_FS = {"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "cephfs", "ceph", "glusterfs",
              "fuse.glusterfs", "fuse.cephfs", "fuse.juicefs", "fuse.s3fs", "fuse.gcsfuse", "fuse.weka", "wekafs",
              "panfs", "9p", "virtiofs", "fuse.sshfs"}
ALWAYS_ENV = {"AXOLOTL_DO_NOT_TRACK": "1"}  # env.ALWAYS_VARS: telemetry's exit flush hangs without network


# --------------------------------------------------------------------------- one machine


def gpu_count() -> int:
    """CUDA devices this process sees (0 without a driver or a CPU torch)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def torchrun_argv(config: str | Path, nproc: int, nnodes: int = 1, rdzv_endpoint: str | None = None,
                  rdzv_id: str | None = None, module: str = TRAIN_MODULE, torchrun: str = "torchrun") -> list[str]:
    """The torchrun argument list that starts ``nproc`` ranks of ``module CONFIG``
    on this node (never a shell string).

    One node: ``torchrun --standalone --nnodes 1 --nproc-per-node N -m
    axolotl.cli.train CONFIG`` (a private rendezvous on a free port). More:
    ``--rdzv-backend c10d --rdzv-endpoint HEAD:PORT --rdzv-id ID``, the same
    line on every node (Axolotl docs/multi-node.qmd). ``module`` is
    :data:`CPU_SHIM_MODULE` only for CPU-only runs (see ``axpack.cpu_shim``).
    """
    argv = [torchrun]
    if nnodes == 1 and rdzv_endpoint is None:
        argv += ["--standalone", "--nnodes", "1"]
    else:
        argv += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", str(rdzv_endpoint),
                 "--rdzv-id", str(rdzv_id)]
    return [*argv, "--nproc-per-node", str(nproc), "-m", module, str(config)]


def local_train_argv(config: str | Path, nproc: int, bin_dir: Path) -> tuple[list[str], bool]:
    """``(argv, cpu)`` for ``axpack train --nproc N`` on this machine.

    With CUDA GPUs: plain ``torchrun --standalone ... -m axolotl.cli.train``.
    Without any: the same, but ranks start ``-m axpack.cpu_shim`` (gloo, the
    CUDA p2p probes neutralised). With fewer GPUs than ``nproc``: refused.

    Raises:
        ValueError: ``nproc`` exceeds the GPUs of a machine that has some
            (the message is the user's one line).
    """
    have = gpu_count()
    if 0 < have < nproc:
        raise ValueError(f"NPROC={nproc}: this machine has {have} CUDA GPU(s); run with NPROC={have} "
                         "(one process per GPU) or on a box with enough GPUs")
    cpu = have == 0
    argv = torchrun_argv(config, nproc, module=CPU_SHIM_MODULE if cpu else TRAIN_MODULE,
                         torchrun=str(bin_dir / "torchrun"))
    return argv, cpu


def cpu_rank_env(nproc: int) -> dict[str, str]:
    """Environment for CPU ranks (``axpack train --nproc N`` without a GPU).

    - ``ACCELERATE_USE_CPU=true``: without it accelerate's ``PartialState``
      sees ``LOCAL_RANK`` but no CUDA and settles on ``DistributedType.NO``
      (accelerate/state.py ``_prepare_backend`` only picks ``MULTI_CPU`` +
      gloo when told ``cpu``), so the HF Trainer runs NOT_PARALLEL: measured,
      both ranks then train the whole data set each, with identical losses,
      and overwrite each other's checkpoints. transformers'
      ``TrainingArguments._setup_devices`` reads this variable.
    - ``OMP_NUM_THREADS = cores // N``: torch starts one intra-op thread per
      core in every process; N ranks × all cores oversubscribe the CPU.
    """
    threads = max(1, (os.cpu_count() or 1) // max(1, nproc))
    return {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": str(threads)}


# --------------------------------------------------------------------------- launch files


@dataclass
class LaunchSpec:
    """What ``axpack launch`` renders. ``env`` holds ``--env KEY=VALUE`` pairs
    exported on every node; ``eff_batch`` (optional) is the effective batch to
    keep by rewriting ``gradient_accumulation_steps``."""

    config: str
    cfg: dict[str, Any]
    nodes: int
    gpus_per_node: int
    scheduler: str
    out: Path
    port: int = DEFAULT_PORT
    env: dict[str, str] = field(default_factory=dict)
    eff_batch: int | None = None
    shared_dirs: tuple[str, ...] = ()
    partition: str | None = None
    time_limit: str | None = None

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def name(self) -> str:
        return Path(self.config).stem


@dataclass(frozen=True)
class Problem:
    """One preflight failure: ``check`` names the rule, ``where`` the key or option."""

    check: str
    where: str
    what: str
    todo: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}; {self.todo}"


@dataclass(frozen=True)
class Rendered:
    """One launch file: its path, text and whether it is an executable script."""

    path: Path
    text: str
    executable: bool = False


def _int(cfg: dict[str, Any], key: str, default: int = 1) -> int:
    try:
        return int(cfg.get(key) or default)
    except (TypeError, ValueError):
        return default


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def launch_ga(spec: LaunchSpec) -> int:
    """Gradient accumulation of the launched run: ``eff_batch / (micro × world)``
    with ``--eff-batch`` (when it divides), else the config's own."""
    micro = _int(spec.cfg, "micro_batch_size")
    if spec.eff_batch and spec.eff_batch % (micro * spec.world) == 0:
        return spec.eff_batch // (micro * spec.world)
    return _int(spec.cfg, "gradient_accumulation_steps")


def _deepspeed_json(cfg: dict[str, Any], root: Path) -> tuple[str, dict[str, Any]] | None:
    ds = cfg.get("deepspeed")
    if isinstance(ds, dict):
        return "deepspeed", ds
    if not ds:
        return None
    p = Path(str(ds))
    p = p if p.is_absolute() else root / p
    try:
        import json

        return str(ds), json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # axpack validate reports a missing or broken DeepSpeed file


def _mount_fs_type(path: Path, mounts_file: Path = Path("/proc/mounts")) -> str | None:
    """Filesystem type of the mount holding ``path`` (its nearest existing
    ancestor), from ``/proc/mounts``; None when unknown."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        real = p.resolve()
        lines = mounts_file.read_text().splitlines()
    except OSError:
        return None
    best, fstype = "", None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (str(real) == mnt or str(real).startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
            best, fstype = mnt, parts[2]
    return fstype


def preflight(spec: LaunchSpec, root: Path | None = None) -> list[Problem]:
    """The known multi-node failures of ``spec``, before any node starts.

    Returns an empty list when the launch files can be used as rendered; the
    rules and their sources are in the module docstring.
    """
    root = root or Path.cwd()
    problems: list[Problem] = []
    micro = _int(spec.cfg, "micro_batch_size")
    world = spec.world

    # batch: the effective batch must be micro × GA × world with a whole GA
    if spec.eff_batch is not None and spec.eff_batch % (micro * world):
        if spec.eff_batch % micro:
            hint = f"use an --eff-batch that micro_batch_size {micro} divides"
        else:
            rows = spec.eff_batch // micro
            up = -(-spec.eff_batch // (micro * world)) * micro * world
            hint = (f"use --eff-batch {up}, or a world size in {_divisors(rows)} "
                    f"(divisors of {spec.eff_batch} / micro {micro})")
        problems.append(Problem(
            "batch", "--eff-batch",
            f"{spec.eff_batch} is not micro_batch_size {micro} × a whole GA × world size {world} "
            f"({spec.nodes} node(s) × {spec.gpus_per_node} GPU(s)) = multiples of {micro * world}",
            hint))
    ds = _deepspeed_json(spec.cfg, root)
    if ds is not None:
        name, conf = ds
        ga = launch_ga(spec)
        want = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": ga,
                "train_batch_size": micro * ga * world}
        for key, value in want.items():
            fixed = conf.get(key)
            if isinstance(fixed, int) and not isinstance(fixed, bool) and fixed != value:
                problems.append(Problem(
                    "batch", f"{name}: {key}",
                    f"fixed at {fixed} but this launch runs {value} (micro {micro} × GA {ga} × world {world}); "
                    "DeepSpeed stops at start-up on the mismatch",
                    f'set "{key}": "auto" so the YAML and the world size decide'))

    # nccl: multi-node runs need the interface the nodes talk on
    if spec.nodes > 1 and "NCCL_SOCKET_IFNAME" not in spec.env:
        problems.append(Problem(
            "nccl", "NCCL_SOCKET_IFNAME",
            f"not set for a {spec.nodes}-node run: NCCL picks an interface itself (often docker0 or a "
            "link-local one the other nodes cannot reach) and the first all-reduce hangs until the watchdog",
            "pass --env NCCL_SOCKET_IFNAME=<the nodes' interface, e.g. eth0 or ib0> "
            "(and --env NCCL_IB_DISABLE=1 without InfiniBand)"))

    # shared-storage: multi-node Ray writes checkpoints from the workers
    if spec.scheduler == "ray" and spec.nodes > 1:
        out = str(spec.cfg.get("output_dir") or "")
        outp = Path(out)
        shared = [d for d in spec.shared_dirs if outp.is_absolute() and
                  (outp == Path(d) or Path(d) in outp.parents)]
        fstype = _mount_fs_type(outp) if outp.is_absolute() else None
        if not outp.is_absolute():
            problems.append(Problem(
                "shared-storage", "output_dir",
                f"{out} is relative: on a {spec.nodes}-node Ray cluster each worker resolves it on its own "
                "node's disk, so checkpoints and the adapter end up scattered",
                "set output_dir to an absolute folder every node mounts (NFS, Lustre, ...) and pass it as "
                "--shared-dir"))
        elif not shared and (fstype or "") not in NETWORK_FS:
            problems.append(Problem(
                "shared-storage", "output_dir",
                f"{out} is not under a --shared-dir and its filesystem here is {fstype or 'unknown'}, "
                f"not a network one: a {spec.nodes}-node Ray run needs storage every node mounts",
                "move output_dir onto shared storage, or pass --shared-dir <its mount point> if every node "
                "mounts it"))
    return problems


def _flow(value: Any) -> str:
    """``value`` as one line of YAML flow style (``{GPU: 1}``, ``true``)."""
    return yaml.safe_dump(value, default_flow_style=True).replace("\n...", "").strip()


def _run_config(spec: LaunchSpec) -> tuple[dict[str, Any], list[str]]:
    """The config every rank reads, and a line per key launch changed."""
    cfg = dict(spec.cfg)
    changes = []
    ga = launch_ga(spec)
    if ga != _int(spec.cfg, "gradient_accumulation_steps"):
        changes.append(f"gradient_accumulation_steps: {spec.cfg.get('gradient_accumulation_steps')} -> {ga} "
                       f"(--eff-batch {spec.eff_batch} = {_int(cfg, 'micro_batch_size')} × {ga} × {spec.world})")
        cfg["gradient_accumulation_steps"] = ga
    if spec.scheduler == "ray":
        ray = {"use_ray": True, "ray_num_workers": spec.world, "resources_per_worker": {"GPU": 1}}
        for key, value in ray.items():
            if cfg.get(key) != value:
                changes.append(f"{key}: {_flow(value)} "
                               "(Axolotl's Ray Train settings: one worker per GPU)")
                cfg[key] = value
    return cfg, changes


def _env_lines(spec: LaunchSpec) -> list[str]:
    env = {**ALWAYS_ENV, **spec.env}
    return [f"export {k}={shlex.quote(v)}" for k, v in env.items()]


def _summary(spec: LaunchSpec) -> list[str]:
    micro = _int(spec.cfg, "micro_batch_size")
    ga = launch_ga(spec)
    return [
        (f"# axpack launch: {spec.config} on {spec.nodes} node(s) × {spec.gpus_per_node} GPU(s) = "
         f"{spec.world} ranks ({spec.scheduler})"),
        f"# eff. batch = micro {micro} × GA {ga} × {spec.world} ranks = {micro * ga * spec.world}",
    ]


def _torchrun_script(spec: LaunchSpec, cfg_path: Path) -> str:
    lines = ["#!/usr/bin/env bash", *_summary(spec)]
    if spec.nodes == 1:
        lines += ["# Run on the one node: torchrun starts the ranks on a private rendezvous."]
        argv = torchrun_argv(cfg_path, spec.gpus_per_node)
        lines += ["set -euo pipefail", *_env_lines(spec), "exec " + shlex.join(argv)]
    else:
        lines += [
            "# Run this same script on every node, in any order; torchrun's c10d rendezvous on the head",
            "# node assigns the ranks. MASTER_ADDR: the head node's address, reachable from every node.",
            "# The config below must exist at the same path on every node (shared folder or a copy).",
            "set -euo pipefail",
            ': "${MASTER_ADDR:?set MASTER_ADDR to the head node address}"',
            f'MASTER_PORT="${{MASTER_PORT:-{spec.port}}}"',
            f'RDZV_ID="${{RDZV_ID:-axpack-{spec.name}}}"',
            *_env_lines(spec),
        ]
        argv = torchrun_argv(cfg_path, spec.gpus_per_node, spec.nodes, "@ENDPOINT@", "@RDZV@")
        line = shlex.join(argv).replace("@ENDPOINT@", '"$MASTER_ADDR:$MASTER_PORT"').replace("@RDZV@", '"$RDZV_ID"')
        lines.append("exec " + line)
    return "\n".join(lines) + "\n"


def _mixed_precision(cfg: dict[str, Any]) -> str:
    if cfg.get("bf16") is True or cfg.get("bf16") == "auto":
        return "bf16"
    return "fp16" if cfg.get("fp16") is True else "no"


def _accelerate_config(spec: LaunchSpec, cfg_path: Path, out: Path) -> str:
    conf = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": "MULTI_GPU",
        "downcast_bf16": "no",
        "machine_rank": 0,
        "main_process_ip": "HEAD_NODE_IP" if spec.nodes > 1 else "127.0.0.1",
        "main_process_port": spec.port,
        "main_training_function": "main",
        "mixed_precision": _mixed_precision(spec.cfg),
        "num_machines": spec.nodes,
        "num_processes": spec.world,
        "rdzv_backend": "static",
        "same_network": True,
        "tpu_env": [],
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
        "use_cpu": False,
    }
    run = shlex.join(["accelerate", "launch", "--config_file", str(out), "--machine_rank", "K", "-m",
                      TRAIN_MODULE, str(cfg_path)]).replace(" K ", " $NODE_RANK ")
    head = [
        *_summary(spec),
        "# On node K (0 = the head, whose address replaces HEAD_NODE_IP below), with the same config path:",
        "#   " + " ".join(_env_lines(spec)).replace("export ", "") + " " + run if spec.env else "#   " + run,
        "# distributed_type MULTI_GPU: DeepSpeed/FSDP come from the Axolotl YAML (Axolotl sets",
        "# ACCELERATE_USE_DEEPSPEED / ACCELERATE_USE_FSDP in every rank); num_processes is the total.",
    ]
    return "\n".join(head) + "\n" + yaml.safe_dump(conf, sort_keys=False)


def _sbatch(spec: LaunchSpec, cfg_path: Path, out_dir: Path) -> str:
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=axpack-{spec.name}",
        f"#SBATCH --nodes={spec.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={spec.gpus_per_node}",
        f"#SBATCH --output={out_dir}/slurm-%j.out",
    ]
    if spec.partition:
        lines.append(f"#SBATCH --partition={spec.partition}")
    if spec.time_limit:
        lines.append(f"#SBATCH --time={spec.time_limit}")
    lines += [
        *_summary(spec),
        "# Submit from the repo root (sbatch runs the job there): sbatch " + str(out_dir / "sbatch.sh"),
        "# One task per node; each runs torchrun, which starts the node's ranks and joins the c10d",
        "# rendezvous on the first node of the allocation (job id = rendezvous id).",
        "set -euo pipefail",
        '# the first host of the allocation (no `| head -n 1`: under pipefail its SIGPIPE would end the job)',
        'mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
        'MASTER_ADDR="${hosts[0]}"',
        f"MASTER_PORT={spec.port}",
        *_env_lines(spec),
    ]
    argv = torchrun_argv(cfg_path, spec.gpus_per_node, spec.nodes, "@ENDPOINT@", "@RDZV@")
    argv[argv.index("--nnodes") + 1] = "@NNODES@"
    line = (shlex.join(argv).replace("@ENDPOINT@", '"$MASTER_ADDR:$MASTER_PORT"')
            .replace("@RDZV@", '"$SLURM_JOB_ID"').replace("@NNODES@", '"$SLURM_NNODES"'))
    lines.append("srun --kill-on-bad-exit=1 " + line)
    return "\n".join(lines) + "\n"


def _ray_script(spec: LaunchSpec, cfg_path: Path) -> str:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in {**ALWAYS_ENV, **spec.env}.items())
    lines = [
        "#!/usr/bin/env bash",
        *_summary(spec),
        "# Start the cluster first, with the environment every worker process must inherit:",
        f"#   head:          {env} ray start --head --port=6379",
        f"#   other nodes:   {env} ray start --address=HEAD_NODE_IP:6379",
        f"# `ray status` must list {spec.world} GPUs. Then run this script on the head node: Ray Train starts",
        f"# ray_num_workers = {spec.world} workers, one GPU each (resources_per_worker), wherever they fit.",
        "set -euo pipefail",
        *_env_lines(spec),
        "exec " + shlex.join(["axolotl", "train", str(cfg_path), "--use-ray"]),
    ]
    return "\n".join(lines) + "\n"


def render(spec: LaunchSpec) -> tuple[list[Rendered], list[str]]:
    """The files of ``spec`` under ``spec.out``, and the config changes.

    Every form references ``<out>/config.yaml``: the config as given plus what
    the launch changes (``gradient_accumulation_steps`` for ``--eff-batch``;
    the Ray keys), written with a header naming its source.
    """
    out = spec.out
    cfg, changes = _run_config(spec)
    cfg_path = out / "config.yaml"
    header = [(f"# written by axpack launch from {spec.config} ({spec.scheduler}, {spec.nodes} × "
               f"{spec.gpus_per_node} = {spec.world} ranks)")]
    header += [f"# changed: {c}" for c in changes]
    files = [Rendered(cfg_path, "\n".join(header) + "\n" + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))]
    if spec.scheduler == "torchrun":
        files.append(Rendered(out / "torchrun.sh", _torchrun_script(spec, cfg_path), executable=True))
    elif spec.scheduler == "accelerate":
        files.append(Rendered(out / "accelerate.yaml", _accelerate_config(spec, cfg_path, out / "accelerate.yaml")))
    elif spec.scheduler == "slurm":
        files.append(Rendered(out / "sbatch.sh", _sbatch(spec, cfg_path, out), executable=True))
    elif spec.scheduler == "ray":
        files.append(Rendered(out / "ray.sh", _ray_script(spec, cfg_path), executable=True))
    else:  # pragma: no cover - click restricts the choice
        raise ValueError(f"unknown scheduler {spec.scheduler}")
    return files, changes
