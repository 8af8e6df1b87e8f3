"""Model cards: one finished run as one zip (model, threshold, MODEL_CARD.md).

The zip holds `model.keras`, `model.tflite` (converted on first use, as the engine does; left out
with a note if conversion fails), `threshold.json` and `MODEL_CARD.md`; and, when the run keeps an
int8 model (`python -m core quantize`, `core.inference.quantization`), `model.int8.onnx` and
`int8.json`, its measured agreement with fp32, which the card shows too. The decision rule in
`threshold.json` and the card's usage snippet follow the run's task (`core.data.tasks`): its classes,
its positive class (viral for bacterial vs viral), and for three classes the two-step rule (pneumonia or
not at the threshold, then the likelier kind). The card's metrics and
intervals come from `core.evidence.run_evidence` (patient-level bootstrap for AUC, Wilson with the
design effect for the rates) and its validation-against-test table from `core.evidence.shift`, so they are
the numbers the Compare page shows. Whether a kind of run is exported is its kind's to say
(`core.inference.run_kinds`): an ensemble is refused, it has no model of its own (export its members
one by one; its weights are in its settings.json).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

from core import files
from core.data import tasks
from core.evidence import run_evidence, shift
from core.inference import evaluation, quantization, run_kinds
from core.models import families
from core.reporting import wording
from core.runs import artifacts
from core.runs.artifacts import Run, RunError

CARD = "MODEL_CARD.md"
THRESHOLD = "threshold.json"


def export_problem(run: Run) -> str:
    """Why `run` cannot be exported ("" when it can): its kind is not (an ensemble has no model of
    its own, `core.inference.run_kinds`), or it is not finished."""
    if problem := run_kinds.export_problem(run):
        return problem
    if run.state != "completed" or not run.metrics or not run.model_path.exists() or not (run.folder / artifacts.PREDICTIONS).exists():
        return f"run {run.name!r} is not finished (state: {run.state}): only completed runs with a saved model are exported"
    return ""


def exportable(run: Run) -> Run:
    """The run, if it can be exported; else RunError saying why (`export_problem`)."""
    if problem := export_problem(run):
        raise RunError(problem)
    return run


def _tflite(run: Run) -> bytes | None:
    path = run.folder / artifacts.TFLITE_MODEL
    if not path.exists():
        try:
            from core.models.engine import make_engine  # it loads TensorFlow: only a conversion needs it

            make_engine(evaluation.load_model(run.model_path), "tflite", cache_path=path)
        except Exception:
            return None
    return path.read_bytes() if path.exists() else None


def _onnx(run: Run) -> bytes | None:
    """The run's own Keras model as ONNX (`core.models.model_files.convert_to_onnx`), converted on first
    use and kept as `model.onnx` beside it; None when it cannot be converted, or the run is imported (its
    original file travels in its bundle)."""
    if run.is_imported:
        return None
    path = run.folder / "model.onnx"
    if not path.exists():
        try:
            from core.models import model_files

            files.write_bytes(path, model_files.convert_to_onnx(evaluation.load_model(run.model_path)))
        except Exception:
            return None
    return path.read_bytes()


def int8_section(run: Run) -> str:
    """The card's int8 paragraph: the agreement with fp32 of a kept int8 model, why the run keeps
    fp32, or how to make one."""
    record = run.read(artifacts.INT8_RECORD) or {}
    if record.get("verdict") == quantization.KEEP_FP32:
        return f"No int8 model: this run keeps fp32. {record.get('reason', '')}".rstrip() + "."
    if quantization.int8_problem(run):  # never quantised, or before int8 models were ONNX files
        return f"No int8 model: `python -m core quantize {run.name}` makes one and measures it against fp32."
    rows = ["| split | images | AUC fp32 | AUC int8 | change | images changing side | largest change of probability |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for split, title in (("val", "validation"), ("test", "test")):
        a = record[split]
        rows.append(f"| {title} | {a['images']} | {a['auc_fp32']:.4f} | {a['auc_int8']:.4f} | {a['auc_change']:+.4f} | "
                    f"{a['changed_side']} | {a['max_abs_change']:.4f} |")
    calibration = record["calibration"]
    return (f"`model.int8.onnx` is this model with full-integer (int8) weights and activations, float32 in and out "
            f"(the same pixels, the same probability), for faster CPU inference with ONNX Runtime. Calibrated on {calibration['images']} "
            f"training images (seed {calibration['seed']}); kept because {record['reason']}. Against the fp32 model, at "
            f"the threshold above:\n\n" + "\n".join(rows) + "\n\nThe figures are in `int8.json`.")


def _interval_row(label: str, ev: run_evidence.RunEvidence) -> str:
    cells = [label, str(ev.n_images), str(ev.n_patients)]
    for metric in run_evidence.INTERVAL_METRICS:
        value = ev.metrics.get(metric)
        interval = ev.interval(metric)
        shown = f"{value:.3f}" if isinstance(value, (int, float)) else "–"
        cells.append(f"{shown} ({wording.format_interval(interval)})" if interval is not None else shown)
    return "| " + " | ".join(cells) + " |"


def decision_rule(run: Run) -> dict:
    """threshold.json: how the model's output becomes a label, for the run's task (`core.data.tasks`),
    and what the model takes in.

    Two classes: one probability, of the task's positive class (pneumonia; viral for bacterial vs
    viral), against the threshold. Three classes: one probability per class; the label is the first
    class (normal) when the binary view, P(pneumonia) = 1 − P(normal), is below the threshold, else
    the likelier of the other classes (`multiclass.TWO_STEP_RULE`).
    """
    metrics = run.metrics or {}
    task = tasks.task_for(run.task)
    negative, positive = task.binary_classes
    binary_rule = f"probability >= threshold means {positive}, else {negative}"
    if task.is_binary:
        outputs = {"output": f"one probability, of {positive}", "decision": binary_rule}
    else:
        others = " + ".join(f"P({c})" for c in task.classes[1:])
        decision = (f"{task.classes[0]} when probability (the binary view) < threshold, else the likelier of "
                    f"{', '.join(task.classes[1:])}")
        outputs = {"output": "one probability per class, in the order of classes", "decision": decision,
                   "binary_view": f"probability = 1 - P({task.classes[0]}) = {others}; {binary_rule}"}
    return {
        "threshold": metrics.get("threshold"), "rule": metrics.get("threshold_rule"), "task": task.name,
        "classes": list(task.classes), "class_names": list(task.names), "positive_class": positive, **outputs,
        "image_size": int(run.settings.get("image_size") or 224), "input": "grayscale repeated to RGB, 0..255, float32",
        "tta_views": (metrics.get("tta") or {}).get("views", 1),
        **({"imported_model": _imported_input(run)} if run.is_imported else {}),
    }


def _imported_input(run: Run) -> dict:
    """How the imported model's own file is fed (threshold.json): its adapter, in words and as saved."""
    from core.models import imported  # it loads Keras: only an imported run's export needs it

    record = run.settings[artifacts.IMPORTED]
    adapter = imported.Adapter.from_dict(record["adapter"])
    return {"file": f"{artifacts.IMPORTED_MODEL}/{adapter.file}", "reads": adapter.describe(),
            "scaling": imported.SCALINGS[adapter.scaling].description, "adapter": adapter.to_dict()}


LAYERS_MODULE = "cxr_layers.py"  # the transformer families' own Keras layers, shipped beside their model


def needs_layers(run: Run) -> bool:
    """Whether the run's model holds layers of this project's own (the transformer families'), which
    Keras can load only once their module is imported."""
    family = families.FAMILIES.get(run.family)
    return bool(family and family.transformer)


def usage(task: tasks.Task, size: int, threshold: float, layers: bool = False) -> str:
    """The card's "how to load it and predict": a snippet that runs as written, with the task's labels;
    `layers`: import the shipped `cxr_layers.py` first (a transformer family's model)."""
    negative, positive = task.binary_classes
    outputs = "model.predict(np.repeat(x[None, :, :, None], 3, axis=-1), verbose=0)"
    if task.is_binary:
        predict = f'p = float({outputs}[0, -1]); print(p, "{positive}" if p >= {threshold:.6f} else "{negative}")'
        reading = f"`p` is the probability of {task.binary_names[1]}; at or above the threshold the label is {positive}."
    else:
        predict = (f"probabilities = {outputs}[0]; classes = {task.classes!r}\n"
                   f"p = float(1 - probabilities[0]); called = p >= {threshold:.6f}\n"
                   "label = classes[1 + int(np.argmax(probabilities[1:]))] if called else classes[0]\n"
                   f'print(p, "{positive}" if called else "{negative}", label, probabilities.round(6).tolist())')
        reading = (f"The model gives one probability per class ({', '.join(task.classes)}, in this order). `p` = 1 − "
                   f"P({task.classes[0]}) is the binary view ({task.binary_names[1]} vs {task.binary_names[0]}): below the "
                   f"threshold the label is {task.classes[0]}, at or above it the likelier of {', '.join(task.classes[1:])}.")
    registers = "import cxr_layers  # this zip's transformer layers (class token, position embedding), known to Keras once imported\n" if layers else ""
    return f"""```python
import keras, numpy as np; from PIL import Image
{registers}model = keras.saving.load_model("model.keras", safe_mode=True, compile=False)
img = Image.open("xray.jpeg"); img.draft("L", ({size}, {size})); x = np.asarray(img.convert("L").resize(({size}, {size}), Image.BILINEAR), np.float32)
{predict}
```

{reading}

The image is resized to {size}×{size}, made grayscale and repeated to three channels, 0..255 (no other scaling:
the model holds its own preprocessing). `img.draft` is what the project's decoder does for JPEGs; without it,
probabilities move by a little.
"""


def model_card(run: Run) -> str:
    """MODEL_CARD.md for a finished run (see the module's docstring for where the numbers come from)."""
    metrics, settings = run.metrics or {}, run.settings
    threshold = run.threshold
    size = int(settings.get("image_size") or 224)
    summary = run.read(artifacts.DATA_SUMMARY, {}) or {}
    test_ev = run_evidence.run_evidence(run.name, run.predictions(), threshold, threshold, validation=run.val_predictions())
    val = run.val_predictions()
    val_ev = run_evidence.run_evidence(run.name, val, threshold, threshold) if val is not None and len(val) else None
    moved = shift.for_run(run)
    splits_text = "no splits.csv"
    if (run.folder / artifacts.SPLITS).exists():
        splits = files.read_csv(run.folder / artifacts.SPLITS)
        counts = splits.groupby(["split", "class_name"]).size().unstack(fill_value=0) if "class_name" in splits else None
        patients = splits.groupby("split")["patient"].nunique() if "patient" in splits else None
        lines = ["| split | images | patients | " + " | ".join(counts.columns if counts is not None else []) + " |",
                 "| --- | --- | --- | " + " | ".join("---" for _ in (counts.columns if counts is not None else [])) + " |"]
        for split in ("train", "val", "test"):
            if counts is not None and split in counts.index:
                lines.append(f"| {split} | {int(counts.loc[split].sum())} | {int(patients[split]) if patients is not None else '–'} | "
                             + " | ".join(str(int(v)) for v in counts.loc[split]) + " |")
        splits_text = "\n".join(lines)
    shift_rows = ["| metric | validation | test | test − validation |", "| --- | --- | --- | --- |"]
    for key, title in shift.METRICS.items():
        v = "–" if moved.val is None else f"{moved.val[key]:.3f}"
        shift_rows.append(f"| {title} | {v} | {moved.test[key]:.3f} | {moved.change(key):+.3f} |")
    warnings = shift.shift_warnings([moved])
    tta = (metrics.get("tta") or {}).get("views", 1)
    notes = "\n".join(f"- {n}" for n in summary.get("notes") or []) or "- none recorded"
    task = tasks.task_for(run.task)
    output = (
        f"probability of {task.binary_names[1]} out" if task.is_binary
        else f"one probability per class ({', '.join(task.names)}) out; P(pneumonia) = P(bacterial) + P(viral)"
    )
    labels_limit = (
        "Labels are image-level diagnoses (normal / pneumonia); it cannot tell bacterial from viral pneumonia, nor other findings."
        if task.name == "pneumonia" else
        "Labels come from the file names' kind (bacteria / virus), image-level; it knows no other findings."
    )
    family = families.FAMILIES.get(run.family)
    scratch_vit = (
        "\n- A vision transformer trained from scratch on about 5,000 X-rays: far too few for a ViT to learn attention from "
        "nothing, so expect it to trail the ImageNet CNNs (docs/measurements.md, \"Transformers\": test AUC 0.915 against 0.976)."
        if family is not None and family.patches and settings.get("weights", "none") == "none" else ""
    )
    return f"""# Model card: {run.name}

## Model details

- Task: **{task.name}** ({tasks.DESCRIPTIONS[task.name]}).
{_origin(run, size)}
- Decision threshold: **{threshold:.6f}** ({metrics.get('threshold_rule', "Youden's J on the validation split")}); probability ≥ threshold means {task.binary_classes[1]}{'' if task.is_binary else ' (the binary view); below it the label is ' + task.classes[0] + ', at or above it the likelier of the other classes'}.
- Test-time augmentation: {f'{tta} views (core.data.augmentation.tta_views); the saved probabilities average them' if tta and tta > 1 else 'none'}.
- Files: {_files_line(run, output)}{', `model.int8.onnx` and `int8.json` (below)' if not quantization.int8_problem(run) else ''}.

## Intended use

Research and teaching only: comparing classifiers of pneumonia on chest X-rays. **Not a medical device**;
not for diagnosis, triage or any decision about a patient.

## Training data

The public "Chest X-Ray Images (Pneumonia)" data set (Kermany et al., Cell 2018; CC BY 4.0), paediatric
anterior-posterior chest X-rays from one centre. Images are split by patient (no patient in two splits);
the threshold is chosen on validation, never on test. Test split: {shift.SOURCE_TEXT[moved.source]}.

{splits_text}

Class weights: {json.dumps(summary.get('class_weights')) if summary.get('class_weights') else 'see data_summary.json'}. Notes from the data check:
{notes}

## Metrics

At the threshold above, with 95% intervals that keep each patient's images together (AUC: patient-level
bootstrap; rates: Wilson's interval widened by the design effect), as on the Compare page.

| split | images | patients | AUC | sensitivity | specificity | accuracy |
| --- | --- | --- | --- | --- | --- | --- |
{_interval_row('validation', val_ev) if val_ev else '| validation | – | – | – | – | – | – |'}
{_interval_row('test', test_ev)}

{wording.intervals_note(test_ev.n_resamples, test_ev.seed)}

## Validation against test (shift)

{chr(10).join(shift_rows)}

{('**Warning:** ' + ' '.join(warnings)) if warnings else 'Test is not worse than validation by 0.10 or more in any of these metrics.'}

## Limitations

- One public data set, one centre, children: it says nothing about adults, other hospitals, other machines or lateral views.
- {labels_limit}
- Metrics on a test split carved from train/ (internal) flatter the model; the external test/ folder is the fairer check.
- An image unlike the training X-rays (blank, photo, text, another body part) still gets a probability; the dashboard and
  `python -m core predict` flag such images, this file alone does not.
- Calibration is as measured above (ECE); the probability is not a risk estimate for a patient.{scratch_vit}

## int8 model

{int8_section(run)}

## How to load it and predict

{_imported_usage(run, threshold) if run.is_imported else usage(task, size, threshold, needs_layers(run))}
"""


def _origin(run: Run, size: int) -> str:
    """Where the model came from: the search that found it, or the file it was imported from."""
    settings = run.settings
    if run.is_imported:
        record = settings[artifacts.IMPORTED]
        return (f"- Imported: a {record['format']} model trained elsewhere, `{Path(record['source']).name}` (sha256 "
                f"{record['sha256'][:16]}…), scored here with `python -m core import`; input {size}×{size} px, read as "
                f"{_imported_input(run)['reads']}. Pixel scaling: {_imported_input(run)['scaling']}.\n"
                f"- Split by this project's rules with seed {settings.get('seed', '?')}: its validation and test images are those "
                "of searched runs with the same data and seed.")
    return (f"- Family: {run.family} ({settings.get('mode', 'frozen')} mode, weights {settings.get('weights', '?')}), input {size}×{size} px.\n"
            f"- Found by a Keras Tuner {settings.get('tuner', '?')} search ({settings.get('trials', '?')} trials × "
            f"{settings.get('epochs', '?')} epochs, seed {settings.get('seed', '?')}) with this project's `python -m core tune`.")


def _files_line(run: Run, output: str) -> str:
    if run.is_imported:
        return (f"`{artifacts.IMPORTED_MODEL}/` (the original file and `adapter.json`, how it is fed: see threshold.json's "
                f"`imported_model`), `model.tflite` when it could be converted, `threshold.json`")
    return (f"`model.keras` (Keras 3, pixels 0..255 in, {output}), `model.tflite` and `model.onnx` (the same model for "
            "TensorFlow Lite and ONNX Runtime), `threshold.json`")


def _imported_usage(run: Run, threshold: float) -> str:
    """The card's "how to predict" for an imported run: its own file, fed as its adapter says, or imported again."""
    record = run.settings[artifacts.IMPORTED]
    options = record.get("options") or {}
    flags = " ".join(
        f"--{flag} {options[key]}" for key, flag in (("image_size", "input-size"), ("channels", "channels"), ("layout", "layout"),
                                                     ("positive", "positive-output")) if options.get(key) is not None
    ) + (" --logits" if options.get("logits") else "")
    reading = _imported_input(run)
    return (f"Run `{reading['file']}` with the tool it was made for, feeding it as it was trained: {reading['reads']}. "
            f"At or above {threshold:.6f} the label is {tasks.task_for(run.task).binary_classes[1]}.\n\n"
            f"Or import it into this project again (the same adapter):\n\n```\npython -m core import {reading['file']} "
            f"--name NAME --data DATA --scaling {reading['adapter']['scaling']} {flags}\n```\n")


def export_bytes(artifacts_dir: str | os.PathLike, name: str) -> bytes:
    """The run's zip, in memory (what the dashboard's download button serves)."""
    run = exportable(artifacts.load_run(artifacts_dir, name))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        if run.is_imported:  # the original file as it was imported, with the adapter that reads it
            for path in sorted(p for p in run.model_path.rglob("*") if p.is_file()):
                archive.write(path, f"{run.name}/{artifacts.IMPORTED_MODEL}/{path.relative_to(run.model_path)}")
        else:
            archive.write(run.model_path, f"{run.name}/model.keras")
        onnx = _onnx(run)
        if onnx is not None:
            archive.writestr(f"{run.name}/model.onnx", onnx)
        if needs_layers(run):
            archive.write(transformer_layers_file(), f"{run.name}/{LAYERS_MODULE}")
        tflite = _tflite(run)
        if tflite is not None:
            archive.writestr(f"{run.name}/model.tflite", tflite)
        if not quantization.int8_problem(run):
            archive.write(run.folder / artifacts.INT8_MODEL, f"{run.name}/{artifacts.INT8_MODEL}")
            archive.write(run.folder / artifacts.INT8_RECORD, f"{run.name}/{artifacts.INT8_RECORD}")
        archive.writestr(f"{run.name}/{THRESHOLD}", json.dumps(decision_rule(run), indent=2))
        card = model_card(run)
        if tflite is None:
            card += "\n_model.tflite is not included: this model could not be converted to TensorFlow Lite._\n"
        if onnx is None and not run.is_imported:
            card += "\n_model.onnx is not included: tf2onnx could not convert this model._\n"
        archive.writestr(f"{run.name}/{CARD}", card)
    return buffer.getvalue()


def transformer_layers_file() -> Path:
    """`core/models/transformer.py`: it imports only Keras, so it loads on its own as `cxr_layers.py`."""
    return Path(__file__).resolve().parents[1] / "models" / "transformer.py"


def export_run(artifacts_dir: str | os.PathLike, name: str, out: str | os.PathLike) -> Path:
    """Write the run's zip to `out` atomically; returns the path."""
    content = export_bytes(artifacts_dir, name)
    out = Path(out)
    files.write_bytes(out, content)
    return out
