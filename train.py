"""Train a multi-species wildreid model.

    accelerate launch train.py --config configs/demo.yaml [--output_dir DIR] [--max_steps N] ...

Runs unchanged on a CPU, one GPU, or many GPUs/nodes (`accelerate config`). Every option of
`wildreid.training.TrainingConfig` is a flag of the same name; `python train.py --help` lists them.
CPU threads: `--num_threads` or $WILDREID_NUM_THREADS (default: the cores this process may use).
"""
import logging
import sys

from wildreid.training import NonFiniteLossError, config_from_args, train

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        train(config_from_args())
    except (ValueError, OSError, NonFiniteLossError) as error:  # expected failures: a message, no traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
