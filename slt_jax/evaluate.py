"""Translation metrics as the field reports them, and the files an evaluation leaves in the workdir.

BLEU-4 and chrF are sacrebleu's; ROUGE-L F1 is rouge-score's LCS over the words of sacrebleu's BLEU tokenizer, so
every script counts (rouge-score's own tokenizer keeps only a-z0-9: identical Chinese strings would score 0). All
on a 0-100 scale, all lowercased or all cased (`lowercase`). The BLEU tokenizer is `tokenize`, as sacrebleu
names it: '13a' (WMT's default; splits punctuation, keeps words of any script whole), 'intl' (Unicode
punctuation and symbols), 'zh' (Chinese characters one by one, the rest 13a: CSL-Daily papers report this),
'char' or 'none' (whitespace only). BLEU and chrF carry sacrebleu's 95% bootstrap confidence interval (its seed
and resample count go in their signatures).
"""
import csv
import importlib.metadata
import json
import os

import sacrebleu
from sacrebleu import significance

# sacrebleu's BLEU tokenizers that need nothing beyond sacrebleu (ja-mecab / ko-mecab need MeCab packages, the
# spm / flores ones download a SentencePiece model).
BLEU_TOKENIZERS = ('13a', 'intl', 'zh', 'char', 'none')
# A 95% interval needs the 2.5% tails to hold a resample each (sacrebleu takes the n // 40-th from each end).
MIN_BOOTSTRAP_RESAMPLES = 40


class _WordsOf:
  """rouge-score's tokenizer interface (a `tokenize` method) over a sacrebleu tokenizer: the words ROUGE-L's LCS
  runs on."""

  def __init__(self, sacrebleu_tokenizer, lowercase: bool):
    self._tokenize, self._lowercase = sacrebleu_tokenizer, lowercase

  def tokenize(self, text: str) -> list[str]:
    return self._tokenize(text.lower() if self._lowercase else text).split()


def _corpus_score(metric, hypotheses: list[str], references: list[str], n_bootstrap: int):
  """(score, ci95 or None) of sacrebleu's `metric.corpus_score(..., n_bootstrap)`, its 95% interval computed as
  sacrebleu's Score.estimate_ci does (mean of the resamples; half the span of the middle 95%), on floats:
  sacrebleu's own `statistics.mean` raises on chrF resamples that mix float and float32 scores (small corpora)."""
  score = metric.corpus_score(hypotheses, [references]).score
  if not n_bootstrap:
    return score, None
  # pylint: disable=protected-access  (the statistics and resampling sacrebleu's corpus_score uses)
  stats = metric._extract_corpus_statistics(hypotheses, [references])
  metric.n_bootstrap, (metric.seed, resamples) = n_bootstrap, significance._bootstrap_resample(
      stats, metric, n_bootstrap)  # (both go into the signature: bs:N|seed:S)
  raw = sorted(float(r.score) for r in resamples)
  tail = len(raw) // 40
  return score, {'mean': sum(raw) / len(raw), 'half_width': 0.5 * (raw[len(raw) - tail - 1] - raw[tail])}


def score(hypotheses: list[str], references: list[str], lowercase: bool = False, tokenize: str = '13a',
          n_bootstrap: int = 1000) -> dict:
  """Corpus metrics of parallel lists of strings (one reference per hypothesis).

  Returns {'bleu', 'chrf', 'rougeL', 'bleu_signature', 'chrf_signature', 'rougeL_signature', 'num_examples'},
  and with `n_bootstrap` resamples (0 = none) also 'bleu_ci95' and 'chrf_ci95': {'mean', 'half_width'}.
  """
  if len(hypotheses) != len(references):
    raise ValueError(f'{len(hypotheses)} hypotheses but {len(references)} references')
  if not hypotheses:
    raise ValueError('no hypotheses to score (the split has no rows)')
  if tokenize not in BLEU_TOKENIZERS:
    raise ValueError(f'BLEU tokenizer {tokenize!r} is not one of {BLEU_TOKENIZERS}')
  if n_bootstrap and n_bootstrap < MIN_BOOTSTRAP_RESAMPLES:
    raise ValueError(f'n_bootstrap={n_bootstrap}: use 0 (no confidence interval) or at least '
                     f'{MIN_BOOTSTRAP_RESAMPLES} resamples')
  bleu = sacrebleu.BLEU(lowercase=lowercase, tokenize=tokenize)
  chrf = sacrebleu.CHRF(lowercase=lowercase)
  bleu_score, bleu_ci = _corpus_score(bleu, hypotheses, references, n_bootstrap)
  chrf_score, chrf_ci = _corpus_score(chrf, hypotheses, references, n_bootstrap)
  # Imported here: rouge-score imports nltk (and scipy), ~1 s that every run would pay at startup for a metric
  # needed only at evaluation.
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  scorer = rouge_scorer.RougeScorer(['rougeL'], tokenizer=_WordsOf(bleu.tokenizer, lowercase))
  rouge = [scorer.score(r, h)['rougeL'].fmeasure for h, r in zip(hypotheses, references)]
  metrics = {
      'bleu': bleu_score,
      'chrf': chrf_score,
      'rougeL': 100.0 * sum(rouge) / len(rouge),
      'bleu_signature': str(bleu.get_signature()),  # only complete after a scoring call.
      'chrf_signature': str(chrf.get_signature()),
      'rougeL_signature': (f"tok:{bleu.tokenizer.signature()}|case:{'lc' if lowercase else 'mixed'}|"
                           f"rouge-score:{importlib.metadata.version('rouge-score')}"),
      'num_examples': len(hypotheses),
  }
  if n_bootstrap:
    metrics['bleu_ci95'], metrics['chrf_ci95'] = bleu_ci, chrf_ci
  return metrics


def score_with_config(hypotheses: list[str], references: list[str], evaluation) -> dict:
  """`score` with the options of a config's `evaluation` section (lowercase, bleu_tokenize, bootstrap_resamples)."""
  return score(hypotheses, references, lowercase=evaluation.lowercase, tokenize=evaluation.bleu_tokenize,
               n_bootstrap=evaluation.bootstrap_resamples)


def write_predictions(path: str, uids: list[str], references: list[str], hypotheses: list[str]) -> None:
  """A TSV with columns uid, reference, hypothesis."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f, delimiter='\t', quoting=csv.QUOTE_MINIMAL)
    writer.writerow(['uid', 'reference', 'hypothesis'])
    writer.writerows(zip(uids, references, hypotheses))


def update_metrics_json(workdir: str, split: str, metrics: dict) -> dict:
  """Merges `{split: metrics}` into WORKDIR/metrics.json and returns the whole file's content."""
  path = os.path.join(workdir, 'metrics.json')
  content = {}
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      content = json.load(f)
  content[split] = metrics
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(content, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)
  return content


def examples_markdown(uids, references, hypotheses, n: int = 5) -> str:
  """A small markdown table of reference vs hypothesis for TensorBoard's text tab."""
  rows = ['| uid | reference | hypothesis |', '|---|---|---|']
  for uid, ref, hyp in list(zip(uids, references, hypotheses))[:n]:
    rows.append(f'| {uid} | {ref} | {hyp} |'.replace('\n', ' '))
  return '\n'.join(rows)
