"""The recommended recipe: a chain of runs that one click or one command starts, ending in an ensemble.

It is what docs/measurements.md measures best on the external test split: the recommended preset,
its second-best trial kept as a run of its own (the runner-up, `core.workflows.runner_up`: nothing
trains), and the equal-weight ensemble of the search's best and runner-up, whose threshold is chosen
on validation like any run's. `cost.MEASURED` holds what its steps took on 2 cores for the full chest
X-ray folder; `estimate_s` is calibrated on it. A recipe of one trial has no runner-up: it repeats its
best with the next seed instead (`WITH_REPEAT`, the recipe before the runner-up). Recipes started
before keep their own chain (`WITH_REPEAT`, or `WITH_QUICK`) and go on as they began. The three-class
recipe (`THREE_CLASS_STEPS`) asks its question two ways, each a search and its runner-up: the three
classes at once, and the paper's two questions one after the other (pneumonia, then bacterial vs
viral); its ensemble averages the two answers (`ensemble.BOTH_ANSWERS_RULE`).

Each step is an ordinary run (`NAME-recommended`, `NAME-runner-up`) and the last one is the ensemble
`NAME`, so every page, the report and `predict` read them as they read any run. Each step's folder
also holds `recipe.json`, the plan: the recipe's name, the data folder, the settings that apply to
the search and the step's number. That is how `python -m core resume STEP` (the dashboard's Resume)
goes on with the whole chain rather than the one run, and how the pages say "step k of 3". Running
a recipe again continues it: finished steps are kept, a stopped or interrupted one resumes where it
stopped.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from core import files
from core.data import tasks
from core.inference import ensemble
from core.models import families
from core.runs import artifacts
from core.runs.artifacts import RunError
from core.search import cost, presets
from core.search.settings import SearchSettings
from core.workflows import repeat, runner_up

PLAN_FILE = "recipe.json"
LABEL = "Recommended recipe"
DESCRIPTION = (
    "Runs the recommended preset, keeps its second-best trial as a run of its own (nothing trains), then averages "
    "the search's best and that runner-up into an ensemble run whose threshold is chosen on validation. Each step is "
    "an ordinary run; the ensemble is the recipe's result. For three classes it also asks the paper's two questions "
    "one after the other (pneumonia, then bacterial vs viral: two more searches, each with its runner-up) and "
    "averages both answers."
)


def title() -> str:
    """The recipe's name with its estimated time on the reference data (the one estimate, `estimate_s`)."""
    return f"{LABEL} ({cost.about(reference_estimate_s())} on 2 cores)"


def measured_note() -> str:
    """What the recipe took when measured (`cost.MEASURED`), quoted the one way."""
    steps = ", ".join(f"{run.preset} {cost.took(run.elapsed_s)}" for run in cost.MEASURED)
    return (f"Measured on the {cost.MEASURED_DATA['images']:,} images of the chest X-ray folder from an empty cache: "
            f"{cost.took(cost.MEASURED_RECIPE_S)} on 2 cores ({steps}).")


# Settings a user may change for the whole recipe (its search, and so its repeat); everything else is the preset's.
OVERRIDABLE = ("task", "seed", "image_size", "weights", "max_per_class", "trials", "epochs", "augment_views", "batch_size")


@dataclass(frozen=True)
class Step:
    """One link of the chain: a preset's search, a repeat or the runner-up of an earlier step, or the
    ensemble of earlier steps."""

    kind: str  # "search", "repeat", "runner-up" or "ensemble"
    suffix: str  # the run is NAME-suffix; the ensemble (no suffix) is NAME itself
    preset: str | None = None  # search: the preset it runs
    source: str | None = None  # repeat, runner-up: the suffix of the search step it draws on
    members: tuple[str, ...] = ()  # ensemble: the suffixes of its members
    task: str | None = None  # search: the question it answers when not the recipe's own (a three-class recipe's)

    def run_name(self, recipe: str) -> str:
        return run_name(recipe, self.suffix)


def run_name(recipe: str, suffix: str) -> str:
    """The run of step `suffix` of recipe `recipe`: NAME-suffix, or NAME itself for the ensemble."""
    return f"{recipe}-{suffix}" if suffix else recipe


STEPS = (
    Step("search", "recommended", preset="recommended"),
    Step("runner-up", "runner-up", source="recommended"),  # the search's second-best trial, kept as a run
    Step("ensemble", "", members=("recommended", "runner-up")),
)
# The best trained again with the next seed: the second member before the runner-up (2026-12-04), and
# still when the search has one trial (`--trials 1`), which leaves no runner-up. On validation the
# runner-up does as well, and it trains nothing: 1 min 52 s of the recipe's 10 min 25 s became about
# 20 s (docs/measurements.md, "The runner-up instead of the repeat").
WITH_REPEAT = (
    STEPS[0],
    Step("repeat", "repeat", source="recommended"),  # one other seed: the recommended run's seed + 1
    Step("ensemble", "", members=("recommended", "repeat")),
)
# The chain of recipes started before 2026-12-04, which began with the quick preset and averaged it in
# too. On validation the quick run added nothing to the ensemble (docs/measurements.md, "The recipe
# in under 10 minutes"), and it took 2 of the recipe's 11 minutes. Such a recipe goes on as it began.
WITH_QUICK = (
    Step("search", "quick", preset="quick"),
    *WITH_REPEAT[:2],
    Step("ensemble", "", members=("quick", "recommended", "repeat")),
)
# The three-class recipe (`--task three_class`) answers the question two ways and averages them
# (`ensemble.BOTH_ANSWERS_RULE`): the three-class search and its runner-up, and the paper's two questions
# asked one after the other, each by the recommended preset and its runner-up, composed by the chain
# rule. On validation at three seeds it beat either way alone (docs/measurements.md, "Both answers
# averaged"); it trains three searches instead of one.
THREE_CLASS_STEPS = (
    *STEPS[:2],
    Step("search", "pneumonia", preset="recommended", task=tasks.PNEUMONIA.name),
    Step("runner-up", "pneumonia-runner-up", source="pneumonia"),
    Step("search", "kinds", preset="recommended", task=tasks.BACTERIAL_VS_VIRAL.name),
    Step("runner-up", "kinds-runner-up", source="kinds"),
    Step("ensemble", "", members=("recommended", "runner-up", "pneumonia", "pneumonia-runner-up", "kinds", "kinds-runner-up")),
)
CHAINS = (STEPS, THREE_CLASS_STEPS, WITH_REPEAT, WITH_QUICK)  # every chain a recipe folder may hold, today's first


def step_names(recipe: str, steps: tuple[Step, ...] = STEPS) -> list[str]:
    return [step.run_name(recipe) for step in steps]


def chain_for(overrides: dict) -> tuple[Step, ...]:
    """The chain a new recipe runs: `STEPS`, `THREE_CLASS_STEPS` for the three-class task, or `WITH_REPEAT`
    when its search has one trial (no runner-up)."""
    trials = overrides.get("trials", presets.preset(STEPS[0].preset).settings["trials"])
    if int(trials) < 2:
        return WITH_REPEAT
    return THREE_CLASS_STEPS if tasks.canonical_name(overrides.get("task")) == tasks.THREE_CLASS.name else STEPS


def steps_of(plan: dict) -> tuple[Step, ...]:
    """The chain a plan was started with: one of `CHAINS`."""
    for steps in CHAINS:
        if plan["steps"] == step_names(plan["recipe"], steps):
            return steps
    raise RunError(f"recipe {plan['recipe']!r} has steps this version does not know ({', '.join(plan['steps'])}): "
                   "start it again under another name")


def first_search(plan: dict) -> Step:
    """The plan's first step (a search, which starts the chain)."""
    return steps_of(plan)[0]


def make_plan(recipe: str, data_dir: str | os.PathLike, overrides: dict | None = None) -> dict:
    """The recipe's plan (what `recipe.json` holds, less the step number); nothing is written.

    Refuses a bad name (the longest step name must be a valid run name) and settings that are not
    the recipe's to change, naming them.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None and not _is_default(k, v)}
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise RunError(f"a recipe cannot change {', '.join(unknown)}: it may change {', '.join(OVERRIDABLE)}")
    steps = chain_for(overrides)
    names = step_names(recipe, steps)
    for name in names:
        if not artifacts.RUN_NAME.match(name):
            longest = max(len(step.suffix) for step in steps) + 1
            raise RunError(f"{recipe!r} cannot name a recipe: its runs ({name!r}) need letters, digits, '.', '_' or '-', "
                           f"at most {80 - longest} characters")
    return {"recipe": recipe, "data_dir": os.path.abspath(os.path.expanduser(str(data_dir))), "overrides": overrides,
            "steps": names}


def _is_default(key: str, value) -> bool:
    """A change that changes nothing (a default no preset sets): left out, so that the same recipe
    started from the page (which passes every field) and from the CLI (only what was typed) is one plan."""
    from dataclasses import MISSING, fields

    if any(key in presets.preset(step.preset).settings for step in STEPS if step.preset):
        return False
    default = next((f.default for f in fields(SearchSettings) if f.name == key), MISSING)
    return default is not MISSING and default == value


PLAN_KEYS = ("recipe", "data_dir", "overrides", "steps")  # a step's recipe.json adds its "step" number


def _plan_of(step_plan: dict) -> dict:
    """The recipe's plan from one step's `recipe.json` (without the step number)."""
    return {key: step_plan.get(key) for key in PLAN_KEYS}


def read_plan(folder: str | os.PathLike) -> dict | None:
    """The plan a run folder belongs to, or None for a run that is not a recipe's step."""
    plan = files.read_json(Path(folder) / PLAN_FILE)
    return plan if isinstance(plan, dict) and plan.get("recipe") and isinstance(plan.get("steps"), list) else None


def find_plan(artifacts_dir: str | os.PathLike, recipe: str) -> dict:
    """The plan of recipe `recipe`, read from the first of its steps that exists; `RunError` when none does."""
    for name in dict.fromkeys(name for steps in CHAINS for name in step_names(recipe, steps)):
        try:
            plan = read_plan(artifacts.run_dir(artifacts_dir, name))
        except RunError:
            break  # not a valid run name: no such recipe
        if plan and plan["recipe"] == recipe:
            return _plan_of(plan)
    raise RunError(f"no recipe named {recipe!r} in {artifacts_dir}: start one with --data DIR")


def plans(runs) -> list[dict]:
    """The distinct recipes that `runs` (artifacts.Run) are steps of, newest first."""
    found: dict[str, dict] = {}
    for run in runs:
        plan = read_plan(run.folder)
        if plan and plan["recipe"] not in found:
            found[plan["recipe"]] = _plan_of(plan)
    return list(found.values())


def step_number(plan: dict, name: str) -> int:
    """1-based position of run `name` in the plan's chain."""
    return plan["steps"].index(name) + 1


def search_settings(plan: dict, step: Step, artifacts_dir: str | os.PathLike):
    """The settings of a search step: its preset's, then the recipe's overrides."""
    values = {**presets.preset(step.preset).settings, **plan["overrides"], **({"task": step.task} if step.task else {})}
    return SearchSettings(data_dir=plan["data_dir"], artifacts_dir=str(artifacts_dir), name=step.run_name(plan["recipe"]), **values)


def step_plan(plan: dict, number: int) -> dict:
    """What step `number`'s `recipe.json` holds: the plan and the step's number."""
    return {**plan, "step": number}


def _write_plan(folder: Path, plan: dict, number: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    files.write_json(folder / PLAN_FILE, step_plan(plan, number))


def check_start(artifacts_dir: str | os.PathLike, plan: dict) -> None:
    """Refuse to start a recipe whose run names are taken by other runs, or that was started with another plan."""
    for name in plan["steps"]:
        folder = artifacts.run_dir(artifacts_dir, name)
        if not folder.exists():
            continue
        theirs = read_plan(folder)
        if theirs is None:
            raise RunError(f"a run named {name!r} already exists and is not a step of recipe {plan['recipe']!r}: "
                           "pick another name for the recipe")
        if _plan_of(theirs) != _plan_of(plan):
            raise RunError(f"recipe {plan['recipe']!r} was started with other settings ({theirs['data_dir']}, "
                           f"{theirs['overrides'] or 'no changes'}): continue it with `python -m core resume {name}`, "
                           "or pick another name")


def status(artifacts_dir: str | os.PathLike, plan: dict) -> list[dict]:
    """Each step: its run's name, what it is, and its state ("not started" before its folder exists)."""
    rows = []
    for step, name in zip(steps_of(plan), plan["steps"], strict=True):
        folder = artifacts.run_dir(artifacts_dir, name)
        state = "not started"
        if (folder / artifacts.SETTINGS).exists():
            state = artifacts.load_run(artifacts_dir, name).state
        rows.append({"step": name, "what": describe(step), "state": state})
    return rows


def describe(step: Step) -> str:
    if step.kind == "search":
        return f"{step.preset} preset" + (f", {tasks.task_for(step.task).title}" if step.task else "")
    if step.kind == "repeat":
        return f"{step.source}'s best hyperparameters, next seed"
    if step.kind == "runner-up":
        return f"{step.source}'s second-best trial, kept as a run (nothing trains)"
    return "equal-weight ensemble of " + ", ".join(step.members)


def is_complete(artifacts_dir: str | os.PathLike, plan: dict) -> bool:
    return (artifacts.run_dir(artifacts_dir, plan["recipe"]) / artifacts.METRICS).exists()


def running_steps(rows: list[dict]) -> list[str]:
    """The steps of a `status` table that are running now (their process then goes on with the chain)."""
    return [row["step"] for row in rows if row["state"] in artifacts.ACTIVE_STATES]


def is_active(artifacts_dir: str | os.PathLike, plan: dict) -> bool:
    return bool(running_steps(status(artifacts_dir, plan)))


def command(plan: dict) -> str:
    """The same recipe as one terminal command."""
    options = "".join(f" --{key.replace('_', '-')} {value}" for key, value in plan["overrides"].items())
    return f"python -m core recipe --data {plan['data_dir']} --name {plan['recipe']}{options}"


def step_estimates(plan: dict, n_images: int, n_train: float | None = None, n_val: float | None = None) -> dict[str, float]:
    """Estimated CPU seconds of each training step (`cost.estimate_search_s`), by run name: each search's
    estimate, for the repeat one trial of its source's settings on its source's cached augmented
    views, and for the runner-up none (its evaluation and stress test only). Steps after the first
    find the pixels, the un-augmented activations and the stress test's bottom pass cached at the
    same input size. The ensemble step takes a fraction of a second and is left out."""
    estimates, sizes = {}, set()
    steps = steps_of(plan)
    by_suffix = {step.suffix: step for step in steps}
    for step in steps:
        if step.kind == "ensemble":
            continue
        source = step if step.kind == "search" else by_suffix[step.source]
        s = search_settings(plan, source, ".")
        size = s.image_size or families.FAMILIES[s.family].default_image_size
        views = s.augment_views if s.augment != "off" else 0
        estimates[step.run_name(plan["recipe"])] = cost.estimate_search_s(
            s.family, s.mode, size, {"search": s.trials, "repeat": 1}.get(step.kind, 0), s.epochs, n_images, views=views,
            n_train=n_train, n_val=n_val, warm=size in sizes, views_cached=step.kind != "search")
        sizes.add(size)
    return estimates


def estimate_s(plan: dict, n_images: int, n_train: float | None = None, n_val: float | None = None) -> float:
    """Estimated CPU seconds for the whole chain on `n_images` images (`step_estimates`, summed)."""
    return sum(step_estimates(plan, n_images, n_train, n_val).values())


def reference_estimate_s() -> float:
    """`estimate_s` of the default recipe on the data `cost.MEASURED` was measured on."""
    data = cost.MEASURED_DATA
    return estimate_s(make_plan("recipe", "."), data["images"], data["train"], data["val"])


# --------------------------------------------------------------------------
# Running the chain
# --------------------------------------------------------------------------


def working_members(artifacts_dir: str | os.PathLike, members: list[str], log=print) -> list[str]:
    """The ensemble's members less those whose training collapsed (`ensemble.collapsed_members`),
    each left out with its reason in the log, as long as another member of its task stays (a
    three-class recipe composes questions, each needing one) and two members remain; otherwise all
    of them, the log saying which collapsed (a two-member ensemble cannot leave one out)."""
    runs = {m: artifacts.load_run(artifacts_dir, m) for m in members}
    collapsed = ensemble.collapsed_members([runs[m] for m in members])
    if not collapsed:
        return members
    task_of = {m: tasks.canonical_name(runs[m].task) for m in members}
    left_out = {m for m in collapsed if any(task_of[o] == task_of[m] and o not in collapsed for o in members)}
    kept = [m for m in members if m not in left_out]
    if len(kept) < 2:
        for reason in collapsed.values():
            log(f"kept in the ensemble, which needs two members: {reason}; compare the ensemble with "
                f"{', '.join(m for m in members if m not in collapsed) or 'its members'}")
        return members
    for name, reason in collapsed.items():
        log(f"left out of the ensemble: {reason}" if name in left_out else
            f"kept in the ensemble, where no other member answers its question ({task_of[name]}): {reason}")
    return kept


def run_recipe(artifacts_dir: str | os.PathLike, plan: dict, log=print) -> dict:
    """Run (or go on with) every step of `plan` in this process; returns the ensemble's metrics.

    Finished steps are skipped, a stopped or interrupted one resumes. A stop request (the step's
    Stop button, `python -m core stop STEP`, SIGTERM) ends the recipe after that step stops, with
    {"state": "stopped", "step": STEP}; running the recipe again continues it.
    """
    check_start(artifacts_dir, plan)
    if is_complete(artifacts_dir, plan):
        raise RunError(f"recipe {plan['recipe']!r} is already complete: its result is the ensemble run {plan['recipe']!r}")
    from core.search import loop  # it loads TensorFlow: refusals above, and pages that list recipes, do without it
    stopped = threading.Event()
    steps = steps_of(plan)
    for number, (step, name) in enumerate(zip(steps, plan["steps"], strict=True), 1):
        folder = artifacts.run_dir(artifacts_dir, name)
        if (folder / artifacts.METRICS).exists():
            continue
        # Between steps a SIGTERM is the recipe's; each step's search installs its own while it runs.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopped.set())
        if stopped.is_set():
            return {"state": "stopped", "step": name}
        log(f"recipe {plan['recipe']}: step {number} of {len(steps)}, {name} ({describe(step)})")
        if step.kind == "ensemble":
            _write_plan(folder, plan, number)
            members = [run_name(plan["recipe"], member) for member in step.members]
            members = working_members(artifacts_dir, members, log)
            run = ensemble.build_ensemble(artifacts_dir, members, name)
            log(f"recipe {plan['recipe']}: done, test AUC {run.metrics['test']['auc']:.4f}, "
                f"accuracy {run.metrics['test']['accuracy']:.4f} at the validation-chosen threshold {run.metrics['threshold']:.3f}")
            return run.metrics
        if step.kind == "repeat":
            if not (folder / artifacts.SETTINGS).exists():
                settings = repeat.plan_repeat(artifacts_dir, run_name(plan["recipe"], step.source), 1, name=name)
                repeat.create_repeat(artifacts_dir, settings, extra_json={PLAN_FILE: step_plan(plan, number)})
            result = repeat.run_repeat(artifacts_dir, name, log=log)
        elif step.kind == "runner-up":
            result = runner_up.keep_trial(artifacts_dir, run_name(plan["recipe"], step.source), name,
                                          extra_json={PLAN_FILE: step_plan(plan, number)}, log=log)
        else:
            _write_plan(folder, plan, number)
            settings = search_settings(plan, step, artifacts_dir)
            result = loop.run_search(settings, log=log, resume=(folder / artifacts.SETTINGS).exists())
        if result.get("state") == "stopped":
            return {"state": "stopped", "step": name}
    raise AssertionError("STEPS ends with the ensemble step")
