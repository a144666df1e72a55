"""transformers' beam search as the oracle of decode.beam_search (test_decode, test_decode_bart).

Ours and HF's log-probabilities differ by float32 rounding (~1e-5 on these tiny models with large weights), so
a decision HF takes by a smaller margin can go the other way in ours. The one such decision seen is HF's
early-stop heuristic (`_check_early_stop_heuristic`: can the best running beam, scored at its current length,
still beat the worst finished hypothesis?), decided by 1e-7 on one of test_decode's rows: we kept searching
and found a better hypothesis. `generate` records, per row, how close each of those decisions came, so a test
can require every row to agree except where HF's own decision was a tie at float32 resolution.
"""
import numpy as np
import pytest
import torch
from transformers.generation import utils as hf_generation


def generate(model, ids, mask, num_beams: int, **kwargs):
  """HF beam search with all `num_beams` finished hypotheses.

  Returns (tokens i64[B, K, T] (prompt included), scores f32[B, K] best first, stop_margin f32[B]): the
  smallest |best running score - worst finished score| over the early-stop checks HF made on the row while
  it was open with K finished hypotheses (inf when it never had K).
  """
  margins = np.full(len(ids), np.inf)
  check = hf_generation.GenerationMixin._check_early_stop_heuristic

  def recording_check(**kw):
    full = kw['is_sent_finished'].all(dim=1) & kw['is_early_stop_heuristic_unsatisfied'][:, 0]
    length = kw['cur_len'] - kw['decoder_prompt_len']
    if kw['early_stopping'] == 'never' and kw['length_penalty'] > 0.0:
      length = kw['max_length'] - kw['decoder_prompt_len']
    best = kw['running_beam_scores'][:, 0] / length ** kw['length_penalty']
    gap = (best - kw['beam_scores'].min(dim=1).values).abs().numpy()
    margins[full.numpy()] = np.minimum(margins, gap)[full.numpy()]
    return check(**kw)

  with pytest.MonkeyPatch.context() as patch, torch.no_grad():
    patch.setattr(hf_generation.GenerationMixin, '_check_early_stop_heuristic', staticmethod(recording_check))
    out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask).long(), do_sample=False,
                         num_beams=num_beams, num_return_sequences=num_beams, return_dict_in_generate=True,
                         output_scores=True, **kwargs)
  b = len(ids)
  return (out.sequences.numpy().reshape(b, num_beams, -1), out.sequences_scores.numpy().reshape(b, num_beams),
          margins)


def assert_agree(want, want_scores, margins, got, got_scores):
  """Ours (token lists got [B][K], scores f32[B, K]) against HF's (want, want_scores, margins from generate).

  Each row: the same K hypotheses in the same order, with scores equal to float32 rounding (2e-4: sums of
  up to 20 log-probabilities, each ~1e-5 off, over a length penalty), unless HF's early-stop heuristic
  decided the row within that tolerance (a tie at float32 resolution); then HF's best hypothesis is still
  among ours, with its score.
  """
  tol = 2e-4
  differ = []
  for i, (w, g) in enumerate(zip(want, got)):
    if w == g:
      np.testing.assert_allclose(got_scores[i], want_scores[i], atol=tol, rtol=0, err_msg=f'row {i}')
      continue
    differ.append(i)
    assert margins[i] <= tol, (f'row {i} differs from HF and is no tie (HF stop margin {margins[i]:.2e}): '
                               f'HF {w} {want_scores[i]}, ours {g} {got_scores[i]}')
    assert w[0] in g, (i, w[0], g)
    np.testing.assert_allclose(got_scores[i][g.index(w[0])], want_scores[i][0], atol=tol, rtol=0)
  return differ
