"""Small, quick runs shared by the training tests: a dense OptEq model on a slice of digits."""

import jax

from optjax.cli import main
from optjax.train import TrainConfig, train

TINY = dict(kind="dense", width=16, train_subset=256, test_subset=64, batch_size=32, epochs=2,
            eval_batch_size=64, warmup_epochs=0.25, progress=False, plots=False, max_steps=30,
            backward_steps=20)


def tiny_config(out_dir, **changes) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, "out_dir": str(out_dir), **changes})


def run(config, **kwargs):
    with jax.enable_x64(False):  # float32 training, as users run it
        return train(config, **kwargs)


def cli(*args) -> int:
    """``optjax ...`` in this process (float32, as users run it); the exit status."""
    with jax.enable_x64(False):
        return main(list(args))
