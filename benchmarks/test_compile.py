"""Compilation, measured apart from run time: everything a training run needs, in a fresh process with an empty
Numba cache (cold), and the same with the cache filled (warm start-up to the first step)."""

import os
import subprocess
import sys

FIRST_STEP = """
import time
start = time.perf_counter()
import fastbp
X, y = fastbp.data.load_digits()
net = fastbp.MLP([64, 128, 10])
trainer = fastbp.Trainer(net, fastbp.Adam(), progress=False)
trainer.fit(X[:64], y[:64], epochs=1)
print(time.perf_counter() - start)
"""


def _first_step(cache_dir):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run([sys.executable, "-c", FIRST_STEP], env=env, capture_output=True, text=True, check=True)
    return float(proc.stdout)


def test_cold_compile_of_a_training_run(benchmark, tmp_path_factory):
    benchmark.group = "startup"
    seconds = benchmark.pedantic(lambda: _first_step(tmp_path_factory.mktemp("cache")), rounds=1, iterations=1)
    benchmark.extra_info["seconds_to_first_epoch"] = seconds


def test_warm_start_to_the_first_step(benchmark, tmp_path):
    benchmark.group = "startup"
    _first_step(tmp_path)  # fill the cache
    benchmark.pedantic(lambda: _first_step(tmp_path), rounds=3, iterations=1)
