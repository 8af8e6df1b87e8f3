"""Run every benchmark in turn and print their figures (`make bench`). Takes about 20 minutes on
2 cores, most of it the uncached search in bench_search.py."""

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERAS_HOME = HERE.parent.parent / "shared" / "keras_home"

if __name__ == "__main__":
    env = dict(os.environ)
    if KERAS_HOME.exists():
        env.setdefault("KERAS_HOME", str(KERAS_HOME))
    for script in ("bench_engine.py", "bench_pipeline.py", "bench_search.py", "bench_finetune.py", "bench_dashboard.py"):
        print(f"\n## {script}", flush=True)
        subprocess.run([sys.executable, str(HERE / script)], env=env, check=False)
