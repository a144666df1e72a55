"""Translation metrics as the field reports them, and the files an evaluation leaves in the workdir.

BLEU-4 (sacrebleu, 13a tokenisation, cased unless `lowercase`), chrF (sacrebleu) and ROUGE-L F1 (rouge-score),
all on a 0-100 scale.
"""
import csv
import json
import os

import sacrebleu
from rouge_score import rouge_scorer


def score(hypotheses: list[str], references: list[str], lowercase: bool = False) -> dict:
  """{'bleu', 'chrf', 'rougeL', 'bleu_signature', 'num_examples'} for parallel lists of strings."""
  if len(hypotheses) != len(references):
    raise ValueError(f'{len(hypotheses)} hypotheses but {len(references)} references')
  bleu = sacrebleu.BLEU(lowercase=lowercase)
  bleu_score = bleu.corpus_score(hypotheses, [references])
  chrf = sacrebleu.CHRF(lowercase=lowercase).corpus_score(hypotheses, [references])
  scorer = rouge_scorer.RougeScorer(['rougeL'], use_stemmer=False)
  rouge = [scorer.score(r.lower() if lowercase else r, h.lower() if lowercase else h)['rougeL'].fmeasure
           for h, r in zip(hypotheses, references)]
  return {
      'bleu': bleu_score.score,
      'chrf': chrf.score,
      'rougeL': 100.0 * sum(rouge) / max(len(rouge), 1),
      'bleu_signature': str(bleu.get_signature()),  # only complete after a scoring call.
      'num_examples': len(hypotheses),
  }


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
