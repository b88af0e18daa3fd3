"""``xrisk run continual``: tasks learned one after the other, with non-forgetting constraints.

The classes of ``--data`` are split into ``--tasks`` tasks of consecutive class pairs (Fashion-MNIST,
5 tasks: {T-shirt, Trouser}, {Pullover, Dress}, ...), learned in order by one MLP with a shared
10-way output; a task's loss and accuracy use the logits of its own classes only (task-incremental:
the task id is known at test time). ``--method``:

=========== =============================================================================
constrained  cross-entropy on the current task subject to one constraint per earlier task,
             ``mean loss on its memory now <= its loss when it was learned + --slack``
             (:func:`~xrisk.constrained.non_forgetting_constraints`), with ``--formulation``
             hinge (:class:`~xrisk.constrained.HingePenalty`, ``--beta``), squared or lagrangian
finetune     plain fine-tuning on each task in turn (no memory)
rehearsal    cross-entropy on the current task plus cross-entropy on the same memory batches
=========== =============================================================================

After each task ``--memory`` training samples of it are kept (drawn with the seed) with their
losses under the model of that moment. Every step of a later task draws ``--memory-batch`` samples
from the memory of the earlier tasks. At the end of each task the test accuracy of every task is
recorded (the accuracy matrix ``A[i, j]``: task ``j`` after learning task ``i``); reported at the end:
``average_accuracy = mean_j A[T, j]`` and ``forgetting = mean_{j < T} (max_{i < T} A[i, j] - A[T, j])``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import Tensor, nn

from xrisk.recipes.flags import number
from xrisk.recipes.registry import Recipe, UsageError, register
from xrisk.recipes.runner import RunContext

__all__ = ["METHODS", "add_arguments", "validate", "run", "ContinualMemory", "forgetting_summary"]

METHODS: tuple[str, ...] = ("constrained", "finetune", "rehearsal")
_NUM_CLASSES = {"fashion-mnist": 10, "digits": 10}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``xrisk run continual``."""
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=tuple(_NUM_CLASSES), default="fashion-mnist",
                   help="built-in data set (digits: the small scikit-learn set, for quick runs)")
    g.add_argument("--tasks", type=number(int, ge=2), default=5, help="number of tasks (2 classes each)")
    g.add_argument("--max-train-per-task", type=number(int, ge=10), default=None,
                   help="use at most this many training samples per task (default: all)")
    g = p.add_argument_group("method")
    g.add_argument("--method", choices=METHODS, default="constrained", help="how earlier tasks are protected")
    g.add_argument("--formulation", choices=("hinge", "squared", "lagrangian"), default="hinge",
                   help="constrained formulation (--method constrained)")
    g.add_argument("--beta", type=number(float, gt=0), default=10.0, help="penalty parameter (hinge, squared)")
    g.add_argument("--gamma", type=number(float, gt=0, le=1), default=0.9,
                   help="estimator weight on the new constraint value")
    g.add_argument("--dual-lr", type=number(float, gt=0), default=0.1, help="multiplier ascent step (lagrangian)")
    g.add_argument("--slack", type=number(float, ge=0), default=0.0, help="allowed loss increase on an earlier task")
    g.add_argument("--memory", type=number(int, ge=1), default=100, help="samples kept per learned task")
    g.add_argument("--memory-batch", type=number(int, ge=1), default=64,
                   help="memory samples per step (constrained, rehearsal)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs-per-task", type=number(int, ge=1), default=2, help="epochs on each task")
    g.add_argument("--batch-size", type=number(int, ge=2), default=64, help="mini-batch size of the current task")
    g.add_argument("--lr", type=number(float, gt=0), default=1e-3, help="Adam learning rate")
    g.add_argument("--hidden", type=number(int, ge=1), default=256, help="hidden width of the MLP")
    g.add_argument("--seed", type=number(int, ge=0), default=0, help="seed of model init, batches and memory")


def validate(args: argparse.Namespace) -> None:
    """``--tasks`` must fit the classes of ``--data`` (2 classes per task)."""
    most = _NUM_CLASSES[args.data] // 2
    if args.tasks > most:
        raise UsageError(f"argument --tasks: {args.data} has {_NUM_CLASSES[args.data]} classes, so at most {most} "
                         f"tasks of 2 classes; got {args.tasks}")


class ContinualMemory(nn.Module):
    """What a continual run must carry across tasks (buffers, so checkpoints hold it).

    Buffers: ``memory_index`` ``[T, M]`` training-set indices kept per task (-1: not yet);
    ``memory_loss`` ``[T, M]`` their losses under the model at the end of their task;
    ``accuracy`` ``[T, T]`` test accuracy of task ``j`` after task ``i`` (NaN: not yet).
    """

    memory_index: Tensor
    memory_loss: Tensor
    accuracy: Tensor

    def __init__(self, num_tasks: int, memory: int) -> None:
        super().__init__()
        self.register_buffer("memory_index", torch.full((num_tasks, memory), -1, dtype=torch.long))
        self.register_buffer("memory_loss", torch.zeros(num_tasks, memory))
        self.register_buffer("accuracy", torch.full((num_tasks, num_tasks), float("nan")))


def forgetting_summary(accuracy: Tensor) -> dict[str, float]:
    """Average final accuracy and average forgetting from a complete ``[T, T]`` accuracy matrix."""
    t = accuracy.shape[0]
    final = accuracy[t - 1]
    forgetting = [float(accuracy[: t - 1, j].max() - final[j]) for j in range(t - 1)]
    return {"average_accuracy": float(final.mean()), "forgetting": sum(forgetting) / len(forgetting)}


def _task_loss(logits: Tensor, y: Tensor, classes: Tensor) -> Tensor:
    """Per-sample cross-entropy over the logits of each sample's task classes (``classes`` ``[B, 2]``)."""
    sub = logits.gather(1, classes)
    return nn.functional.cross_entropy(sub, (y.unsqueeze(1) == classes).long().argmax(1), reduction="none")


def _task_accuracy(model: nn.Module, x: Tensor, y: Tensor, classes: Tensor) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        pred = model(x)[:, classes].argmax(1)
    model.train(was)
    return float((classes[pred] == y).float().mean())


def run(args: argparse.Namespace, ctx: RunContext) -> dict[str, Any]:
    """Train the tasks in order; see the module docstring. Returns average accuracy and forgetting."""
    from xrisk.constrained import ProblemState, non_forgetting_constraints
    from xrisk.data import load_multiclass
    from xrisk.recipes.auc import ShuffleBatches
    from xrisk.recipes.fair import build_formulation

    data = load_multiclass(args.data, seed=args.seed)
    x_tr, y_tr = data.x_train.flatten(1), data.y_train
    x_te, y_te = data.x_test.flatten(1), data.y_test
    pairs = torch.arange(2 * args.tasks).reshape(args.tasks, 2)
    train_ids, test_ids = [], []
    for t in range(args.tasks):
        ids = torch.nonzero(torch.isin(y_tr, pairs[t])).flatten()
        if args.max_train_per_task is not None and ids.numel() > args.max_train_per_task:
            g = torch.Generator().manual_seed(args.seed * 1_000_003 + t)
            ids = ids[torch.randperm(ids.numel(), generator=g)[: args.max_train_per_task]].sort().values
        train_ids.append(ids)
        test_ids.append(torch.nonzero(torch.isin(y_te, pairs[t])).flatten())
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(x_tr.shape[1], args.hidden), nn.ReLU(), nn.Linear(args.hidden, _NUM_CLASSES[args.data]))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    memory = ContinualMemory(args.tasks, args.memory)
    formulation = None
    if args.method == "constrained":
        formulation = build_formulation(args.formulation, args.tasks, beta=args.beta, gamma=args.gamma, smooth=None,
                                        dual_lr=args.dual_lr)
    state = nn.ModuleDict({"memory": memory, **({"formulation": formulation} if formulation is not None else {})})
    ctx.update_config(data_description=data.description, task_classes=pairs.tolist(),
                      train_per_task=[int(i.numel()) for i in train_ids])
    ctx.notice(f"{args.data}: {args.tasks} tasks of 2 classes, {sum(int(i.numel()) for i in train_ids)} training "
               f"samples; method {args.method}")
    epochs = args.tasks * args.epochs_per_task
    start = ctx.resume(model=model, loss=state, optimizer=optimizer)
    steps_per_task = [len(ShuffleBatches(int(i.numel()), args.batch_size)) for i in train_ids]
    total = sum(steps_per_task[(e - 1) // args.epochs_per_task] for e in range(start + 1, epochs + 1))
    bar = ctx.progress(total - ctx.start_step, "")
    for epoch in range(start + 1, epochs + 1):
        task = (epoch - 1) // args.epochs_per_task
        bar.set_description(f"task {task + 1}/{args.tasks} epoch {epoch}/{epochs}")
        ids = train_ids[task]
        sampler = ShuffleBatches(ids.numel(), args.batch_size, seed=args.seed)
        sampler.set_epoch(epoch)
        g = torch.Generator().manual_seed(args.seed * 7919 + epoch)
        mem_ids = memory.memory_index[:task].reshape(-1)
        mem_loss = memory.memory_loss[:task].reshape(-1)
        mem_task = torch.arange(task).repeat_interleave(args.memory)
        use_memory = task > 0 and args.method != "finetune"
        acc: dict[str, Any] = {"loss": 0.0, "count": 0}
        for batch in ctx.steps(epoch, iter(sampler), state=acc, generators=[g]):
            index = ids[batch]
            objective = _task_loss(model(x_tr[index]), y_tr[index], pairs[task].expand(index.numel(), 2)).mean()
            value = objective
            if use_memory:
                pick = torch.randint(0, mem_ids.numel(), (args.memory_batch,), generator=g)
                mi, mt = mem_ids[pick], mem_task[pick]
                now = _task_loss(model(x_tr[mi]), y_tr[mi], pairs[mt])
                if formulation is not None:
                    cons = non_forgetting_constraints(now, mem_loss[pick], mt, args.slack, num_groups=args.tasks)
                    value = formulation(ProblemState.from_constraints(objective, cons))
                else:
                    value = objective + now.mean()
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            acc["loss"] += float(objective.detach())
            acc["count"] += 1
            bar.update(loss=float(objective.detach()))
        metrics: dict[str, Any] = {"train_loss": acc["loss"] / max(acc["count"], 1), "task": task + 1,
                                   "test_accuracy_current": _task_accuracy(model, x_te[test_ids[task]],
                                                                           y_te[test_ids[task]], pairs[task])}
        if formulation is not None and task > 0:
            report = formulation.report()
            metrics.update(train_max_violation=report.max_violation, train_kkt_residual=report.kkt_residual)
        if epoch % args.epochs_per_task == 0:  # end of the task: accuracy row and its memory
            for j in range(args.tasks):
                memory.accuracy[task, j] = _task_accuracy(model, x_te[test_ids[j]], y_te[test_ids[j]], pairs[j])
            metrics["test_accuracy_seen"] = float(memory.accuracy[task, : task + 1].mean())
            gm = torch.Generator().manual_seed(args.seed * 104729 + task)
            keep = ids[torch.randperm(ids.numel(), generator=gm)[: args.memory]]
            if keep.numel() < args.memory:  # a tiny task: repeat samples to fill the slots
                keep = keep[torch.arange(args.memory) % keep.numel()]
            memory.memory_index[task] = keep
            with torch.no_grad():
                model.eval()
                memory.memory_loss[task] = _task_loss(model(x_tr[keep]), y_tr[keep], pairs[task].expand(keep.numel(), 2))
                model.train()
        ctx.log_epoch(epoch, metrics)
        ctx.save(epoch=epoch)
    bar.close()
    summary = forgetting_summary(memory.accuracy)
    final = {**summary, **{f"test_accuracy_task{j + 1}": float(memory.accuracy[-1, j]) for j in range(args.tasks)},
             "tasks": args.tasks}
    return ctx.finish(final)


register(Recipe(
    name="continual",
    help="continual learning with non-forgetting constraints (vs fine-tuning and rehearsal) on Fashion-MNIST",
    add_arguments=add_arguments,
    run=run,
    validate=validate,
))
