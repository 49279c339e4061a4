"""`wbcnet adapt`'s flags to calls: --suggest (lab/suggest.py), the --shots learning curve
(lab/learning_curve.py), --adabn, or adapting on labelled cells, unlabelled ones or both
(lab/adapt.py)."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import WbcnetError
from ..lab import adapt as lab_adapt  # looked up at the call: a test may stand in for adapt_lab


def run_command(opts, a, args) -> int:
    """`wbcnet adapt`: suggest, adapt (labelled, unlabelled or both), or the --shots curve."""
    from ..core.files import prepare_output_dir
    from ..models.checkpoint import resolve_checkpoint
    from ..lab.suggest import suggest

    parent = resolve_checkpoint(opts.checkpoint)
    progress = not args.no_progress
    opts.apply_threads()
    if a.suggest:
        sheet = suggest(parent, a.unlabelled, a.suggest, a.out, kind=a.unlabelled_kind, seed=a.seed,
                        progress=progress)
        print(f"next: fill in the label column of {sheet}, then: wbcnet adapt --data {sheet} "
              f"--unlabelled {a.unlabelled} --out RUN")
        return 0
    run = dict(epochs=a.epochs, seed=a.seed, device=opts.device, threads=opts.threads, workers=opts.workers,
               progress=progress)
    semi = {"steps": a.steps}
    if a.shots:
        from ..lab.learning_curve import shots_curve

        shots_curve(parent, a.data, prepare_output_dir(a.out, args.overwrite), a.shot_counts(), a.repeats,
                    unlabelled=a.shots_unlabelled, pick=a.pick, semi=semi, **run)
        print(f"-> {Path(a.out) / 'learning_curve.md'}, learning_curve.png, learning_curve.csv")
    elif a.adabn:
        if a.data:
            raise WbcnetError("--adabn re-estimates statistics from unlabelled pictures alone: leave out --data")
        lab_adapt.adapt_unlabelled(parent, a.unlabelled, a.out, progress=progress)
    else:
        out = lab_adapt.adapt_lab(parent, a.out, labelled=a.data, unlabelled=a.unlabelled, kind=a.unlabelled_kind,
                                  lr=a.lr, semi=semi, **run)
        print(f"done: {out} (use it with --model {out})")
    return 0
