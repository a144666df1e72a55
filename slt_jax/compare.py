"""Is run B's translation of a split better than run A's, beyond chance? sacrebleu's paired significance tests.

    python -m slt_jax.compare RUN_A RUN_B [--split=test] [--test=both|bs|ar] [--json=OUT.json]

RUN_A is the baseline. A run is a workdir (its `predictions_<split>.tsv`) or such a TSV itself (uid, reference,
hypothesis: what an evaluation writes). Both must hold the same split, the same uids and the same references,
else this stops with an error. The tests are sacrebleu's (`sacrebleu.significance.PairedTest`): paired bootstrap
resampling (Koehn 2004; 1000 resamples, also giving each run's 95% confidence interval) and paired approximate
randomization (Riezler & Maxwell 2005; 10000 trials), for BLEU and chrF, each with a p-value: the chance of a
difference at least as large as the one seen if the two runs were equally good. Scores follow the runs'
`evaluation.bleu_tokenize` / `evaluation.lowercase` (WORKDIR/config.json), or --tokenize / --lowercase.

Compare on the test split only runs whose checkpoints were chosen on the validation split (as training does).
"""
import argparse
import csv
import json
import os
import re
import sys

import sacrebleu
from sacrebleu.significance import PairedTest

from slt_jax import evaluate

_PREDICTIONS = re.compile(r'predictions_(?P<split>.+)\.tsv$')
_HEADER = ['uid', 'reference', 'hypothesis']
_METRIC_KEYS = {'BLEU': 'bleu', 'chrF2': 'chrf'}  # sacrebleu's score names -> metrics.json's keys
_DISPLAY_NAMES = {'bleu': 'BLEU', 'chrf': 'chrF'}


class CompareError(ValueError):
  """Two runs that cannot be compared, with a message saying why."""


def predictions_path(run: str, split: str | None) -> tuple[str, str]:
  """(the TSV, its split) of a workdir or a predictions_<split>.tsv path; `split` None: 'test' for a workdir."""
  if os.path.isdir(run):
    split = split or 'test'
    path = os.path.join(run, f'predictions_{split}.tsv')
  else:
    path, match = run, _PREDICTIONS.search(os.path.basename(run))
    if not match:
      raise CompareError(f'{run} is neither a workdir nor a predictions_<split>.tsv file')
    if split and match['split'] != split:
      raise CompareError(f'{run} holds the {match["split"]!r} split, not --split={split!r}')
    split = match['split']
  if not os.path.isfile(path):
    raise CompareError(f'{path} does not exist: evaluate the run on the {split!r} split first '
                       f'(--mode=eval --config.evaluation.split={split})')
  return path, split


def read_predictions(path: str) -> tuple[list[str], list[str], list[str]]:
  """(uids, references, hypotheses) of a predictions TSV, in file order."""
  with open(path, newline='', encoding='utf-8') as f:
    rows = list(csv.reader(f, delimiter='\t'))
  if not rows or rows[0] != _HEADER:
    raise CompareError(f'{path}: expected the header {_HEADER}, got {rows[0] if rows else "an empty file"}')
  bad = [i for i, row in enumerate(rows[1:], start=2) if len(row) != 3]
  if bad:
    raise CompareError(f'{path}: line {bad[0]} does not have 3 tab-separated fields ({len(bad)} such lines)')
  if len(rows) == 1:
    raise CompareError(f'{path} has no predictions')
  return [r[0] for r in rows[1:]], [r[1] for r in rows[1:]], [r[2] for r in rows[1:]]


def paired_segments(a: tuple, b: tuple, name_a: str, name_b: str) -> tuple[list[str], list[str], list[str]]:
  """(references, hypotheses of A, hypotheses of B) in A's order, from two (uids, refs, hyps) of one split.

  B's rows are reordered to A's when both hold the same unique uids in another order.
  """
  (uids_a, refs_a, hyps_a), (uids_b, refs_b, hyps_b) = a, b
  if uids_a != uids_b:
    missing, extra = set(uids_a) - set(uids_b), set(uids_b) - set(uids_a)
    if missing or extra or len(set(uids_a)) != len(uids_a) or len(uids_a) != len(uids_b):
      raise CompareError(
          f'{name_a} and {name_b} do not hold the same segments ({len(uids_a)} vs {len(uids_b)} rows; '
          f'{len(missing)} uids only in the first, e.g. {sorted(missing)[:3]}; {len(extra)} only in the second, '
          f'e.g. {sorted(extra)[:3]}): compare predictions of the same split of the same data')
    row_of = {uid: i for i, uid in enumerate(uids_b)}
    refs_b, hyps_b = [refs_b[row_of[u]] for u in uids_a], [hyps_b[row_of[u]] for u in uids_a]
  differ = [u for u, ra, rb in zip(uids_a, refs_a, refs_b) if ra != rb]
  if differ:
    raise CompareError(f'{name_a} and {name_b} have different references for {len(differ)} uids (e.g. '
                       f'{differ[0]!r}): they were not scored against the same data')
  return refs_a, hyps_a, hyps_b


def scoring_options(runs: list[str], tokenize: str | None, lowercase: bool | None) -> tuple[str, bool]:
  """The BLEU tokenizer and casing: the flags, else the runs' own config.json (which must agree), else defaults."""
  found = {}
  for run in runs:
    path = os.path.join(run if os.path.isdir(run) else os.path.dirname(run), 'config.json')
    if os.path.isfile(path):
      with open(path, encoding='utf-8') as f:
        e = json.load(f).get('evaluation', {})
      found[run] = (e.get('bleu_tokenize', '13a'), e.get('lowercase', False))
  chosen = []
  for i, (flag, name, default) in enumerate(((tokenize, '--tokenize', '13a'), (lowercase, '--lowercase', False))):
    values = {v[i] for v in found.values()}
    if flag is None and len(values) > 1:
      raise CompareError(f'the runs were scored with different evaluation settings ({found}): choose one '
                         f'with {name}')
    chosen.append(flag if flag is not None else (values.pop() if values else default))
  return chosen[0], chosen[1]


def paired_tests(references: list[str], hyps_a: list[str], hyps_b: list[str], tests=('bs', 'ar'),
                 tokenize: str = '13a', lowercase: bool = False, bs_resamples: int = 1000,
                 ar_trials: int = 10000) -> dict:
  """{test: {'samples', 'metrics': {'bleu'|'chrf': {'a', 'b', 'difference', 'p_value', ...}}}} of B vs A.

  bs: paired bootstrap resampling, which also gives each run's 95% interval ('a_ci95', 'b_ci95': {'mean',
  'half_width'}); ar: paired approximate randomization. The seed is sacrebleu's (SACREBLEU_SEED, 12345).
  """
  identical = hyps_a == hyps_b
  results = {}
  for test in tests:
    metrics = {'BLEU': sacrebleu.BLEU(lowercase=lowercase, tokenize=tokenize, references=[references]),
               'chrF': sacrebleu.CHRF(lowercase=lowercase, references=[references])}
    samples = bs_resamples if test == 'bs' else ar_trials
    signatures, scores = PairedTest([('a', hyps_a), ('b', hyps_b)], metrics, references=None, test_type=test,
                                    n_samples=samples)()
    out = {}
    for name, key in _METRIC_KEYS.items():
      a, b = scores[name]
      # Two identical outputs differ by exactly 0 in every resample, which sacrebleu's strict count (> the
      # observed 0) turns into its smallest p-value, 1 / (samples + 1): "significant". There is no difference.
      out[key] = {'a': a.score, 'b': b.score, 'difference': b.score - a.score,
                  'p_value': 1.0 if identical else float(b.p_value), 'signature': str(signatures[name])}
      if test == 'bs':
        out[key]['a_ci95'] = {'mean': float(a.mean), 'half_width': float(a.ci)}
        out[key]['b_ci95'] = {'mean': float(b.mean), 'half_width': float(b.ci)}
    results[test] = {'samples': samples, 'metrics': out}
  return results


_TEST_NAMES = {'bs': 'paired bootstrap resampling', 'ar': 'paired approximate randomization'}


def report(result: dict) -> str:
  """A plain-text table of `compare`'s result."""
  lines = [f"A = {result['a']}", f"B = {result['b']}",
           f"split {result['split']!r}, {result['num_segments']} segments, BLEU tokenizer {result['tokenize']!r}, "
           f"{'lowercased' if result['lowercase'] else 'cased'}"]
  if result['identical']:
    lines.append('The two runs translated every segment identically: no difference to test.')
  for test, r in result['tests'].items():
    lines.append(f"\n{_TEST_NAMES[test]} ({r['samples']} {'resamples' if test == 'bs' else 'trials'}):")
    lines.append(f"{'metric':<6} {'A':>16} {'B':>16} {'B - A':>8} {'p-value':>8}")
    for key, m in r['metrics'].items():
      a, b = (f"{m[x]:.2f}" + (f" ± {m[x + '_ci95']['half_width']:.2f}" if x + '_ci95' in m else '')
              for x in ('a', 'b'))
      star = ' *' if m['p_value'] < 0.05 else ''
      lines.append(f"{_DISPLAY_NAMES[key]:<6} {a:>16} {b:>16} {m['difference']:>+8.2f} {m['p_value']:>8.4f}{star}")
  lines.append('\n* p < 0.05. Intervals: 95% of bootstrap resamples lie within mean ± half-width.')
  return '\n'.join(lines)


def compare(run_a: str, run_b: str, split: str | None = None, tests=('bs', 'ar'), tokenize: str | None = None,
            lowercase: bool | None = None, bs_resamples: int = 1000, ar_trials: int = 10000) -> dict:
  """The paired tests of two runs' predictions of one split (see the module docstring), as a JSON-able dict."""
  path_a, split_a = predictions_path(run_a, split)
  # A workdir B holds A's split unless --split says otherwise; a TSV B names its own, checked below.
  path_b, split_b = predictions_path(run_b, split or (split_a if os.path.isdir(run_b) else None))
  if split_a != split_b:
    raise CompareError(f'{path_a} holds the {split_a!r} split but {path_b} the {split_b!r} split')
  tokenize, lowercase = scoring_options([run_a, run_b], tokenize, lowercase)
  if tokenize not in evaluate.BLEU_TOKENIZERS:
    raise CompareError(f'--tokenize must be one of {evaluate.BLEU_TOKENIZERS}, got {tokenize!r}')
  refs, hyps_a, hyps_b = paired_segments(read_predictions(path_a), read_predictions(path_b), path_a, path_b)
  return {'a': path_a, 'b': path_b, 'split': split_a, 'num_segments': len(refs), 'tokenize': tokenize,
          'lowercase': lowercase, 'identical': hyps_a == hyps_b,
          'tests': paired_tests(refs, hyps_a, hyps_b, tests, tokenize, lowercase, bs_resamples, ar_trials)}


def _parse_args(argv):
  p = argparse.ArgumentParser(prog='python -m slt_jax.compare', description=__doc__.split('\n\n')[0])
  p.add_argument('run_a', help='baseline: a workdir or a predictions_<split>.tsv')
  p.add_argument('run_b', help='the other run: a workdir or a predictions_<split>.tsv')
  p.add_argument('--split', default=None, help="split of workdirs' predictions (default: test, or the TSV's)")
  p.add_argument('--test', choices=('both', 'bs', 'ar'), default='both',
                 help='bs: paired bootstrap resampling; ar: paired approximate randomization')
  p.add_argument('--tokenize', choices=evaluate.BLEU_TOKENIZERS, default=None,
                 help="BLEU tokenizer (default: the runs' evaluation.bleu_tokenize, else 13a)")
  p.add_argument('--lowercase', action=argparse.BooleanOptionalAction, default=None,
                 help="score lowercased text (default: the runs' evaluation.lowercase, else cased)")
  p.add_argument('--bs_resamples', type=int, default=1000, help='bootstrap resamples')
  p.add_argument('--ar_trials', type=int, default=10000, help='approximate randomization trials')
  p.add_argument('--json', default=None, help='also write the result to this JSON file')
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = _parse_args(argv)
  for name in ('bs_resamples', 'ar_trials'):
    if getattr(args, name) < evaluate.MIN_BOOTSTRAP_RESAMPLES:
      print(f'error: --{name} must be at least {evaluate.MIN_BOOTSTRAP_RESAMPLES}', file=sys.stderr)
      return 2
  try:
    result = compare(args.run_a, args.run_b, args.split, ('bs', 'ar') if args.test == 'both' else (args.test,),
                     args.tokenize, args.lowercase, args.bs_resamples, args.ar_trials)
  except CompareError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(report(result))
  if args.json:
    os.makedirs(os.path.dirname(args.json) or '.', exist_ok=True)
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=2, ensure_ascii=False)
  return 0


if __name__ == '__main__':
  sys.exit(main())
