"""`instructmt prompt show TASK`: print a rendered prompt under an encoding."""

from __future__ import annotations

from ..errors import InstructMTError
from ..prompts.render import DEFAULT_ENCODING, PromptRenderer
from ..tasks.registry import TaskRegistry, load_path


def _show(args) -> int:
    from ..validation import check_flags
    check_flags(args, {"max_source_length": (8, 1 << 20)})
    registry = TaskRegistry()
    for src in args.tasks:
        for t in load_path(src):
            registry.add(t)
    task = registry.get(args.task)
    if not task.instances:
        raise InstructMTError(f"task {task.name!r} has no instances")
    if not 0 <= args.instance < len(task.instances):
        raise InstructMTError(f"task {task.name!r} has {len(task.instances)} instances; --instance {args.instance} is out of range")
    inst = task.instances[args.instance]
    length_fn = None
    if args.tokenizer:
        from transformers import AutoTokenizer
        try:
            tok = AutoTokenizer.from_pretrained(args.tokenizer)
        except (OSError, ValueError) as e:
            raise InstructMTError(f"cannot load tokenizer {args.tokenizer!r}: {str(e).splitlines()[0]}") from None
        length_fn = lambda s: len(tok(s)["input_ids"])  # noqa: E731
    text = PromptRenderer(args.encoding, length_fn=length_fn, max_source_length=args.max_source_length).render(task, inst)
    print(text)
    if args.show_target:
        print("\n--- target(s):", " | ".join(inst.outputs))
    return 0


def register(sub) -> None:
    p = sub.add_parser("prompt", help="render prompts", description="Render task prompts under an encoding.")
    ps = p.add_subparsers(dest="prompt_command", metavar="ACTION")
    show = ps.add_parser("show", help="print the rendered prompt of one instance",
                         description="Print the prompt the model sees for one instance of TASK.")
    show.add_argument("task", help="task name")
    show.add_argument("--tasks", nargs="+", default=["tasks/sample"], help="task files or directories (default: tasks/sample)")
    show.add_argument("--encoding", default=DEFAULT_ENCODING,
                      help="encoding: def, posK, negK, expl, name joined with + (e.g. def+pos2+neg2+expl), or a named one (qa, prefix)")
    show.add_argument("--instance", type=int, default=0, help="instance index (default 0)")
    show.add_argument("--tokenizer", help="tokenizer id/path: drop examples that would overflow --max-source-length")
    show.add_argument("--max-source-length", type=int, default=1024)
    show.add_argument("--show-target", action="store_true", help="also print the reference output(s)")
    show.set_defaults(func=_show)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
