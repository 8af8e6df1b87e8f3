"""Benchmark of int8 inference: each finished run's int8 model against its fp32 engine, side by side.

Run by hand from the repository root, on finished runs (quantised first when they have no int8.json):

    python bench/bench_int8.py --artifacts artifacts RUN [RUN ...]
    python bench/bench_int8.py --artifacts artifacts --requantize RUN   # quantise again first

For each run it prints the agreement that `python -m core quantize` recorded (test AUC fp32 and
int8, test and validation images that change side at the saved threshold, the verdict decided on
validation) and, when the run keeps int8, images/s over batched passes of its own test images and
the median latency of one image, the fp32 engine (TF Lite with XNNPACK; Keras for a model TF Lite cannot
convert) against the int8 engine (ONNX Runtime), with the
int8/fp32 ratios. Passes interleave the two engines and the best pass counts: other processes on a
shared machine slow some passes down, never speed one up. Then it says whether the issue's target
holds for each MobileNetV2 run at 224 px: int8 >= 1.5x fp32 images/s, test AUC within 0.003, at most
2 test images changing side.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no C++ info logs
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere


from bench_engine import images_per_s, latency_ms  # noqa: E402  (this folder: a script's own directory is on sys.path)

from core.data import loading  # noqa: E402
from core.inference import evaluation, quantization  # noqa: E402
from core.models.engine import make_engine  # noqa: E402
from core.runs import artifacts  # noqa: E402

TARGET_RATIO = 1.5
TARGET_AUC = 0.003
TARGET_CHANGED = 2


def bench_run(store: str, name: str, requantize: bool, n_images: int, batch: int, repeats: int, calls: int) -> dict:
    run = artifacts.load_run(store, name)
    model = evaluation.load_model(run.model_path)
    record = run.read(artifacts.INT8_RECORD)
    if record is None or requantize:
        start = time.perf_counter()
        record = quantization.quantize_run(run, model=model)
        print(f"  {name}: quantised and measured in {time.perf_counter() - start:.0f} s", flush=True)
    size = evaluation.run_image_size(run)
    row = {"run": name, "family": run.family, "size": size, "record": record}
    if record["verdict"] != quantization.KEEP_INT8:
        print(f"  {name}: keeps fp32 ({record['reason']})", flush=True)
        return row
    paths = list(run.predictions()["path"][:n_images])
    x = loading.to_network_input(loading.load_images(paths, size)[0])
    engines = {
        "fp32": make_engine(model, "auto", cache_path=run.folder / artifacts.TFLITE_MODEL),  # as predict: TF Lite, else Keras
        "int8": make_engine(model, "int8", cache_path=run.folder / artifacts.INT8_MODEL),
    }
    for e in engines.values():
        e.predict(x[:batch], batch)  # warm-up: allocation, first touch of the weights
    best = dict.fromkeys(engines, 0.0)
    for _ in range(repeats):
        for label, e in engines.items():
            best[label] = max(best[label], images_per_s(lambda a, e=e: e.predict(a, batch), x))
    for label, e in engines.items():
        row[f"ips_{label}"] = best[label]
        row[f"ms_{label}"] = latency_ms(e.predict_one, x[0], calls)
        print(f"  {name:22s} {label} ({e.name}): {best[label]:7.1f} img/s  {row[f'ms_{label}']:6.2f} ms/img", flush=True)
    return row


def print_table(rows: list[dict]) -> None:
    print()
    print("| run | family, px | test AUC fp32 | test AUC int8 | change | test images changing side | val changing side "
          "| fp32 img/s | int8 img/s | ratio | fp32 ms | int8 ms | latency ratio | verdict |")
    print("|" + "---|" * 14)
    for r in rows:
        rec = r["record"]
        test, val = rec.get("test"), rec.get("val")
        auc = (f"{test['auc_fp32']:.4f} | {test['auc_int8']:.4f} | {test['auc_change']:+.4f} | {test['changed_side']} of "
               f"{test['images']} | {val['changed_side']} of {val['images']}") if test else "– | – | – | – | –"
        speed = (f"{r['ips_fp32']:.0f} | {r['ips_int8']:.0f} | {r['ips_int8'] / r['ips_fp32']:.2f}x | {r['ms_fp32']:.2f} | "
                 f"{r['ms_int8']:.2f} | {r['ms_fp32'] / r['ms_int8']:.2f}x") if "ips_int8" in r else "– | – | – | – | – | –"
        kept = "int8" if rec["verdict"] == quantization.KEEP_INT8 else f"keeps fp32: {rec['reason']}"
        print(f"| {r['run']} | {r['family']}, {r['size']} | {auc} | {speed} | {kept} |")
    print("\nratio: int8 images/s over fp32's; latency ratio: fp32 ms over int8 ms (above 1: int8 faster).")
    for r in rows:
        test = r["record"].get("test")
        if r["family"] != "mobilenet" or r["size"] != 224 or "ips_int8" not in r:
            continue
        ratio = r["ips_int8"] / r["ips_fp32"]
        checks = {
            f"int8 >= {TARGET_RATIO}x fp32 images/s ({ratio:.2f}x)": ratio >= TARGET_RATIO,
            f"test AUC within {TARGET_AUC} ({test['auc_change']:+.4f})": abs(test["auc_change"]) <= TARGET_AUC,
            f"at most {TARGET_CHANGED} test images changing side ({test['changed_side']})": test["changed_side"] <= TARGET_CHANGED,
        }
        verdict = "holds" if all(checks.values()) else "does not hold"
        print(f"target for {r['run']}: {verdict}: " + "; ".join(f"{k} {'yes' if ok else 'NO'}" for k, ok in checks.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished runs with their own model")
    parser.add_argument("--artifacts", default=os.environ.get("CXR_ARTIFACTS_DIR", "artifacts"))
    parser.add_argument("--requantize", action="store_true", help="quantise again even when the run has an int8.json")
    parser.add_argument("--images", type=int, default=256, help="test images per throughput pass (default 256)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per engine, best counts (default 3)")
    parser.add_argument("--calls", type=int, default=30, help="single-image calls, median counts (default 30)")
    args = parser.parse_args(argv)
    import tensorflow as tf

    load_before = os.getloadavg()[0]
    print(f"TensorFlow {tf.__version__}, {loading.usable_cores()} usable cores, {args.images} images x best of {args.repeats} "
          f"passes, batch {args.batch}, latency = median of {args.calls}, load average {load_before:.1f}", flush=True)
    rows = [bench_run(args.artifacts, name, args.requantize, args.images, args.batch, args.repeats, args.calls) for name in args.runs]
    print_table(rows)
    if load_before > 0.5:
        # The benchmark itself loads every core, so only the load before it started tells of others.
        print(f"note: load average {load_before:.1f} before the run: other processes shared the CPU, figures may be low")


if __name__ == "__main__":
    main()
