"""The Haiku backend trains in a process where ``import torch`` fails (no torch anywhere on its path)."""

import json
import subprocess
import sys
import textwrap

BLOCK_TORCH = textwrap.dedent('''
    import importlib.abc
    import sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, NoTorch())
''')


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=600)


def test_the_block_works():
    done = run_without_torch("import torch")
    assert done.returncode != 0 and "blocked in this test" in done.stderr


def test_quick_haiku_run_without_torch(tmp_path):
    done = run_without_torch(f'''
        import json
        from posenc.trainer import train
        from posenc.training import TrainConfig

        config = TrainConfig(dataset="synthetic:md17", backend="haiku", epochs=2, n_layers=1, hidden=8,
                             batch_size=4, n_train=8, n_val=4, n_test=4, progress=False, out_dir={str(tmp_path)!r})
        result = train(config)
        print(json.dumps(result.test))
        assert not any(name == "torch" or name.startswith("torch.") for name in sys.modules)
    ''')
    assert done.returncode == 0, done.stderr
    test = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(test) == {"energy_mae", "force_mae"}
    assert (tmp_path / "result.json").is_file()
