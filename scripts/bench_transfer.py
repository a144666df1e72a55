"""Transfer from a first stage: fine-tuning after pretraining vs training from scratch on a small corpus.

  .venv/bin/python scripts/bench_transfer.py                         # 11.6 CPU-min; 17 min wall on a loaded 2-core CPU
  .venv/bin/python scripts/bench_transfer.py --workdir=runs/transfer --stage1_steps=800 --stage2_steps=300 --json

stage 1    configs/demo.py on its corpus (synthetic seed 0: 4000 training sentences, 8 signers) for --stage1_steps.
corpus 2   slt_jax/data/synthetic.py with the same seed, so the same language (lexicon, signs, grammar), signed by
           --signers2 other signers: the signers are drawn from the seed and their number, so another number draws
           every one of them anew (checked: none is a stage-1 signer). Its --train2 training sentences are the first
           of the same sentence stream, i.e. texts stage 1 trained on too, now signed by others; its val / test
           sentences each hold a word pair that no training sentence of either corpus has.
stage 2    configs/demo.py on corpus 2 for --stage2_steps, twice: `finetuned` with training.init_from=stage 1 (every
           part, and stage 1's tokenizer), `scratch` from random init (a tokenizer trained on corpus 2's texts).
           Everything else is the same config, seed included.

Each stage is the README's command (`python -m slt_jax.main`, in a subprocess): its wall time includes startup, the
data cache, compiles and the evaluations. Reported: test BLEU / chrF of both stage-2 runs (the best checkpoint by
validation BLEU), their difference with sacrebleu's paired bootstrap p-value (slt_jax.compare), and the wall times.
The CPU may be shared with other processes: wall times are then longer than on an idle machine. An existing
stage-1 workdir is reused (its run resumes, i.e. only re-evaluates, when complete): --fresh deletes --workdir first.
Prints a summary, then one JSON line (--json: only the JSON line).
"""
import argparse
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, 'configs', 'demo.py')


def _args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--workdir', default='/tmp/slt_jax_bench_transfer', help='stage1/, corpus2/, finetuned/, scratch/')
  p.add_argument('--stage1_steps', type=int, default=800, help='steps of stage 1 (the demo trains 1500)')
  p.add_argument('--stage2_steps', type=int, default=300, help='steps of each stage-2 run')
  p.add_argument('--train1', type=int, default=0, help='training sentences of stage 1 (0: the demo\'s 4000)')
  p.add_argument('--signers2', type=int, default=4, help='signers of corpus 2 (none of them a stage-1 signer)')
  p.add_argument('--train2', type=int, default=300, help='training sentences of corpus 2')
  p.add_argument('--val2', type=int, default=100, help='validation sentences of corpus 2')
  p.add_argument('--test2', type=int, default=200, help='test sentences of corpus 2')
  p.add_argument('--fresh', action='store_true', help='delete --workdir first')
  p.add_argument('--json', action='store_true', help='print only the JSON line')
  return p.parse_args(argv)


def _demo_synthetic():
  """configs/demo.py's data.synthetic (the stage-1 corpus)."""
  spec = importlib.util.spec_from_file_location('demo_config', DEMO)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config().data.synthetic


def _run(workdir: str, overrides: dict, log) -> float:
  """`python -m slt_jax.main --config=configs/demo.py --workdir=WORKDIR --config.K=V ...` -> its wall seconds."""
  cmd = [sys.executable, '-m', 'slt_jax.main', f'--config={DEMO}', f'--workdir={workdir}']
  cmd += [f'--config.{k}={v}' for k, v in overrides.items()]
  log('$ ' + ' '.join(cmd[1:]))
  start = time.time()
  with open(os.path.join(os.path.dirname(workdir), os.path.basename(workdir) + '.log'), 'w') as out:
    proc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False)
  if proc.returncode:
    raise SystemExit(f'{" ".join(cmd)} failed with status {proc.returncode}; see {out.name}')
  return time.time() - start


def _metrics(workdir: str) -> dict:
  with open(os.path.join(workdir, 'metrics.json'), encoding='utf-8') as f:
    return json.load(f)


def _corpus2(a, synthetic_config, stage1_data: str, out_dir: str) -> dict:
  """Generates corpus 2 (same seed and language as stage 1, other signers) and checks what the docstring says."""
  from slt_jax.data import synthetic  # pylint: disable=g-import-not-at-top  (imports TF; after argument parsing)
  cfg = synthetic_config.copy_and_resolve_references()
  cfg.update(num_signers=a.signers2, num_train=a.train2, num_val=a.val2, num_test=a.test2)
  paths = synthetic.ensure_corpus(cfg, out_dir)
  lexicons = []
  for directory in (stage1_data, out_dir):
    with open(os.path.join(directory, 'lexicon.json'), encoding='utf-8') as f:
      lexicons.append(json.load(f))
  if lexicons[0]['words'] != lexicons[1]['words']:
    raise SystemExit('corpus 2 has another lexicon than stage 1: not the same language')
  shared = [s for s in lexicons[1]['signers'] if s in lexicons[0]['signers']]
  if shared:
    raise SystemExit(f'corpus 2 shares {len(shared)} signers with stage 1; choose another --signers2')

  def texts(directory, split):
    with open(os.path.join(directory, f'{split}.csv'), encoding='utf-8', newline='') as f:
      return [row['text'] for row in csv.DictReader(f)]
  stage1_train = set(texts(stage1_data, 'train'))
  return dict(paths=paths, train_texts_in_stage1=sum(t in stage1_train for t in texts(out_dir, 'train')),
              test_texts_in_stage1=sum(t in stage1_train for t in texts(out_dir, 'test')))


def main(argv=None):
  a = _args(argv)
  log = (lambda *_: None) if a.json else (lambda s: print(s, flush=True))
  if a.fresh and os.path.isdir(a.workdir):
    shutil.rmtree(a.workdir)
  os.makedirs(a.workdir, exist_ok=True)
  dirs = {k: os.path.join(a.workdir, k) for k in ('stage1', 'corpus2', 'finetuned', 'scratch')}
  walls = {}
  stage1 = {'training.num_train_steps': a.stage1_steps, 'training.eval_every_steps': a.stage1_steps,
            'training.checkpoint_every_steps': a.stage1_steps}
  if a.train1:
    stage1['data.synthetic.num_train'] = a.train1
  walls['stage1'] = _run(dirs['stage1'], stage1, log)
  start = time.time()
  corpus = _corpus2(a, _demo_synthetic(), os.path.join(dirs['stage1'], 'data'), dirs['corpus2'])
  walls['corpus2'] = time.time() - start
  p = corpus['paths']
  stage2 = {'data.synthetic.enabled': False, 'data.train_path': p['train'], 'data.val_path': p['val'],
            'data.test_path': p['test'], 'data.pose_dir': p['pose_dir'],
            'training.num_train_steps': a.stage2_steps, 'training.eval_every_steps': max(a.stage2_steps // 4, 1),
            'training.checkpoint_every_steps': a.stage2_steps}
  for name, extra in (('finetuned', {'training.init_from': dirs['stage1']}), ('scratch', {})):
    if os.path.isdir(dirs[name]):
      shutil.rmtree(dirs[name])  # stage 2 always trains anew
    walls[name] = _run(dirs[name], {**stage2, **extra}, log)

  from slt_jax import compare  # pylint: disable=g-import-not-at-top
  paired = compare.compare(dirs['scratch'], dirs['finetuned'], split='test', tests=('bs',))
  m = {name: _metrics(dirs[name]) for name in ('stage1', 'finetuned', 'scratch')}
  bleu = paired['tests']['bs']['metrics']['bleu']
  result = {
      'stage1_steps': a.stage1_steps, 'stage2_steps': a.stage2_steps, 'signers2': a.signers2,
      'train2': a.train2, 'val2': a.val2, 'test2': a.test2,
      'corpus2_train_texts_in_stage1_train': corpus['train_texts_in_stage1'],
      'corpus2_test_texts_in_stage1_train': corpus['test_texts_in_stage1'],
      'stage1_test_bleu': m['stage1']['test']['bleu'],
      'finetuned_test_bleu': m['finetuned']['test']['bleu'], 'scratch_test_bleu': m['scratch']['test']['bleu'],
      'finetuned_test_chrf': m['finetuned']['test']['chrf'], 'scratch_test_chrf': m['scratch']['test']['chrf'],
      'finetuned_val_bleu': m['finetuned']['val']['bleu'], 'scratch_val_bleu': m['scratch']['val']['bleu'],
      'bleu_gain': m['finetuned']['test']['bleu'] - m['scratch']['test']['bleu'],
      'bleu_gain_p_value': bleu['p_value'],
      'finetuned_best_step': m['finetuned']['test']['step'], 'scratch_best_step': m['scratch']['test']['step'],
      'wall_s': {k: round(v, 1) for k, v in walls.items()}, 'wall_total_s': round(sum(walls.values()), 1),
      'cpu_count': os.cpu_count(), 'workdir': a.workdir,
  }
  log(f"\nstage 1: demo corpus, {a.stage1_steps} steps, test BLEU {result['stage1_test_bleu']:.1f} "
      f"({walls['stage1']:.0f} s)")
  log(f"corpus 2: {a.train2}/{a.val2}/{a.test2} sentences, {a.signers2} other signers "
      f"({corpus['train_texts_in_stage1']} of its training texts, {corpus['test_texts_in_stage1']} of its test "
      'texts are stage-1 training texts)')
  log(f"stage 2, {a.stage2_steps} steps, test split of corpus 2:")
  for name in ('finetuned', 'scratch'):
    log(f"  {name:<9} BLEU {result[name + '_test_bleu']:5.1f}  chrF {result[name + '_test_chrf']:5.1f}  "
        f"(best step {result[name + '_best_step']}, {walls[name]:.0f} s)")
  log(f"  gain      BLEU {result['bleu_gain']:+5.1f}  (paired bootstrap p = {result['bleu_gain_p_value']:.4f})")
  log(f"total {result['wall_total_s']:.0f} s wall")
  print(json.dumps(result, sort_keys=True), flush=True)


if __name__ == '__main__':
  main()
