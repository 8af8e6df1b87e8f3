"""The command line: `python -m core tune|recipe|resume|stop|runs|ensemble|repeat|keep-trial|cross-fit|predict|adapt|explain|evaluate|import|quantize|export|data`.

Headless twin of the dashboard, for terminals, GPU boxes and clusters. Errors a user can fix
print one line (`error: ...`) and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from core import console
from core.data.tasks import TASKS

EXIT_USAGE = 2


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive whole number, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


# The choices of the parser, spelled out so that `--help` imports neither Keras nor TensorFlow
# (tests/test_console.py checks they match families.MODES, settings.TUNERS, ...). The families come
# from the registry itself: core.models loads Keras only when a model is built.
MODES = ("frozen", "finetune")
TUNERS = ("random", "bayesian", "hyperband")
MOBILENET_VERSIONS = ("v1", "v2", "v3", "v3_small")
EXPLANATION_METHODS = ("gradcam", "gradcam++", "occlusion", "smoothgrad", "rollout")  # core.inference.methods.METHODS
IMPORT_SCALINGS = ("0-255", "0-1", "-1-1", "caffe", "torch")  # core.models.imported.SCALINGS
SEARCH_ENGINES = ("auto", "tflite", "keras")  # core.models.engine.BUILT_ENGINES
ENGINES = (*SEARCH_ENGINES, "int8")  # core.models.engine.ENGINES: int8 reads the model `quantize` made
ENGINE_HELP = ("auto (default: TF Lite fp32, else Keras), tflite, keras, or int8: the run's int8 model, made by "
               "`python -m core quantize RUN` (refused when it has none)")
SITE_RULES = ("youden", "sensitivity")  # core.evidence.site_adaptation.RULES
SITE_CALIBRATIONS = ("none", "platt", "temperature")  # core.evidence.site_adaptation.CALIBRATIONS


def _default_artifacts_dir() -> str:
    return os.environ.get("CXR_ARTIFACTS_DIR", "artifacts")  # as core.runs.artifacts.default_artifacts_dir


def build_parser() -> argparse.ArgumentParser:
    from core.data import augmentation
    from core.models import families
    from core.search import presets

    parser = argparse.ArgumentParser(prog="python -m core", description="Compare pneumonia classifiers on chest X-rays.")
    commands = parser.add_subparsers(dest="command", required=True)
    artifacts_default = _default_artifacts_dir()

    # Settings that a recipe may change too (core.workflows.recipe.OVERRIDABLE): one definition for both commands.
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--task", choices=list(TASKS),
                        help="what to predict: pneumonia (normal vs pneumonia, default), bacterial_vs_viral (pneumonia "
                        "images only, viral positive) or three_class (normal / bacterial / viral: pneumonia or not at the threshold, then the kind)")
    shared.add_argument("--trials", type=_positive_int, help="default: 10")
    shared.add_argument("--epochs", type=_positive_int, help="default: 5")
    shared.add_argument("--image-size", type=_positive_int, help="pixels (default: the family's)")
    shared.add_argument("--weights", help="imagenet (default), none, or a path to a weights file")
    shared.add_argument("--max-per-class", type=_positive_int, help="cap images per class and split (quick runs)")
    shared.add_argument("--batch-size", type=_positive_int, help="default: 32")
    shared.add_argument("--seed", type=int, help="fixes the patient split, the image cap and the search's draws (default: 42); "
                        "runs of different seeds are split differently and cannot be ensembled: `repeat` changes only the training seed")
    shared.add_argument("--augment-views", type=_positive_int,
                        help="augmented copies of each training image cached for cut-point fine-tuning (default 3)")

    tune = commands.add_parser("tune", help="run a Keras Tuner search and save the run", parents=[shared])
    tune.add_argument("--data", required=True, help="folder with train/ (val/, test/) and NORMAL/ PNEUMONIA/ inside")
    # Options left out keep the preset's value, else the setting's default (settings.SearchSettings).
    tune.add_argument("--preset", choices=sorted(presets.PRESETS),
                      help="start from named settings (" + "; ".join(f"{p.name}: {p.title}" for p in presets.PRESETS.values()) + ")")
    tune.add_argument("--family", choices=sorted(families.FAMILIES), help="required unless a --preset names it")
    tune.add_argument("--tuner", choices=TUNERS, help="default: random")
    tune.add_argument("--mode", choices=MODES, help="default: the family's (frozen; finetune for hybrid)")
    tune.add_argument("--mobilenet-version", choices=MOBILENET_VERSIONS, help="default: v2")
    tune.add_argument("--stem", choices=sorted(families.FAMILIES["hybrid"].versions),
                      help="hybrid: the ImageNet CNN whose activations at its cut feed the encoder (default: v2, MobileNetV2)")
    tune.add_argument("--alpha", type=float, help="MobileNet width multiplier (default: 1.0)")
    tune.add_argument("--no-feature-cache", action="store_true", help="frozen mode: recompute the backbone every step")
    tune.add_argument("--engine", choices=SEARCH_ENGINES)
    tune.add_argument("--cut", default=None,
                      help="finetune mode: train the backbone's layers above this layer (default: the architecture's)")
    tune.add_argument("--no-stress-test", action="store_true",
                      help="skip the stress test on validation (framing, sharpness, contrast, acquisition) after the search; "
                      "the threshold is then plain Youden's J on validation, without the stressed copies")
    tune.add_argument("--no-activation-cache", action="store_true",
                      help="finetune mode: run the whole backbone every step instead of caching below the cut (slow)")
    tune.add_argument("--augment", choices=(*augmentation.AUGMENTATIONS, augmentation.SEARCH),
                      help="training augmentation preset (finetune and custom CNN; default off); 'search' makes it a hyperparameter")
    tune.add_argument("--tta", type=_positive_int,
                      help=f"test-time augmentation: average over this many fixed views (1 = off, at most {augmentation.TTA_MAX_VIEWS})")
    tune.add_argument("--space", metavar="FILE.json",
                      help='edits of the search space: a JSON object such as {"dropout": 0.2, "dense_units": [64, 128], '
                      '"learning_rate": {"min": 0.0001, "max": 0.001}} (fix, keep choices, narrow a range)')
    tune.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE|MIN:MAX|A,B,C",
                      help="edit one hyperparameter: fix it, narrow its range or keep some of its choices; repeat for more "
                      "(overrides --space for that name)")
    tune.add_argument("--patience", type=_non_negative_int,
                      help="early stopping: end a trial after this many epochs without a better validation AUC (default 0: off)")
    tune.add_argument("--name", default=None, help="run name (default: family-mode-date)")
    tune.add_argument("--artifacts", default=artifacts_default)
    tune.add_argument("--distributed", choices=("chief",), default=None,
                      help="serve this search's trials to workers (`python -m core worker`)")
    tune.add_argument("--oracle", default=None, help="HOST:PORT the chief listens on (with --distributed)")

    recipe = commands.add_parser(
        "recipe", parents=[shared],
        description="The recommended recipe (core.workflows.recipe): the recommended preset, its second-best trial kept as "
        "a run of its own (the runner-up; nothing trains), and the equal-weight ensemble of the search's best and the "
        "runner-up. The setting options change the search; left out, each keeps the preset's value. With --trials 1 "
        "there is no runner-up: the best is trained again with the next seed (a repeat) instead.",
        help="the recommended recipe: the recommended preset, its runner-up trial, their ensemble "
        "(one run each; the ensemble NAME is the result); run it again to continue a stopped one")
    recipe.add_argument("--name", required=True, help="the recipe's name: its runs are NAME-recommended, NAME-runner-up "
                        "and the ensemble NAME")
    recipe.add_argument("--data", default=None,
                        help="the data folder (as for tune); leave it out to continue recipe NAME with its own settings")
    recipe.add_argument("--artifacts", default=artifacts_default)

    worker = commands.add_parser("worker", help="train trials for a distributed search's chief")
    worker.add_argument("run", help="the run name the chief was started with")
    worker.add_argument("--oracle", required=True, help="HOST:PORT of the chief")
    worker.add_argument("--id", default=None, help="a name for this worker (default: its process id)")
    worker.add_argument("--artifacts", default=artifacts_default, help="the artifacts folder the chief uses (shared)")

    resume = commands.add_parser("resume", help="continue a stopped or interrupted search")
    resume.add_argument("run")
    resume.add_argument("--artifacts", default=artifacts_default)

    stop = commands.add_parser("stop", help="ask a running search to stop (completed trials are kept)")
    stop.add_argument("run", help="a running search, or a recipe's name (its running step stops, which ends the recipe)")
    stop.add_argument("--artifacts", default=artifacts_default)

    runs = commands.add_parser("runs", help="table of saved runs and their metrics")
    runs.add_argument("--artifacts", default=artifacts_default)

    ensemble = commands.add_parser("ensemble", help="combine finished runs into a new run that averages their probabilities")
    ensemble.add_argument("members", nargs="+", metavar="RUN", help="two or more finished runs, split the same way; pneumonia and bacterial_vs_viral runs together compose a three_class run, and three_class runs beside them average their answer in")
    ensemble.add_argument("--name", required=True, help="the new run's name")
    ensemble.add_argument("--weighted", action="store_true",
                          help="choose the weights on validation (best validation AUC on a grid); default: equal weights")
    ensemble.add_argument("--artifacts", default=artifacts_default)

    repeat = commands.add_parser("repeat", help="train a finished run's best hyperparameters again with other seeds, as one new run")
    repeat.add_argument("run", help="a finished search (not an ensemble)")
    repeat.add_argument("--seeds", type=int, required=True,
                        help="how many other seeds (the run's seed + 1, + 2, ...); same split, only the training seed changes")
    repeat.add_argument("--name", default=None, help="the new run's name (default: RUN-xNseeds)")
    repeat.add_argument("--artifacts", default=artifacts_default)

    keep = commands.add_parser("keep-trial", help="keep another trial of a finished search as a run of its own (nothing trains)")
    keep.add_argument("run", help="a finished search with two trials or more")
    keep.add_argument("--rank", type=int, default=2,
                      help="which trial, by validation AUC: 2 (default) is the runner-up; 1 is the search's own model")
    keep.add_argument("--name", default=None, help="the new run's name (default: RUN-trialK)")
    keep.add_argument("--artifacts", default=artifacts_default)

    fit = commands.add_parser(
        "cross-fit", help="choose a run's threshold on out-of-fold predictions over K patient-grouped folds, saved as an operating point",
        description="Train the run's models again (an ensemble's members each) on K-1 of K patient-grouped folds of its training and "
        "validation images, score each held-out fold as it is and under the stress test's changes, and choose the threshold on all "
        "of them by the run's own rule: a threshold that does not depend on which patients the seed drew into validation. Saved "
        "as a named operating point of the run (its model, threshold and test predictions stay as they were); Compare and "
        "`predict --operating-point NAME` use it. It trains K times per model; Ctrl-C stops it after keeping the folds saved, "
        "and the same command goes on.",
    )
    fit.add_argument("run", help="a finished two-class search run, its kept runner-up, or an ensemble of them")
    fit.add_argument("--folds", type=int, default=5, help="how many patient-grouped folds (2-10; default 5)")
    fit.add_argument("--point-name", default="out-of-fold", help="the operating point's name (default: out-of-fold)")
    fit.add_argument("--replace", action="store_true", help="replace an operating point of the same name")
    fit.add_argument("--artifacts", default=artifacts_default)

    predict = commands.add_parser("predict", help="score images with a saved run")
    predict.add_argument("--run", required=True)
    predict.add_argument("--artifacts", default=artifacts_default)
    predict.add_argument("--csv", default=None, help="also write the table to this CSV file")
    predict.add_argument("--engine", default="auto", choices=ENGINES, help=ENGINE_HELP)
    predict.add_argument("--operating-point", default=None, metavar="NAME",
                         help="decide at the run's operating point NAME, chosen on a site's images (`adapt`); default: its own threshold")
    predict.add_argument("images", nargs="+", help="image files or folders")

    adapt = commands.add_parser(
        "adapt", help="re-choose a run's threshold on a few labelled images of your site, saved as a named operating point",
        description="Score a small labelled folder of your site's X-rays (NORMAL/ and PNEUMONIA/, 20-100 images) with a run, "
        "choose its threshold there and save it as a named operating point of the run (not a new training): its sensitivity "
        "and specificity on the site with 95 %% intervals, and how they vary with the number of site images. "
        "`predict --operating-point NAME`, Compare and Predict use it.",
    )
    adapt.add_argument("run")
    adapt.add_argument("--site", required=True, help="the folder of labelled site images: NORMAL/ and PNEUMONIA/ inside")
    adapt.add_argument("--name", required=True, help="the operating point's name")
    adapt.add_argument("--rule", choices=SITE_RULES, default=SITE_RULES[0],
                       help="youden (default): Youden's J on the site images; sensitivity: keep the run's validation "
                       "sensitivity at the site, with the best specificity")
    adapt.add_argument("--calibrate", choices=SITE_CALIBRATIONS, default="none",
                       help="also recalibrate the probabilities on the site images: platt or temperature (decisions do not change)")
    adapt.add_argument("--replace", action="store_true", help="replace an operating point of the same name")
    adapt.add_argument("--engine", default="auto", choices=("auto", "tflite", "keras"))
    adapt.add_argument("--artifacts", default=artifacts_default)

    explain = commands.add_parser("explain", help="where a saved run looks: heatmap overlays, region masks and boxes")
    explain.add_argument("run")
    explain.add_argument("images", nargs="+", help="image files or folders")
    explain.add_argument("--method", default="gradcam", choices=EXPLANATION_METHODS,
                         help="gradcam (default), gradcam++, occlusion (any model), smoothgrad, rollout (transformers)")
    explain.add_argument("--out", required=True, help="the folder to write overlays, masks, boxes and explanations.csv to")
    explain.add_argument("--share", type=float, default=0.5, help="the share of the heat the region holds (default 0.5)")
    explain.add_argument("--class", dest="class_name", default=None, help="the class to explain (a multi-class run; default: its predicted class)")
    explain.add_argument("--artifacts", default=artifacts_default)

    imports = commands.add_parser(
        "import", help="score a model trained elsewhere (.keras, .h5, SavedModel folder, .tflite, .onnx) as a run",
        description="Import a model trained elsewhere as an ordinary run: the data split by a search's rules and seed, "
        "validation and test predictions, the threshold chosen on validation, the stress test. Give only what the "
        "model file cannot say: always --scaling; --input-size, --channels, --layout when the file leaves them dynamic.",
    )
    imports.add_argument("model", help="the model file, or a SavedModel folder")
    imports.add_argument("--name", required=True, help="the run's name")
    imports.add_argument("--data", required=True, help="the data folder (as for tune)")
    imports.add_argument("--scaling", required=True, choices=IMPORT_SCALINGS,
                         help="how the model expects pixels: 0-255 (scales inside), 0-1, -1-1, caffe (BGR minus ImageNet mean), "
                         "torch (ImageNet mean/std)")
    imports.add_argument("--task", choices=list(TASKS), default="pneumonia", help="what the model predicts (default: pneumonia)")
    imports.add_argument("--input-size", dest="image_size", type=_positive_int, help="the side in pixels, when the file does not say")
    imports.add_argument("--channels", type=int, choices=(1, 3), help="1 (grey) or 3, when the file does not say")
    imports.add_argument("--layout", choices=("NHWC", "NCHW"), help="channels last or first, when the file does not say")
    imports.add_argument("--positive-output", dest="positive", type=_non_negative_int,
                         help="the output column of the positive class (default: the only one, or 1 of two)")
    imports.add_argument("--logits", action="store_true", help="the outputs are logits: apply sigmoid or softmax")
    imports.add_argument("--seed", type=int, default=42, help="the split's seed: a searched run's, to pair with it (default 42)")
    imports.add_argument("--max-per-class", type=_positive_int, help="cap images per class and split, as the runs to pair with")
    imports.add_argument("--no-stress-test", dest="stress_test", action="store_false", help="skip the stress test on validation")
    imports.add_argument("--artifacts", default=artifacts_default)

    export = commands.add_parser("export", help="one finished run as a zip: model, threshold, MODEL_CARD.md")
    export.add_argument("run")
    export.add_argument("--out", required=True, help="the zip file to write")
    export.add_argument("--artifacts", default=artifacts_default)

    evaluate = commands.add_parser("evaluate", help="metrics of a saved run on a data folder")
    evaluate.add_argument("--run", required=True)
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--split", default="test", choices=("train", "val", "test"))
    evaluate.add_argument("--artifacts", default=artifacts_default)
    evaluate.add_argument("--engine", default="auto", choices=ENGINES, help=ENGINE_HELP)

    quantize = commands.add_parser(
        "quantize", help="an int8 model of a finished run beside its fp32 one, with how the two agree",
        description="Full-integer post-training quantisation of a finished run (core.inference.quantization): calibrated on a "
        "seeded sample of its training images, then measured against fp32 on its validation and test images. The run keeps "
        "int8 only when the validation AUC moves by at most 0.003; either way int8.json records the figures.",
    )
    quantize.add_argument("run", help="a finished run with its own model (for an ensemble, quantise each member)")
    quantize.add_argument("--images", type=_positive_int, default=None, help="calibration images (default 200)")
    quantize.add_argument("--seed", type=int, default=None, help="draws the calibration images (default: the run's seed)")
    quantize.add_argument("--artifacts", default=artifacts_default)

    look = commands.add_parser(
        "where-it-looks", help="measure where runs look: each explanation method's faithfulness, border heat and a synthetic-opacity check",
    )
    look.add_argument("runs", nargs="+", help="run names (an ensemble after its members reuses their loaded models)")
    look.add_argument("--artifacts", default=artifacts_default)
    look.add_argument("--methods", default=None, help="comma-separated explanation methods (default: every one that applies)")
    look.add_argument("--per-class", type=int, default=None, help="test images sampled per class (default 16)")
    look.add_argument("--synthetic", type=int, default=None, help="healthy validation images given an opacity (default 16; 0 skips the check)")
    look.add_argument("--seed", type=int, default=0, help="draws the sampled images and the opacities")
    look.add_argument("--split", default="test", choices=("test", "val"),
                      help="where the sampled images come from: test (what Compare and the report show) or val (to choose between runs)")

    summary = commands.add_parser("data", help="summarise a data folder (images, patients, unreadable files)")
    summary.add_argument("--data", required=True)
    return parser


# `tune` options that map one to one onto SearchSettings fields.
_SETTING_OPTIONS = (
    "family", "task", "tuner", "trials", "epochs", "image_size", "weights", "mode", "max_per_class", "batch_size", "seed",
    "mobilenet_version", "alpha", "engine", "cut", "augment", "augment_views", "tta", "patience", "name",
)


def tune_settings(args):
    """The search the `tune` options ask for: the preset's settings, then the options given."""
    from core.models import families
    from core.search import presets
    from core.search.settings import SearchSettings, SettingsError

    values = dict(presets.preset(args.preset).settings) if args.preset else {}
    values.update({key: getattr(args, key) for key in _SETTING_OPTIONS if getattr(args, key) is not None})
    if "family" not in values:
        raise SettingsError("pass --family (or a --preset that names one)")
    values.setdefault("mode", families.FAMILIES[values["family"]].default_mode)  # frozen, or finetune for the hybrid
    if getattr(args, "stem", None):
        if not families.FAMILIES[values["family"]].hybrid:
            raise SettingsError(f"--stem chooses a hybrid's CNN; {values['family']} has none: leave it out (--mobilenet-version for MobileNet)")
        if args.mobilenet_version and args.mobilenet_version != args.stem:
            raise SettingsError("pass --stem or --mobilenet-version, not both")
        values["mobilenet_version"] = args.stem
    if args.no_feature_cache:
        values["feature_cache"] = False
    if args.no_activation_cache:
        values["activation_cache"] = False
    if args.no_stress_test:
        values["stress_test"] = False
    if args.space or args.hp:
        values["space"] = _space_edits(args)
    return SearchSettings(data_dir=args.data, artifacts_dir=args.artifacts, **values)


def _space_edits(args) -> dict:
    """The search space edits of `--space FILE.json`, then of each `--hp` (checked when the settings resolve)."""
    from core.models import search_space

    edits = search_space.read_edits_file(args.space) if args.space else {}
    return {**edits, **search_space.parse_hp_options(args.hp)}


def _search(settings, resume: bool = False, role: str | None = None) -> dict:
    """Run a search, its log lines printed above a progress bar when stderr is a terminal."""
    from core.runs import artifacts

    settings = settings.resolved()  # bad settings are refused before TensorFlow loads
    from core.search import loop

    bar = console.ProgressBar()
    bar.watch(artifacts.run_dir(settings.artifacts_dir, settings.name) / artifacts.PROGRESS)
    try:
        return loop.run_search(settings, log=bar.echo, resume=resume, role=role)
    finally:
        bar.close()


def _tune(args) -> int:
    from core.search.settings import SettingsError

    settings = tune_settings(args)
    if args.distributed:
        if not args.oracle:
            raise SettingsError("--distributed chief needs --oracle HOST:PORT to listen on")
        from core.search import distributed  # it loads TensorFlow

        distributed.configure_distributed("chief", args.oracle)
    return _finish(_search(settings, role=args.distributed))


def _worker(args) -> int:
    from core.search import distributed

    worker_id = args.id or str(os.getpid())
    distributed.configure_distributed("worker", args.oracle, worker_id)
    result = distributed.run_worker(args.artifacts, args.run, worker_id)
    print(f"worker {worker_id}: trials {', '.join(result.get('trials_run', [])) or 'none'}")
    return 0


def _resume(args) -> int:
    from core.runs import artifacts
    from core.search.settings import SearchSettings
    from core.workflows import importing, recipe, repeat

    run = artifacts.load_run(args.artifacts, args.run)
    if plan := recipe.read_plan(run.folder):  # a recipe's step: go on with the whole chain
        return _recipe_finish(recipe.run_recipe(args.artifacts, plan))
    if run.is_ensemble:
        raise artifacts.RunError(f"run {run.name!r} is an ensemble: it has no search to resume")
    if run.is_repeat:
        return _repeat_finish(repeat.run_repeat(args.artifacts, run.name))
    if run.is_imported:
        return _finish(importing.run_import(args.artifacts, run.name))
    settings = SearchSettings.from_dict({**run.settings, "artifacts_dir": args.artifacts})
    return _finish(_search(settings, resume=True))


def _finish(result: dict) -> int:
    if result.get("state") == "stopped":
        return 0
    test = result["test"]
    print(
        f"test: AUC {test['auc']:.4f}  accuracy {test['accuracy']:.4f}  sensitivity {test['sensitivity']:.4f}  "
        f"specificity {test['specificity']:.4f}  (threshold {result['threshold']:.3f}, chosen on validation)"
    )
    if result.get("multiclass"):
        from core.inference import evaluation

        print(f"test, {evaluation.multiclass_summary(result).removeprefix('; ')}")
    return 0


def _stop(args) -> int:
    from core import jobs

    print(jobs.stop_search(args.artifacts, args.run))
    return 0


def _runs(args) -> int:
    from core.runs import artifacts

    table = artifacts.runs_table(artifacts.list_runs(args.artifacts))
    if table.empty:
        print(f"no runs in {args.artifacts}")
        return 0
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def _ensemble(args) -> int:
    from core.inference import ensemble

    run = ensemble.build_ensemble(args.artifacts, args.members, args.name, weighted=args.weighted)
    print(f"ensemble {run.name}: weights {ensemble.weights_text(run)} ({run.settings['weight_rule']})")
    return _finish(run.metrics)


def _recipe(args) -> int:
    from core.search.settings import SettingsError
    from core.workflows import recipe

    overrides = {key: getattr(args, key) for key in recipe.OVERRIDABLE}
    if args.data is None:
        if any(v is not None for v in overrides.values()):
            raise SettingsError("pass --data with the settings of a new recipe; to continue one, pass only its --name")
        plan = recipe.find_plan(args.artifacts, args.name)
    else:
        plan = recipe.make_plan(args.name, args.data, overrides)
    print(f"recipe {plan['recipe']}: {' -> '.join(plan['steps'])}")
    return _recipe_finish(recipe.run_recipe(args.artifacts, plan))


def _recipe_finish(result: dict) -> int:
    if result.get("state") == "stopped":
        print(f"stopped at {result['step']}: continue with `python -m core resume {result['step']}`")
        return 0
    return _finish(result)


def _repeat(args) -> int:
    from core.workflows import repeat

    settings = repeat.plan_repeat(args.artifacts, args.run, args.seeds, args.name)
    repeat.create_repeat(args.artifacts, settings)
    print(f"repeat {settings['name']}: {args.run}'s best hyperparameters with seeds "
          f"{', '.join(map(str, settings[repeat.REPEAT]['seeds']))}")
    return _repeat_finish(repeat.run_repeat(args.artifacts, settings["name"]))


def _keep_trial(args) -> int:
    from core.workflows import runner_up

    name = args.name or f"{args.run}-trial{args.rank}"
    run = runner_up.plan(args.artifacts, args.run, name, args.rank)  # refusals before anything is made
    print(f"{name}: trial {run['kept_trial']['trial_id']} of {args.run}, its number {args.rank} by validation AUC")
    return _finish(runner_up.keep_trial(args.artifacts, args.run, name, args.rank))


def _cross_fit(args) -> int:
    from core.reporting import wording
    from core.runs.progress import SearchStopped
    from core.workflows import cross_fit

    try:
        record = cross_fit.cross_fit(args.artifacts, args.run, args.folds, args.point_name, args.replace)
    except SearchStopped:
        print("stopped: the folds saved so far are kept; run the same command to go on", file=sys.stderr)
        return 130
    print(wording.site_point_summary(record))
    print(f"saved: `python -m core predict --run {record['run']} --operating-point {record['name']} IMAGES` decides at it")
    return 0


def _repeat_finish(result: dict) -> int:
    """The spread over the seeds, then the first seed's test metrics (the run's own)."""
    if result.get("state") == "stopped":
        return 0
    import pandas as pd

    spread = pd.DataFrame(result["repeat"]["spread"]).drop(columns=["mean ± SD", "range"])
    print(f"over seeds {', '.join(map(str, result['repeat']['seeds']))} (each at its validation-chosen threshold):")
    print(spread.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"main predictions: {result['repeat']['main']}")
    return _finish(result)


def _predict(args) -> int:
    import pandas as pd

    from core import files
    from core.inference import evaluation, ood, run_kinds
    from core.runs import artifacts
    from core.workflows import site

    run = artifacts.load_run(args.artifacts, args.run)
    point = run.operating_point(args.operating_point) if args.operating_point else None
    paths = evaluation.expand_image_paths(args.images)
    if not paths:
        raise FileNotFoundError("no .jpeg/.jpg/.png images in the given paths")
    table = run_kinds.predict_files(run, paths, engine=args.engine, unusual=True)
    if point is not None:
        table = site.apply_point(table, run, point)
    if args.csv:
        files.write_csv(args.csv, table)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    failed = int((table["error"] != "").sum())
    if failed:
        print(f"{failed} of {len(table)} files could not be read (see the error column)", file=sys.stderr)
    ood_label = ood.NOT_ASSESSED
    flagged = sum(1 for value in table["unusual"] if value is not pd.NA and bool(value))  # NA: unreadable
    if flagged:
        print(f"{flagged} of {len(table)} images are not like the run's training X-rays (see unusual_reason): "
              f"labelled {ood_label!r}, their probabilities mean little", file=sys.stderr)
    return 1 if failed == len(table) else 0


def _adapt(args) -> int:
    import pandas as pd

    from core.evidence import site_adaptation
    from core.reporting import wording
    from core.runs import artifacts
    from core.workflows import site

    run = artifacts.load_run(args.artifacts, args.run)
    record = site.adapt_run(run, args.site, args.name, rule=args.rule, calibration=args.calibrate, engine=args.engine,
                            replace=args.replace)
    print(wording.site_point_summary(record))
    curve = pd.DataFrame(record["curve"])
    if curve.empty:
        print(f"too few site images for the curve of how many to label: it starts at {site_adaptation.CURVE_STEP}")
    else:
        print(f"how the adapted point varies with the number of site images (median, 5-95 % of {record['curve_draws']} draws "
              "with replacement, measured on all the site images):")
        print(curve.drop(columns=["draws", "skipped"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"saved: `python -m core predict --run {run.name} --operating-point {record['name']} IMAGES` decides at it")
    return 0


def _explain(args) -> int:
    from pathlib import Path

    import pandas as pd

    from core import files
    from core.data import tasks
    from core.inference import evaluation, explanation, regions, run_kinds
    from core.runs import artifacts

    if not 0.0 < args.share <= 1.0:
        raise artifacts.RunError(f"--share must be in (0, 1], got {args.share}")
    run = artifacts.load_run(args.artifacts, args.run)
    task = tasks.task_for(run.task)
    if args.class_name is not None and (task.is_binary or args.class_name not in task.classes):
        choices = "none: a two-class run explains its positive class" if task.is_binary else ", ".join(task.classes)
        raise artifacts.RunError(f"run {run.name!r} has no class {args.class_name!r} to explain (choices: {choices})")
    paths = evaluation.expand_image_paths(args.images)
    if not paths:
        raise FileNotFoundError("no .jpeg/.jpg/.png images in the given paths")
    models = run_kinds.load_models(run)
    if problem := run_kinds.method_problem(run, args.method, models):
        raise artifacts.RunError(problem)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scores = run_kinds.predict_files(run, paths, models, engine="keras")  # the model the heatmaps read
    rows, stems = [], set()
    for path, score in zip(paths, scores.itertuples(index=False), strict=True):
        stem = Path(path).stem
        while stem in stems:  # the same name in two folders: both kept
            stem += "-2"
        stems.add(stem)
        row = {"image": path, "run": run.name, "method": args.method, "probability": score.probability, "label": score.label,
               "box": "", "heat_share": None, "error": score.error}
        if not score.error:
            try:
                heatmap, original = run_kinds.heatmap(run, path, models, args.class_name, args.method)
            except (OSError, ValueError) as error:  # an image the method cannot read: reported, the others go on
                row["error"] = f"cannot explain image: {error}"
            else:
                region = regions.region_of(heatmap, original.width, original.height, args.share)
                saved = regions.region_files(region, explanation.overlay(original, heatmap), run=run.name, method=args.method,
                                             image=path, probability=score.probability, label=score.label, class_name=args.class_name)
                for suffix, content in saved.items():
                    files.write_bytes(out / f"{stem}.{suffix}", content)
                row.update(box=",".join(map(str, region.box)) if region.box else "", heat_share=round(region.heat_share, 6))
        rows.append(row)
    table = pd.DataFrame(rows, columns=["image", "run", "method", "probability", "label", "box", "heat_share", "error"])
    files.write_csv(out / "explanations.csv", table)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    failed = int((table["error"] != "").sum())
    if failed:
        print(f"{failed} of {len(table)} images could not be explained (see the error column)", file=sys.stderr)
    return 1 if failed == len(table) else 0


def _evaluate(args) -> int:
    from core.inference import run_kinds
    from core.runs import artifacts

    run = artifacts.load_run(args.artifacts, args.run)
    metrics, _ = run_kinds.evaluate_on_folder(run, args.data, args.split, engine=args.engine)
    if metrics["patients_seen_in_training"]:
        print(f"warning: {metrics['patients_seen_in_training']} patients of this folder were in the run's training data")
    for key in ("n", "auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "threshold", "unreadable"):
        value = metrics[key]
        print(f"{key:>12}: {value:.4f}" if isinstance(value, float) else f"{key:>12}: {value}")
    return 0


def _import(args) -> int:
    from core.workflows import importing

    options = importing.ImportOptions(
        model=args.model, data_dir=args.data, artifacts_dir=args.artifacts,
        **{key: getattr(args, key) for key in importing.option_names() if hasattr(args, key) and key != "model"},
    )
    result = importing.import_model(options)
    for warning in result.get("warnings") or []:
        print(f"warning: {warning}", file=sys.stderr)
    return _finish(result)


def _quantize(args) -> int:
    from core.inference import quantization
    from core.runs import artifacts

    run = artifacts.load_run(args.artifacts, args.run)
    record = quantization.quantize_run(run, n_images=args.images or quantization.CALIBRATION_IMAGES, seed=args.seed)
    print(quantization.summary(record))
    return 0


def _export(args) -> int:
    from core.reporting import export

    path = export.export_run(args.artifacts, args.run, args.out)
    print(f"exported {args.run} to {path}")
    return 0


def _where_it_looks(args) -> int:
    from core.runs import artifacts
    from core.workflows import localisation

    runs = [artifacts.load_run(args.artifacts, name) for name in args.runs]
    options = {"seed": args.seed, "split": args.split}
    if args.methods:
        options["method_names"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.per_class is not None:
        options["per_class"] = args.per_class
    if args.synthetic is not None:
        options["synthetic"] = args.synthetic
    from core.runs.progress import SearchStopped

    try:
        problems = localisation.measure_runs(runs, echo=print, **options)
    except SearchStopped:
        print("stopped: the evidence saved before is kept", file=sys.stderr)
        return 130
    for name, problem in problems.items():
        print(f"{name}: {problem or 'saved'}")
    return 1 if all(problems.values()) else 0


def _data(args) -> int:
    import json

    from core.data import folders, splitting

    dataset = folders.scan_folder(args.data)
    print(json.dumps(splitting.summarize(dataset), indent=2))
    return 0


HANDLERS = {"worker": _worker, "tune": _tune, "resume": _resume, "recipe": _recipe, "repeat": _repeat, "keep-trial": _keep_trial, "cross-fit": _cross_fit, "stop": _stop, "runs": _runs,
            "ensemble": _ensemble, "predict": _predict, "adapt": _adapt, "explain": _explain, "where-it-looks": _where_it_looks, "evaluate": _evaluate,
            "import": _import, "quantize": _quantize, "export": _export, "data": _data}


def main(argv: list[str] | None = None) -> int:
    console.quiet_tensorflow()  # TensorFlow's start-up chatter hides our messages
    args = build_parser().parse_args(argv)
    from core.data import folders
    from core.evidence.site_adaptation import SiteError
    from core.models import backbones, search_space
    from core.runs import artifacts
    from core.search.settings import SettingsError

    user_errors = (folders.DataError, backbones.WeightsError, artifacts.RunError, SettingsError, search_space.SpaceError,
                   FileNotFoundError, SiteError)
    try:
        return HANDLERS[args.command](args)
    except user_errors as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
