"""`wbcnet tune`: hyperparameter search with Optuna, every trial a short `fit()`.

A trial is the base config (a `wbcnet train` YAML) with a few settings drawn from a search space
(YAML, dotted names for nested settings: `model_args.depth`, `augment.hed`); it trains for a few
epochs and reports its validation macro-F1 to Optuna after each, so the pruner (median or
Hyperband) stops one that is doing worse than the others at the same epoch.

The study lives in the storage URL, not in this process: killing `wbcnet tune` and running the
same command continues the study (a trial the killed process left running is marked failed once
its heartbeat is stale, and tried again), and any number of processes or machines pointed at the
same URL share the study (SQLite for one machine, PostgreSQL or MySQL for several).

The outputs are rewritten after every trial: best.yaml (the base config with the best trial's
settings and the base's own epochs, ready for `wbcnet train --config`), trials.csv, the
optimisation history and parameter importances as pictures, and tune.html.
"""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import yaml

from ..core.errors import WbcnetError
from ..core.files import ASSETS
from .config import TrainConfig

DEFAULT_SPACE = ASSETS / "tune_space.yaml"
# A trial whose process died is marked failed once it has missed its heartbeat this long.
HEARTBEAT_S, GRACE_S = 15, 45


def read_space(path) -> dict[str, dict]:
    """name -> {low, high[, log][, step]} or {choices: [...]}, checked here so that a typo fails
    before the first trial, not in the tenth."""
    try:
        space = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise WbcnetError(f"{path}: search space file not found") from None
    except yaml.YAMLError as e:
        raise WbcnetError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(space, dict) or not space:
        raise WbcnetError(f"{path}: a search space is a mapping of setting names to ranges")
    base = TrainConfig().to_dict()
    for name, spec in space.items():
        top, _, rest = name.partition(".")
        if top not in base or (rest and top not in ("model_args", "augment")) or (top == "augment" and rest not in base["augment"]):
            raise WbcnetError(f"{path}: {name} is not a training setting (e.g. lr, model_args.depth, augment.hed)")
        ok = isinstance(spec, dict) and (("choices" in spec and isinstance(spec["choices"], list) and spec["choices"])
                                         or ("low" in spec and "high" in spec and spec["low"] < spec["high"]))
        if not ok:
            raise WbcnetError(f"{path}: {name} needs low < high (and optionally log: true, step) or a list of choices")
    return space


def suggest(trial, space: dict[str, dict]) -> dict:
    """The trial's settings, flat and dotted: {"lr": 0.001, "model_args.depth": 2, ...}."""
    out = {}
    for name, spec in space.items():
        if "choices" in spec:
            # Optuna's choices must be scalars; lists (widths) travel as their JSON text.
            texts = [json.dumps(c) for c in spec["choices"]]
            out[name] = json.loads(trial.suggest_categorical(name, texts))
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int) and not spec.get("log"):
            out[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1))
        else:
            out[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")),
                                            step=spec.get("step"))
    return out


def settings_of(params: dict, space: dict[str, dict]) -> dict:
    """A trial's Optuna params as settings: choices travel as their JSON text (see suggest)."""
    return {k: json.loads(v) if "choices" in space.get(k, {}) else v for k, v in params.items()}


def base_settings(base: TrainConfig, space: dict[str, dict]) -> dict:
    """The base config's own values of the searched settings, where the space holds them: the
    hand-made recipe as trial 0, scored on the same budget as every other trial."""
    from ..models import full_model_args

    d = base.to_dict()
    d["model_args"] = full_model_args(base.model, d["model_args"])  # the model's defaults too
    out = {}
    for name, spec in space.items():
        top, _, rest = name.partition(".")
        value = (d.get(top) or {}).get(rest) if rest else d.get(top)
        if value is None:
            continue
        if isinstance(value, tuple):
            value = list(value)
        if "choices" in spec:
            if value in spec["choices"]:
                out[name] = json.dumps(value)
        elif spec["low"] <= value <= spec["high"]:
            out[name] = value
    return out


def with_settings(base: TrainConfig, settings: dict) -> TrainConfig:
    """`base` with dotted `settings` applied, checked like any config."""
    d = base.to_dict()
    for name, value in settings.items():
        top, _, rest = name.partition(".")
        if rest:
            d[top] = dict(d.get(top) or {}, **{rest: value})
        else:
            d[top] = value
    return TrainConfig.from_dict(d, "tuned config")


def objective_for(base: TrainConfig, space: dict, out: Path, epochs: int):
    import optuna

    from .classifier import fit

    def objective(trial) -> float:
        settings = suggest(trial, space)
        cfg = with_settings(base, settings)
        cfg.epochs, cfg.patience, cfg.progress = epochs, 0, False
        cfg.out = str(out / "trials" / f"trial-{trial.number:04d}")
        print(f"trial {trial.number}: " + ", ".join(f"{k}={v}" for k, v in settings.items()), flush=True)

        def report(epoch, row):
            trial.report(float(row["val_macro_f1"]), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}")

        run = fit(cfg, on_epoch_end=report, evaluate=False)
        best = json.loads((run / "best.json").read_text())
        trial.set_user_attr("run", str(run))
        trial.set_user_attr("best_epoch", best["best_epoch"])
        return float(best["val_macro_f1"])

    return objective


def open_study(storage: str, name: str, pruner: str, seed: int | None):
    import optuna

    pruners = {"median": optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
               "hyperband": optuna.pruners.HyperbandPruner(min_resource=1),
               "none": optuna.pruners.NopPruner()}
    from sqlalchemy.exc import SQLAlchemyError

    if storage.startswith("sqlite:///") and storage != "sqlite:///:memory:":
        Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: "experimental"
            rdb = optuna.storages.RDBStorage(
                storage, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
        study = optuna.create_study(study_name=name, storage=rdb, direction="maximize", load_if_exists=True,
                                    pruner=pruners[pruner])
        # A resumed study must not draw its first trials again: the seed moves on with the
        # number of trials it holds (processes sharing a study need --seed values of their own).
        study.sampler = optuna.samplers.TPESampler(seed=None if seed is None else seed + len(study.trials))
        return study
    except (ImportError, ValueError, SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
        raise WbcnetError(f"--storage {storage}: cannot open the study ({str(e).splitlines()[0]})") from None


def finished(study) -> int:
    import optuna

    return sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)


def tune(base: TrainConfig, space: dict, storage: str, study_name: str, n_trials: int, out: Path,
         epochs: int = 6, timeout: float | None = None, pruner: str = "median", seed: int | None = 0) -> dict:
    """Run trials until the study holds `n_trials` finished (complete or pruned) ones or `timeout`
    seconds pass; write the outputs; return the summary."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base.validate()
    study = open_study(storage, study_name, pruner, seed)
    out.mkdir(parents=True, exist_ok=True)
    if not study.trials:
        first = base_settings(base, space)
        study.enqueue_trial(first, user_attrs={"base": True})
        print("trial 0 is the base config's own settings: " + ", ".join(f"{k}={v}" for k, v in first.items()))
    done = finished(study)
    if done:
        print(f"study {study_name}: {done} trials finished already; continuing to {n_trials}")
    if done < n_trials:
        def write_after_each(study, trial):
            write_outputs(study, base, space, out)
            state = trial.state.name.lower()
            value = f"val macro-F1 {trial.value:.4f}" if trial.value is not None else ""
            print(f"trial {trial.number} {state} {value}  ({finished(study)}/{n_trials} finished)", flush=True)

        study.optimize(objective_for(base, space, out, epochs), timeout=timeout, catch=(WbcnetError,),
                       callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=(optuna.trial.TrialState.COMPLETE,
                                                                                   optuna.trial.TrialState.PRUNED)),
                                  write_after_each])
    return write_outputs(study, base, space, out)


def write_outputs(study, base: TrainConfig, space: dict[str, dict], out: Path) -> dict:
    import optuna

    from ..core.files import atomic_write, write_text_atomic
    from ..render.tune import tune_figures, tune_page

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    header, rows = trial_table(study)
    with atomic_write(out / "trials.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    summary = {"study": study.study_name, "trials": len(study.trials),
               "states": {s.name.lower(): sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState},
               "best": None}
    if complete:
        best = study.best_trial
        settings = settings_of(best.params, space)
        cfg = with_settings(base, settings)
        cfg.out = None  # a new run folder for whoever trains it
        cfg.to_yaml(out / "best.yaml")
        summary["best"] = {"trial": best.number, "val_macro_f1": best.value, "settings": settings,
                           "run": best.user_attrs.get("run")}
    summary["figures"] = tune_figures(study, out, len(complete))
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    write_text_atomic(out / "tune.html", tune_page(summary, header, rows, out))
    return summary


def trial_table(study) -> tuple[list[str], list[list]]:
    """One row per trial: number, state, value, epochs reported, minutes, then each setting."""
    names = sorted({k for t in study.trials for k in t.params})
    header = ["trial", "state", "val_macro_f1", "epochs", "minutes"] + names
    rows = []
    for t in study.trials:
        minutes = (t.datetime_complete - t.datetime_start).total_seconds() / 60 \
            if t.datetime_complete and t.datetime_start else None
        rows.append([t.number, t.state.name.lower(), "" if t.value is None else round(t.value, 4),
                     len(t.intermediate_values), "" if minutes is None else round(minutes, 2)] +
                    [t.params.get(k, "") for k in names])
    return header, rows
