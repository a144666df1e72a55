"""The demo config shrunk for end-to-end tests of the trainer: 64 training sentences, a 1-layer T5 of width 32,
one frame shape (every sequence subsampled to 64 frames), so a run compiles its train step once.

  config = tiny_demo.config(num_train_steps=20)                 # in-process (trainer.train_and_evaluate)
  argv = tiny_demo.flags(num_train_steps=20)                    # python -m slt_jax.main --config=... argv
"""
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, 'configs', 'demo.py')

OVERRIDES = {
    'data.synthetic.num_train': 64, 'data.synthetic.num_val': 4, 'data.synthetic.num_test': 4,
    # One split per CSV, uids as <split>_NNNNN, poses as stored (tests/test_signers.py holds signers out).
    'data.synthetic.num_signers': 8, 'data.synthetic.num_heldout_signers': 0,
    'data.dominant_hand': '', 'data.augment': False,
    'data.max_frames': 64, 'data.bucket_boundaries': (64,),
    'model.arch.d_model': 32, 'model.arch.d_kv': 8, 'model.arch.num_heads': 2, 'model.arch.d_ff': 64,
    'model.arch.num_layers': 1, 'model.arch.num_decoder_layers': 1, 'model.pose.hidden': 32,
    'training.batch_size': 8, 'training.eval_batch_size': 4, 'training.warmup_steps': 5,
    'training.log_every_steps': 1, 'training.eval_every_steps': 100_000, 'decode.max_new_tokens': 4,
}


def _all(training):
  return {**OVERRIDES, **{f'training.{k}': v for k, v in training.items()}}


def config(**training):
  """The demo ConfigDict with OVERRIDES and `training.<k>=v` for each keyword."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('demo_config', DEMO)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  for path, value in _all(training).items():
    *parents, leaf = path.split('.')
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def flags(**training) -> list[str]:
  """main.py flags for the same config."""
  def fmt(v):
    return f'({",".join(map(str, v))},)' if isinstance(v, tuple) else str(v)
  return [f'--config={DEMO}'] + [f'--config.{k}={fmt(v)}' for k, v in _all(training).items()]


def scalars(workdir: str, tag: str) -> dict:
  """{step: value} of one scalar the trainer wrote to WORKDIR/tensorboard (e.g. 'train/loss')."""
  import glob  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (reads the event files)
  values = {}
  for path in glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        if v.tag == tag:
          values[event.step] = float(tf.make_ndarray(v.tensor))
  return values
