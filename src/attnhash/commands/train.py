"""attnhash train: train a method and save its run folder (checkpoint, config, log)."""

from __future__ import annotations

from attnhash.commands.common import DefaultsHelpFormatter, add_run_flags, config_from_args
from attnhash.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser("train", help="train a hashing method; writes runs/<name>/",
                       formatter_class=DefaultsHelpFormatter)
    add_run_flags(p)
    p.add_argument("--force", action="store_true", help="train again into a run folder that holds a run already")
    p.add_argument("--resume", metavar="RUN", help="continue the interrupted training of this run folder (with its "
                                                     "own config) from its last finished epoch")
    p.add_argument("--evaluate", action="store_true", help="evaluate on the protocol's query/database after training")
    p.add_argument("--print-config", action="store_true", help="print the assembled config and exit")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.resume:
        given = [flag for flag, value in vars(args).items() if value not in (None, [], False) and flag not in
                 ("resume", "quiet", "evaluate", "func", "command")]
        if given:
            raise ConfigError(f"--resume continues with the run's own config; leave out --{given[0].replace('_', '-')}")
        from attnhash.training import resume_run

        result = resume_run(args.resume, progress=not args.quiet)
    else:
        cfg = config_from_args(args)
        if args.print_config:
            print(cfg.to_yaml())
            return 0
        from attnhash.training import train

        result = train(cfg, progress=not args.quiet, force=args.force)
    print(f"run folder: {result.run_dir}  ({result.seconds:.1f}s, {result.images_per_second:.0f} train images/s)")
    if args.evaluate:
        from attnhash.commands.evaluate import print_summary
        from attnhash.evaluation.run import evaluate_run

        _, summary = evaluate_run(result.run_dir, progress=not args.quiet)
        print_summary(summary)
    return 0
