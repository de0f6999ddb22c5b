"""Shared fixtures: offline environment, one on-disk cache per test session, registry isolation."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from bench.cache import Cache  # noqa: E402
from bench.registry import REGISTRIES  # noqa: E402

# Tiny models run fastest on one thread, and a busy machine makes multi-threaded tiny ops crawl (oversubscription).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Cache:
    """One cache for the whole test session, so each tiny released model is built once. Under pytest-xdist
    (``-n``) the workers share it: the cache's entry locks let one worker build what another then reads."""
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's basetemp is <run's basetemp>/popen-gwN
        root = tmp_path_factory.getbasetemp().parent / "bench-cache"
        root.mkdir(exist_ok=True)
    else:
        root = tmp_path_factory.mktemp("bench-cache")
    os.environ["BENCH_CACHE_DIR"] = str(root)
    return Cache(root)


@pytest.fixture(autouse=True)
def _session_cache_env(cache):
    """Every test (including CLI tests) uses the session cache, never the user's."""
    yield


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where real-tier tests run: the device policy's default for the real tier (CUDA when available, else CPU)."""
    from bench.run.devices import resolve_device

    return resolve_device(None, "real")


CPU = torch.device("cpu")


@pytest.fixture
def isolated_registries():
    """Restore the three registries after a test that registers plugins."""
    states = {name: reg.snapshot() for name, reg in REGISTRIES.items()}
    yield
    for name, reg in REGISTRIES.items():
        reg.restore(states[name])


@pytest.fixture(autouse=True)
def _no_checkout_submissions(tmp_path, monkeypatch):
    """`bench leaderboard` reads (and `bench submit` writes) leaderboard/submissions of the checkout by default:
    tests see an empty folder of their own instead, whatever the checkout holds."""
    import leaderboard.sources

    monkeypatch.setattr(leaderboard.sources, "default_submissions_dir", lambda: tmp_path / "checkout-submissions")


NOOP_DEFENSE_PLUGIN = '''"""A defense written by a user: adds nothing."""
from dataclasses import dataclass
from bench.contracts import Defense, DefenseResult
from bench.registry import DEFENSES


@dataclass(frozen=True, kw_only=True)
class Cfg:
    pass


@DEFENSES.register("mine")
class Mine(Defense):
    """Does nothing."""
    Config = Cfg

    def apply(self, model, view, cfg, *, generator):
        return DefenseResult(model=model)
'''


@pytest.fixture
def noop_plugin(tmp_path, isolated_registries):
    """A plugin file registering the defense ``mine`` (it returns the model unchanged), as a user would write it."""
    path = tmp_path / "my_defense.py"
    path.write_text(NOOP_DEFENSE_PLUGIN)
    return path
