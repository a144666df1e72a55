"""--mode=translate: `.pose` files and videos (or folders of them) in, one translation per file out.

  python -m slt_jax.main --config=configs/demo.py --workdir=runs/demo --mode=translate \
      --inputs=a.pose,clip.mp4,poses_dir/ [--output=translations.tsv] [--pose_env=DIR] [--corpus=NAME]

--corpus: a run on a data.mixture whose corpora have their own prompt / tgt_lang translates the inputs as that
corpus's (default: the first corpus; required when the prompts differ).

Videos get MediaPipe Holistic poses from an extractor environment of their own (data/video.py), cached in
WORKDIR/video_poses/.

Uses the workdir's best checkpoint and the model and preprocessing it was trained with (WORKDIR/config.json,
written at training time: run_config.for_inference; where --config differs, that is logged and not used).
Unreadable files are skipped with a message; the others are decoded in batches.
"""
import os

import jax
import numpy as np
from absl import logging

from slt_jax import inference
from slt_jax import run_config
from slt_jax.data import pipeline
from slt_jax.data import pose_io
from slt_jax.data import tokenizer as tokenizer_lib
from slt_jax.data import video
from slt_jax.models import contract


def _pad_batch(arrays: list[pose_io.PoseArrays], batch_size: int, frames: int, visibility_channel: bool):
  """Stacks arrays into poses f32[B, T, K, C] and pose_mask bool[B, T] (filler rows are all padding), laid out
  as the training pipeline lays them out (the visibility channel appended when configured)."""
  k, c = arrays[0].points.shape[1:]
  poses = np.zeros((batch_size, frames, k, c + int(visibility_channel)), np.float32)
  mask = np.zeros((batch_size, frames), bool)
  for i, a in enumerate(arrays):
    n = min(len(a.points), frames)
    poses[i, :n, :, :c] = a.points[:n]
    if visibility_channel:
      poses[i, :n, :, c] = a.visible[:n]
    mask[i, :n] = True
  return poses, mask


def corpus_number(config, corpus: str | None) -> int:
  """The number (batch['corpus']) of the corpus named `corpus` among the run's (contract.corpus_names); None: the
  first, unless the corpora's prompts / tgt_langs differ (the inputs' language is then not known)."""
  names = contract.corpus_names(config)
  if corpus is None:
    differ = [f for f in ('prompt', 'tgt_lang') if len(set(contract.per_corpus(config, f))) > 1]
    if differ:
      raise ValueError(f'the corpora {names} have different {" / ".join(differ)}s: say which one the inputs are '
                       'with --corpus=NAME')
    return 0
  if corpus not in names or not corpus:
    known = [n for n in names if n]
    raise ValueError(f'--corpus={corpus!r} is not a corpus of this run: ' +
                     (f'its corpora are {known}' if known else 'it has no data.mixture (leave --corpus out)'))
  return names.index(corpus)


def translate(config, workdir: str, inputs: list[str], output: str | None = None,
              batch_size: int = 16, pose_env: str | None = None, render: bool = False,
              render_format: str = 'gif', corpus: str | None = None) -> list[tuple[str, str]]:
  """Translates every readable `.pose` file and video of `inputs`; returns [(path, translation)] and
  prints/writes them. pose_env: the video pose extractor's environment (None: video.default_env_dir()).
  corpus: the data.mixture corpus the inputs are of (corpus_number)."""
  if render:  # videos with the translation as subtitle, next to the TSV (show.py): checked before any work
    from slt_jax import show  # pylint: disable=g-import-not-at-top
    if not output:
      raise ValueError('translate --render writes its videos next to the TSV: give --output=FILE.tsv too')
    if render_format not in show.FORMATS:
      raise ValueError(f'translate --render_format must be one of {show.FORMATS}, got {render_format!r}')
  config = run_config.for_inference(config, workdir, strict=False)
  corpus_ids = np.full((batch_size,), corpus_number(config, corpus), np.int32)  # before any work
  options = pose_io.PoseOptions.from_config(config.data)
  tokenizer = tokenizer_lib.get_tokenizer(config, workdir, texts=[])
  k, c = pipeline.pose_feature_shape(config)
  model = inference.restore(config, workdir, tokenizer, pose_dim=k * c)
  logging.info('Translating with the checkpoint of step %d.', model.step)

  readable = []
  extractor = video.Extractor(os.path.join(workdir, 'video_poses'), pose_env)
  for path in video.expand_inputs(inputs):
    try:
      readable.append((path, pose_io.read_pose(extractor.pose_file(path), options)))
    except pose_io.PoseReadError as e:
      logging.warning('Skipping %s: %s', path, e)
      print(f'# skipped {path}: {e}')

  decode_fn = inference.make_decode_fn(model.graphdef, config.decode, config.training.seed)
  bounds = sorted(config.data.bucket_boundaries)
  results = []
  for start in range(0, len(readable), batch_size):
    chunk = readable[start:start + batch_size]
    longest = max(len(a.points) for _, a in chunk)
    frames = next((b for b in bounds if b >= longest), longest)  # few distinct shapes -> few compilations
    poses, mask = _pad_batch([a for _, a in chunk], batch_size, frames,
                             bool(config.data.get('visibility_channel', False)))
    ids = np.asarray(jax.device_get(decode_fn(model.params, model.rest, poses, mask, corpus_ids)))
    for (path, _), row in zip(chunk, ids):
      results.append((path, tokenizer.decode(row.tolist())))

  for path, text in results:
    print(f'{path}\t{text}')
  if output:
    with open(output, 'w', encoding='utf-8') as f:
      f.write('path\ttranslation\n')
      f.writelines(f'{p}\t{t}\n' for p, t in results)
  if render:
    for path in show.render_translations(results, config, output, render_format, pose_file=extractor.pose_file):
      print(f'# rendered {path}')
  return results
