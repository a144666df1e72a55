"""Weights & Biases as a clu MetricWriter (config.training.use_wandb), written next to TensorBoard.

  writer = metric_writers.MultiWriter([tensorboard_writer, wandb_writer.create(config, workdir)])

The run lives in WORKDIR/wandb (offline by default: no network and no account; `wandb sync
WORKDIR/wandb/offline-run-*` uploads it later). Its id is kept in WORKDIR/wandb/run_id, so a resumed workdir
continues the same W&B run. Every logged row carries the training step as the `step` metric, the x-axis of
all charts: the trainer logs the final evaluation at the best checkpoint's (earlier) step, and a resumed run
repeats the steps after its checkpoint, which W&B's own monotonic step would drop. Only process 0 should
create one. wandb itself is imported here, lazily: it is an optional dependency (`pip install -e '.[wandb]'`).
"""
import html
import json
import os
import secrets
import string
from typing import Any, Mapping, Optional

import numpy as np
from absl import logging
from clu.metric_writers import interface

MODES = ('offline', 'online')
STEP = 'step'           # the x-axis metric of every chart
RUN_ID_FILE = 'run_id'  # in WORKDIR/wandb


def _import_wandb():
  try:
    import wandb  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("config.training.use_wandb=True needs the wandb package: pip install -e '.[wandb]' "
                      '(or set training.use_wandb=False; TensorBoard logging needs nothing extra)') from e
  return wandb


def _run_id(run_dir: str) -> str:
  """The W&B run id of this workdir: the stored one when resuming, else a new one (then stored)."""
  path = os.path.join(run_dir, RUN_ID_FILE)
  if os.path.exists(path):
    with open(path) as f:
      run_id = f.read().strip()
    if run_id:
      return run_id
  run_id = ''.join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id form
  with open(path, 'w') as f:
    f.write(run_id + '\n')
  return run_id


def create(config, workdir: str) -> 'WandbWriter':
  """Starts (or resumes) the W&B run of `workdir` with config.training.wandb_* and the whole config."""
  t = config.training
  if t.wandb_mode not in MODES:
    raise ValueError(f'training.wandb_mode must be one of {MODES}, got {t.wandb_mode!r}')
  wandb = _import_wandb()
  run_dir = os.path.join(workdir, 'wandb')
  os.makedirs(run_dir, exist_ok=True)
  run_id = _run_id(run_dir)
  full_config = json.loads(config.to_json_best_effort())
  run = wandb.init(project=t.wandb_project, entity=t.wandb_entity or None,
                   name=t.wandb_run_name or os.path.basename(os.path.normpath(workdir)), id=run_id,
                   resume='allow', dir=workdir, mode=t.wandb_mode, config=full_config)
  logging.info('Weights & Biases run %s (%s) in %s', run_id, t.wandb_mode, run.dir)
  return WandbWriter(run)


def _markdown_table(text: str) -> Optional[tuple[list[str], list[list[str]]]]:
  """'| a | b |\\n|---|---|\\n| 1 | 2 |' -> (columns, rows); None when the text is not such a table."""
  lines = [line.strip() for line in text.strip().splitlines()]
  if len(lines) < 2 or not all(line.startswith('|') and line.endswith('|') for line in lines):
    return None
  cells = [[c.strip() for c in line[1:-1].split('|')] for line in lines]
  columns, separator, rows = cells[0], cells[1], cells[2:]
  if not all(set(c) <= set('-: ') and '-' in c for c in separator):
    return None
  if any(len(r) != len(columns) for r in [separator] + rows):
    return None  # a cell holds a '|': keep the text as it is
  return columns, rows


class WandbWriter(interface.MetricWriter):
  """clu MetricWriter onto a wandb Run: scalars, texts (markdown tables as wandb.Table, other text as
  preformatted HTML), images, histograms, audio and hparams (into run.config). Videos and raw tensor
  summaries are TensorBoard's only: logged once as skipped."""

  def __init__(self, run):
    self.run = run
    self._wandb = _import_wandb()
    self._skipped = set()
    run.define_metric(STEP)
    run.define_metric('*', step_metric=STEP)

  def _log(self, step: int, values: Mapping[str, Any]):
    if values:
      self.run.log({STEP: int(step), **values})

  def _skip(self, what: str):
    if what not in self._skipped:
      self._skipped.add(what)
      logging.warning('WandbWriter: %s are written to TensorBoard only, not to W&B.', what)

  def write_scalars(self, step: int, scalars: Mapping[str, interface.Scalar]):
    self._log(step, {k: float(np.asarray(v)) for k, v in scalars.items()})

  def write_texts(self, step: int, texts: Mapping[str, str]):
    values = {}
    for key, text in texts.items():
      table = _markdown_table(text)
      if table is not None:
        values[key] = self._wandb.Table(columns=table[0], data=table[1])
      else:
        values[key] = self._wandb.Html(f'<pre>{html.escape(text)}</pre>')
    self._log(step, values)

  def write_images(self, step: int, images: Mapping[str, interface.Array]):
    """images: [N, H, W, C] or [H, W, C] per key (C = 1 or 3)."""
    values = {}
    for key, value in images.items():
      value = np.asarray(value)
      batch = value if value.ndim == 4 else value[None]
      values[key] = [self._wandb.Image(im[..., 0] if im.shape[-1] == 1 else im) for im in batch]
    self._log(step, values)

  def write_histograms(self, step: int, arrays: Mapping[str, interface.Array],
                       num_buckets: Optional[Mapping[str, int]] = None):
    self._log(step, {k: self._wandb.Histogram(np.asarray(v).reshape(-1),
                                              num_bins=(num_buckets or {}).get(k, 64))
                     for k, v in arrays.items()})

  def write_audios(self, step: int, audios: Mapping[str, interface.Array], *, sample_rate: int):
    """audios: [N, T, C] per key, values in [-1, 1]."""
    self._log(step, {k: [self._wandb.Audio(np.asarray(a), sample_rate=sample_rate) for a in np.asarray(v)]
                     for k, v in audios.items()})

  def write_videos(self, step: int, videos: Mapping[str, interface.Array]):
    self._skip('videos')

  def write_summaries(self, step: int, values: Mapping[str, interface.Array],
                      metadata: Optional[Mapping[str, Any]] = None):
    self._skip('raw tensor summaries')

  def write_hparams(self, hparams: Mapping[str, Any]):
    self.run.config.update(dict(hparams), allow_val_change=True)

  def flush(self):
    pass  # run.log hands every row to W&B's service process at once; close() waits for it.

  def close(self):
    self.run.finish()
