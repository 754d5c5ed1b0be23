"""Training on several processes: `torchrun --nproc_per_node N -m minidept.train -- OPTIONS`.

(The `--`: torchrun would read minidept's `--l`, `--m` and `--r` as abbreviations of its own options.)

Only `train.py` calls this file, and only when torchrun started more than one
process (`WORLD_SIZE` > 1). The frozen backbone and the adapter are replicated:
every rank holds the whole model, takes its own slice of each global batch
(`--batch-size` examples, cut into `world size x --grad-accum` micro-batches) and
computes the gradient of its slice, weighted by the slice's share of the batch's
labelled tokens. One all-reduce then sums the adapter's few gradient tensors, so
every rank holds the gradient of the whole batch's mean loss and takes the same
AdamW step: the run equals a one-process run of the same batch size. Not DDP: DDP
averages (this sum is already weighted), buckets and hooks every parameter, and
needs `no_sync` around accumulation; here there are a handful of tensors, sent
once per step in one buffer. Evaluation is split across the ranks too; rank 0
alone writes files and logs. gloo on the CPU, nccl on GPUs.

No process waits forever. Joining the group, and every collective after it, gives up after
`MINIDEPT_DIST_TIMEOUT` seconds (default 600; torch's own default is 30 minutes): a peer that
never started, or was stopped, ends the others with an error. And every process watches its
launcher: when torchrun is gone (killed with SIGKILL, say), the worker stops as on SIGTERM
(the ranks agree on a step and rank 0 saves the state), and leaves at once if it is still
running a minute later.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import one_line
from .cli import UsageError
from .evaluate import predict
from ..data.tasks import score

GRACE_SECONDS = 60   # after the launcher is gone: the time a worker has to stop at a step and save


def timeout() -> timedelta:
    """How long a process waits for its peers: `MINIDEPT_DIST_TIMEOUT` seconds, default 600."""
    text = os.environ.get("MINIDEPT_DIST_TIMEOUT", "600")
    if not (text.isascii() and text.isdigit() and int(text) > 0):
        raise UsageError(f"MINIDEPT_DIST_TIMEOUT={text!r}: give the seconds a process waits for its peers, "
                         "a whole number above 0 (default 600)")
    return timedelta(seconds=int(text))


def start(device: str | None) -> int:
    """Join the process group torchrun describes (gloo, or nccl with a GPU per process); return this rank.

    Starts `watch_launcher` first, and gives up joining after `timeout()` with one line."""
    watch_launcher()
    limit = timeout()
    cuda = device in (None, "auto", "cuda") and torch.cuda.is_available()
    if cuda:   # `cuda` now means this process's own GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=limit)
    except (RuntimeError, ValueError) as error:   # DistNetworkError, DistStoreError: timeouts, refused connections
        raise UsageError(f"the {os.environ.get('WORLD_SIZE')} processes of torchrun did not all join within "
                         f"{int(limit.total_seconds())} s ({one_line(error)}); a peer did not start or was stopped: run again "
                         "(MINIDEPT_DIST_TIMEOUT sets the seconds)") from None
    return dist.get_rank()


def watch_launcher(parent: int | None = None, grace: float = GRACE_SECONDS, every: float = 1.0) -> threading.Thread:
    """A daemon thread that stops this worker when its launcher (`parent`, torchrun's agent) is gone: SIGTERM
    to itself, as a scheduler would send (the run stops at a step and saves), then an exit `grace` seconds
    later if the process is still running (blocked in a collective with a peer that is gone).
    torchrun ends its workers when it is stopped properly; killed with SIGKILL, it cannot."""
    parent = os.getppid() if parent is None else parent

    def watch():
        while os.getppid() == parent:   # a process whose parent is gone is adopted by another (init)
            time.sleep(every)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os._exit(143)   # 128 + SIGTERM, as if the signal had ended it

    thread = threading.Thread(target=watch, name="launcher-watchdog", daemon=True)
    thread.start()
    return thread


def collective(operation, *args):
    """`operation(*args)`, a collective of torch.distributed, with its timeout (a peer stopped or gone) in one line."""
    try:
        return operation(*args)
    except RuntimeError as error:   # gloo: "Timed out waiting ... for recv"; nccl: the watchdog's abort
        raise UsageError(f"process {dist.get_rank()} of {dist.get_world_size()}: a peer did not answer within "
                         f"{int(timeout().total_seconds())} s ({one_line(error)}); it was stopped or has died. "
                         "Continue from the last saved state with the same command plus --resume") from None


def all_reduce(params: list[torch.Tensor], loss, stop: bool) -> tuple[torch.Tensor, bool]:
    """Sum the gradients of `params`, the (weighted) losses and the ranks' stop requests over all ranks,
    in one buffer: (the batch's loss, whether any rank was asked to stop). A rank with no rows in
    this batch (an epoch's last, short batch) sends zeros."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    extra = torch.tensor([float(loss), float(stop)], device=params[0].device)
    flat = torch.cat([p.grad.flatten() for p in params] + [extra])
    collective(dist.all_reduce, flat)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()
    return flat[-2], bool(flat[-1] > 0)


def gather_rng(rng: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every rank's generator states, for the training state: rank 0's as given ("cpu", "cuda"),
    rank r's as "cpu.r", "cuda.r", so that a resumed run draws what each rank would have drawn."""
    gathered = {}
    for name, state in rng.items():
        states = [torch.empty_like(state, device=device) for _ in range(dist.get_world_size())]
        collective(dist.all_gather, states, state.to(device))
        gathered.update({name if rank == 0 else f"{name}.{rank}": s.cpu() for rank, s in enumerate(states)})
    return gathered


def evaluate(model, rows: list[dict], task, tokenizer, batch_size: int = 64) -> dict[str, float]:
    """`evaluate.evaluate` split across the ranks: rank r predicts rows r, r + N, ...; every rank gets the scores."""
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = predict(model, rows[rank::world], tokenizer, batch_size=batch_size)
    parts = [None] * world
    collective(dist.all_gather_object, parts, mine)
    predictions = [parts[i % world][i // world] for i in range(len(rows))]
    return score(task, predictions, [row["target"] for row in rows])
