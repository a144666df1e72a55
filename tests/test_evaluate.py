"""Metrics on German, Chinese and mixed-case text against hand-computed values; sacrebleu's bootstrap intervals
against resampled corpus scores; the config fields; and `python -m slt_jax.compare` against a paired bootstrap /
approximate randomization written out here with whole-corpus rescoring."""
import json
import math
import os

import numpy as np
import pytest
import sacrebleu

from slt_jax import compare
from slt_jax import default_config
from slt_jax import evaluate

# BLEU-4 of one segment from its n-gram precisions and lengths; sacrebleu's 'exp' smoothing gives the k-th order
# with no match 1 / (2**k * total) (k = 1, 2, ... over the zero orders).
def _bleu(precisions, hyp_len, ref_len):
  bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
  return 100 * bp * math.exp(sum(math.log(p) for p in precisions) / 4)


def _lcs_f1(lcs, hyp_len, ref_len):
  p, r = lcs / hyp_len, lcs / ref_len
  return 100 * 2 * p * r / (p + r)


# ------------------------------------------------------------------------------------------------------------
# Any script counts; the tokenizer is chosen and recorded.
# ------------------------------------------------------------------------------------------------------------

def test_identical_chinese_scores_100_on_every_metric():
  text = ['我今天很高兴。', '明天下雨。']
  m = evaluate.score(text, text, tokenize='zh', n_bootstrap=0)
  assert (m['bleu'], m['chrf'], m['rougeL']) == pytest.approx((100, 100, 100))
  assert 'tok:zh' in m['bleu_signature'] and 'tok:zh' in m['rougeL_signature']
  # (rouge-score's own tokenizer made ROUGE-L 0 here.) 13a / intl leave a sentence one or two words, too short
  # for any 4-gram, so BLEU is 0 by definition; ROUGE-L still sees the words.
  for tokenize in ('13a', 'intl'):
    m = evaluate.score(text, text, tokenize=tokenize, n_bootstrap=0)
    assert (m['chrf'], m['rougeL']) == pytest.approx((100, 100)), tokenize
    assert f'tok:{tokenize}' in m['bleu_signature'] and f'tok:{tokenize}' in m['rougeL_signature']


def test_chinese_as_characters_with_zh():
  # 我喜欢吃梨 vs 我喜欢吃苹果: 5 vs 6 characters, the first 4 shared.
  hyp, ref = ['我喜欢吃梨'], ['我喜欢吃苹果']
  zh = evaluate.score(hyp, ref, tokenize='zh', n_bootstrap=0)
  assert zh['rougeL'] == pytest.approx(_lcs_f1(4, 5, 6))  # 8/11
  assert zh['bleu'] == pytest.approx(_bleu([4 / 5, 3 / 4, 2 / 3, 1 / 2], 5, 6))
  # 13a keeps each sentence one word: nothing matches.
  word = evaluate.score(hyp, ref, tokenize='13a', n_bootstrap=0)
  assert word['rougeL'] == 0 and word['bleu'] == 0
  assert word['chrf'] == zh['chrf']  # chrF is on characters whatever the BLEU tokenizer


def test_german_umlauts_stay_inside_words():
  # 8 words each, one differs: LCS 7. (a-z0-9-only tokenizing split Süden / Glätte and gave 9 of 10.)
  m = evaluate.score(['Morgen gibt es im Süden Regen und Glätte'], ['Morgen gibt es im Süden Schnee und Glätte'],
                     n_bootstrap=0)
  assert m['rougeL'] == pytest.approx(_lcs_f1(7, 8, 8))
  # n-grams containing Regen miss: precisions 7/8, 5/7, 3/6, 2/5; equal lengths
  assert m['bleu'] == pytest.approx(_bleu([7 / 8, 5 / 7, 3 / 6, 2 / 5], 8, 8))


def test_intl_splits_unicode_punctuation():
  hyp, ref = ['Er sagt „Hallo“'], ['Er sagt Hallo']
  assert evaluate.score(hyp, ref, tokenize='13a', n_bootstrap=0)['rougeL'] == pytest.approx(_lcs_f1(2, 3, 3))
  intl = evaluate.score(hyp, ref, tokenize='intl', n_bootstrap=0)  # Er sagt „ Hallo “
  assert intl['rougeL'] == pytest.approx(_lcs_f1(3, 5, 3))
  assert intl['bleu'] == pytest.approx(_bleu([3 / 5, 1 / 4, 1 / (2 * 3), 1 / (4 * 2)], 5, 3))


def test_lowercase_applies_to_every_metric():
  hyp, ref = ['The Cat sat on the Mat', 'Über den Bären im Süden'], ['the cat sat on the mat', 'über den bären im süden']
  lower = evaluate.score(hyp, ref, lowercase=True, n_bootstrap=0)
  assert (lower['bleu'], lower['chrf'], lower['rougeL']) == pytest.approx((100, 100, 100))
  assert 'case:lc' in lower['bleu_signature'] and 'case:lc' in lower['chrf_signature']
  assert 'case:lc' in lower['rougeL_signature']
  cased = evaluate.score(hyp[:1], ref[:1], lowercase=False, n_bootstrap=0)
  assert cased['rougeL'] == pytest.approx(_lcs_f1(3, 6, 6))  # sat on the
  # 1-grams sat/on/the, 2-grams "sat on" "on the", 3-gram "sat on the", no 4-gram (smoothed 1/(2*3))
  assert cased['bleu'] == pytest.approx(_bleu([3 / 6, 2 / 5, 1 / 4, 1 / 6], 6, 6))
  assert cased['chrf'] < 100
  assert 'case:mixed' in cased['rougeL_signature']


def test_score_rejects_bad_input():
  with pytest.raises(ValueError, match='2 hypotheses but 1 references'):
    evaluate.score(['a', 'b'], ['a'])
  with pytest.raises(ValueError, match='no hypotheses'):
    evaluate.score([], [])
  with pytest.raises(ValueError, match="'ja-mecab' is not one of"):
    evaluate.score(['a'], ['a'], tokenize='ja-mecab')
  with pytest.raises(ValueError, match='at least 40'):
    evaluate.score(['a'], ['a'], n_bootstrap=10)


# ------------------------------------------------------------------------------------------------------------
# 95% confidence intervals.
# ------------------------------------------------------------------------------------------------------------

def _corpus(n=30, seed=0):
  rng = np.random.default_rng(seed)
  vocab = [f'wört{i}' for i in range(60)]
  refs = [' '.join(rng.choice(vocab, size=rng.integers(4, 10))) for _ in range(n)]
  def noisy(keep):
    return [' '.join(w if rng.random() < keep else rng.choice(vocab) for w in r.split()) for r in refs]
  return refs, noisy(0.5), noisy(0.7)


def _interval(scores):
  """sacrebleu's 95% interval of resampled scores: (mean, half the spread of the n//40-th from each end)."""
  scores, cut = np.sort(scores), len(scores) // 40
  return scores.mean(), 0.5 * (scores[len(scores) - cut - 1] - scores[cut])


def test_confidence_intervals_match_resampled_corpus_scores():
  refs, hyps, _ = _corpus()
  resamples = 200
  m = evaluate.score(hyps, refs, n_bootstrap=resamples)
  # The oracle: whole corpora of resampled segments (sacrebleu's seed and index draw), each scored afresh.
  idx = np.random.default_rng(12345).choice(len(refs), size=(resamples, len(refs)), replace=True)
  for key, metric in (('bleu', sacrebleu.BLEU), ('chrf', sacrebleu.CHRF)):
    scores = [metric().corpus_score([hyps[i] for i in row], [[refs[i] for i in row]]).score for row in idx]
    mean, half = _interval(scores)
    assert m[f'{key}_ci95']['mean'] == pytest.approx(mean, abs=1e-4)
    assert m[f'{key}_ci95']['half_width'] == pytest.approx(half, abs=1e-4)
    assert half > 0.5  # a real interval on 30 noisy segments
    assert f'bs:{resamples}|seed:12345' in m[f'{key}_signature']
  assert 'bleu_ci95' not in evaluate.score(hyps, refs, n_bootstrap=0)


# ------------------------------------------------------------------------------------------------------------
# The config's evaluation section.
# ------------------------------------------------------------------------------------------------------------

def test_score_with_config_follows_the_evaluation_fields():
  config = default_config.get_config()
  config.evaluation.bleu_tokenize, config.evaluation.lowercase = 'zh', True
  config.evaluation.bootstrap_resamples = 0
  default_config.validate(config, require_data=False)
  m = evaluate.score_with_config(['我喜欢吃梨 OK'], ['我喜欢吃苹果 ok'], config.evaluation)
  assert m == evaluate.score(['我喜欢吃梨 OK'], ['我喜欢吃苹果 ok'], lowercase=True, tokenize='zh', n_bootstrap=0)
  assert 'tok:zh' in m['bleu_signature'] and 'case:lc' in m['bleu_signature'] and 'bleu_ci95' not in m


@pytest.mark.parametrize('field, value, message', [
    ('bleu_tokenize', 'ja', 'evaluation.bleu_tokenize must be one of'),
    ('bleu_tokenize', 'spm', 'evaluation.bleu_tokenize must be one of'),
    ('bootstrap_resamples', 10, 'evaluation.bootstrap_resamples must be 0'),
    ('bootstrap_resamples', -1, 'evaluation.bootstrap_resamples must be 0'),
])
def test_validate_rejects_bad_evaluation_fields(field, value, message):
  config = default_config.get_config()
  config.evaluation[field] = value
  with pytest.raises(default_config.ConfigError, match=message):
    default_config.validate(config, require_data=False)


# ------------------------------------------------------------------------------------------------------------
# python -m slt_jax.compare
# ------------------------------------------------------------------------------------------------------------

def _workdir(path, uids, refs, hyps, split='test', evaluation=None):
  os.makedirs(path, exist_ok=True)
  evaluate.write_predictions(os.path.join(path, f'predictions_{split}.tsv'), uids, refs, hyps)
  if evaluation is not None:
    with open(os.path.join(path, 'config.json'), 'w', encoding='utf-8') as f:
      json.dump({'evaluation': evaluation}, f)
  return str(path)


def _oracle_p_values(refs, hyps_a, hyps_b, metric, resamples, trials):
  """Paired bootstrap (Koehn 2004, as Moses / sacrebleu centre it) and approximate randomization p-values of
  B vs A, rescoring whole corpora with `metric`, with sacrebleu's seed and draws."""
  score = lambda hyps, rows: metric().corpus_score([hyps[i] for i in rows], [[refs[i] for i in rows]]).score
  n, everything = len(refs), range(len(refs))
  observed = abs(score(hyps_b, everything) - score(hyps_a, everything))
  idx = np.random.default_rng(12345).choice(n, size=(resamples, n), replace=True)
  diffs = np.array([abs(score(hyps_b, row) - score(hyps_a, row)) for row in idx])
  p_bs = (np.sum(diffs - diffs.mean() > observed) + 1) / (resamples + 1)
  swap = np.random.default_rng(12345).integers(2, size=(trials, n), dtype=bool)
  shuffled = []
  for row in swap:  # each segment's two translations trade places where `row` says so
    a = [x if s else y for x, y, s in zip(hyps_a, hyps_b, row)]
    b = [y if s else x for x, y, s in zip(hyps_a, hyps_b, row)]
    shuffled.append(abs(score(a, everything) - score(b, everything)))
  p_ar = (np.sum(np.array(shuffled) > observed) + 1) / (trials + 1)
  return p_bs, p_ar


def test_compare_gives_the_paired_tests_p_values(tmp_path, capsys):
  refs, hyps_a, hyps_b = _corpus(n=25, seed=1)
  uids = [f'clip{i:03d}' for i in range(len(refs))]
  run_a = _workdir(tmp_path / 'a', uids, refs, hyps_a)
  order = np.random.default_rng(0).permutation(len(refs))  # B's rows in another order: matched by uid
  run_b = _workdir(tmp_path / 'b', [uids[i] for i in order], [refs[i] for i in order], [hyps_b[i] for i in order])
  out = tmp_path / 'cmp' / 'result.json'
  assert compare.main([run_a, run_b, '--bs_resamples=100', '--ar_trials=100', f'--json={out}']) == 0
  printed = capsys.readouterr().out
  assert 'paired bootstrap resampling' in printed and 'paired approximate randomization' in printed
  result = json.loads(out.read_text(encoding='utf-8'))
  assert result['split'] == 'test' and result['num_segments'] == 25 and not result['identical']
  for key, metric in (('bleu', sacrebleu.BLEU), ('chrf', sacrebleu.CHRF)):
    bs, ar = result['tests']['bs']['metrics'][key], result['tests']['ar']['metrics'][key]
    expected = {'a': evaluate.score(hyps_a, refs, n_bootstrap=0)[key],
                'b': evaluate.score(hyps_b, refs, n_bootstrap=0)[key]}
    assert (bs['a'], bs['b']) == pytest.approx((expected['a'], expected['b']))
    assert bs['difference'] == pytest.approx(expected['b'] - expected['a'])
    p_bs, p_ar = _oracle_p_values(refs, hyps_a, hyps_b, metric, 100, 100)
    assert bs['p_value'] == pytest.approx(p_bs) and ar['p_value'] == pytest.approx(p_ar)
    assert bs['b_ci95']['half_width'] > 0 and 'bs:100' in bs['signature'] and 'ar:100' in ar['signature']
  assert result['tests']['bs']['metrics']['bleu']['p_value'] < 0.05  # 70% vs 50% of the words kept


def test_compare_identical_runs_have_p_value_1(tmp_path):
  refs, hyps, _ = _corpus(n=10)
  uids = [str(i) for i in range(10)]
  run_a = _workdir(tmp_path / 'a', uids, refs, hyps)
  run_b = _workdir(tmp_path / 'b', uids, refs, hyps)
  result = compare.compare(run_a, run_b, bs_resamples=50, ar_trials=50)
  assert result['identical']
  for test in ('bs', 'ar'):
    assert [m['p_value'] for m in result['tests'][test]['metrics'].values()] == [1.0, 1.0]


def test_compare_takes_the_runs_scoring_settings(tmp_path):
  refs, hyps = ['我喜欢吃苹果', '明天下雨'], ['我喜欢吃梨', '明天下雪']
  zh = {'bleu_tokenize': 'zh', 'lowercase': False}
  run_a = _workdir(tmp_path / 'a', ['1', '2'], refs, refs, evaluation=zh)
  run_b = _workdir(tmp_path / 'b', ['1', '2'], refs, hyps, evaluation=zh)
  result = compare.compare(run_a, run_b, tests=('bs',), bs_resamples=50)
  assert result['tokenize'] == 'zh'
  assert result['tests']['bs']['metrics']['bleu']['b'] == pytest.approx(
      evaluate.score(hyps, refs, tokenize='zh', n_bootstrap=0)['bleu'])
  # Runs scored differently must be told which way to score.
  _workdir(tmp_path / 'b', ['1', '2'], refs, hyps, evaluation={'bleu_tokenize': '13a', 'lowercase': False})
  with pytest.raises(compare.CompareError, match='--tokenize'):
    compare.compare(run_a, run_b, tests=('bs',), bs_resamples=50)
  assert compare.compare(run_a, run_b, tests=('bs',), tokenize='13a', bs_resamples=50)['tokenize'] == '13a'


def test_compare_refuses_runs_of_different_data(tmp_path, capsys):
  refs, hyps_a, hyps_b = _corpus(n=6)
  uids = [f'u{i}' for i in range(6)]
  run_a = _workdir(tmp_path / 'a', uids, refs, hyps_a)
  cases = {
      'other_uids': (_workdir(tmp_path / 'b1', uids[:5] + ['zz'], refs, hyps_b), 'do not hold the same segments'),
      'other_refs': (_workdir(tmp_path / 'b2', uids, refs[:5] + ['anders'], hyps_b),
                     "different references for 1 uids \\(e.g. 'u5'\\)"),
      'no_file': (str(tmp_path / 'empty'), 'predictions_test.tsv does not exist'),
  }
  os.makedirs(tmp_path / 'empty')
  for name, (run_b, message) in cases.items():
    with pytest.raises(compare.CompareError, match=message):
      compare.compare(run_a, run_b, tests=('bs',), bs_resamples=50)
  val = _workdir(tmp_path / 'v', uids, refs, hyps_b, split='val')
  with pytest.raises(compare.CompareError, match="'test' split but .* the 'val' split"):
    compare.compare(os.path.join(run_a, 'predictions_test.tsv'), os.path.join(val, 'predictions_val.tsv'))
  # The command line reports these as an error message and exit status 2, not a traceback.
  assert compare.main([run_a, cases['other_refs'][0]]) == 2
  assert 'error:' in capsys.readouterr().err


def test_confidence_interval_of_a_small_corpus_whose_chrf_resamples_mix_float_types():
  """sacrebleu's own CHRF(...).corpus_score(n_bootstrap=...) raises TypeError here (statistics.mean of python
  floats and float32s): tiny validation splits hit it."""
  metrics = evaluate.score(['he is', 'x', 'a b'], ['he is a', 'y', 'a b c'], n_bootstrap=1000)
  low, high = (metrics['chrf_ci95']['mean'] + s * metrics['chrf_ci95']['half_width'] for s in (-1, 1))
  assert 0.0 <= low < metrics['chrf'] < high
  assert 'bs:1000|seed:12345' in metrics['chrf_signature']
