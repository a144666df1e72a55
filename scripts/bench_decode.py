"""Tokens per second of our jitted decoding vs HF PyTorch `generate`, same tiny T5 checkpoint and inputs.

  .venv/bin/python scripts/bench_decode.py                      # beam search, 4 beams
  .venv/bin/python scripts/bench_decode.py --num_beams=1 --json  # greedy; one JSON object on stdout

A random tiny T5 v1.1 is written with transformers to a temporary directory and loaded by both sides. Tokens
= tokens of the returned (best) sequences up to and including EOS, the same count for both when their
outputs agree (the `agree` field). Our compile time (first call) is reported apart; the timings are the
median of --runs calls after it. The CPU may be shared with other processes: compare figures from one run.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
import torch
import transformers
from flax import nnx

import slt_jax  # noqa: F401  pylint: disable=unused-import  (flax eager sharding off)
from slt_jax import decode
from slt_jax.models import from_pretrained


def _args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--src_len', type=int, default=32)
  p.add_argument('--max_new_tokens', type=int, default=32)
  p.add_argument('--num_beams', type=int, default=4)
  p.add_argument('--length_penalty', type=float, default=1.0)
  p.add_argument('--runs', type=int, default=5)
  p.add_argument('--vocab', type=int, default=512)
  p.add_argument('--d_model', type=int, default=64)
  p.add_argument('--layers', type=int, default=2, help='encoder and decoder layers each')
  p.add_argument('--torch_threads', type=int, default=0, help='torch.set_num_threads (0 = torch default)')
  p.add_argument('--scan_layers', type=int, default=1, help='1: layers under nnx.scan (the default config)')
  p.add_argument('--json', action='store_true', help='print one JSON object instead of a table')
  return p.parse_args(argv)


def _checkpoint(path, a):
  torch.manual_seed(0)
  cfg = transformers.T5Config(vocab_size=a.vocab, d_model=a.d_model, d_kv=a.d_model // 4, d_ff=4 * a.d_model,
                              num_layers=a.layers, num_decoder_layers=a.layers, num_heads=4, dropout_rate=0.0,
                              feed_forward_proj='gated-gelu', tie_word_embeddings=False,
                              decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  model = transformers.T5ForConditionalGeneration(cfg).eval()
  with torch.no_grad():  # larger weights than the default init: outputs that depend on the input
    for p in model.parameters():
      if p.ndim == 2:
        p.normal_(0, 0.3)
  model.save_pretrained(path)
  return model


def _count(rows, eos=1):
  """Tokens up to and including the first EOS, and the rows themselves so cut."""
  out = []
  for r in rows:
    r = [int(t) for t in r]
    out.append(r[:r.index(eos) + 1] if eos in r else r)
  return sum(map(len, out)), out


def _time(fn, runs):
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times, result


def main(argv=None):
  a = _args(argv)
  if a.torch_threads:
    torch.set_num_threads(a.torch_threads)
  rs = np.random.RandomState(0)
  ids = rs.randint(2, a.vocab, (a.batch, a.src_len))
  mask = np.ones_like(ids, bool)
  mask[::2, a.src_len // 2:] = False  # half the rows padded
  ids[~mask] = 0

  with tempfile.TemporaryDirectory() as tmp:
    hf_model = _checkpoint(tmp, a)
    ours = decode.TextSeq2Seq(from_pretrained(tmp, scan_layers=bool(a.scan_layers)))

  kw = dict(max_new_tokens=a.max_new_tokens, num_beams=a.num_beams, length_penalty=a.length_penalty,
            do_sample=False)
  t_ids, t_mask = torch.tensor(ids), torch.tensor(mask).long()

  def hf_run():
    with torch.no_grad():
      return hf_model.generate(input_ids=t_ids, attention_mask=t_mask, **kw).numpy()[:, 1:]

  if a.num_beams > 1:
    fn = nnx.jit(lambda m, x, y: decode.beam_search(m, x, y, a.max_new_tokens, a.num_beams,
                                                     length_penalty=a.length_penalty))
  else:
    fn = nnx.jit(lambda m, x, y: decode.greedy(m, x, y, a.max_new_tokens))
  j_ids, j_mask = jax.numpy.asarray(ids), jax.numpy.asarray(mask)
  ours_run = lambda: np.asarray(jax.block_until_ready(fn(ours, j_ids, j_mask)))

  t0 = time.perf_counter()
  ours_run()
  compile_s = time.perf_counter() - t0
  hf_run()  # warm-up (allocator, thread pools)
  hf_s, hf_times, hf_out = _time(hf_run, a.runs)
  ours_s, ours_times, ours_out = _time(ours_run, a.runs)
  hf_tokens, hf_rows = _count(hf_out)
  ours_tokens, ours_rows = _count(ours_out)
  result = dict(
      decoding='beam' if a.num_beams > 1 else 'greedy', num_beams=a.num_beams, batch=a.batch,
      src_len=a.src_len, max_new_tokens=a.max_new_tokens, model=f'T5 d_model={a.d_model} layers={a.layers}+'
      f'{a.layers} vocab={a.vocab}', cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
      runs=a.runs, agree=sum(x == y for x, y in zip(hf_rows, ours_rows)),
      hf_s=hf_s, hf_tokens=hf_tokens, hf_tokens_per_s=hf_tokens / hf_s,
      ours_s=ours_s, ours_tokens=ours_tokens, ours_tokens_per_s=ours_tokens / ours_s,
      ours_compile_s=compile_s, speedup=(ours_tokens / ours_s) / (hf_tokens / hf_s),
      hf_times=hf_times, ours_times=ours_times)
  if a.json:
    print(json.dumps(result))
  else:
    print(f"{result['decoding']} ({a.num_beams} beams), batch {a.batch}, {a.max_new_tokens} new tokens, "
          f"{result['model']}; median of {a.runs} runs; rows agreeing: {result['agree']}/{a.batch}")
    print(f"  HF generate (torch, {result['torch_threads']} threads): {hf_s * 1e3:8.1f} ms  "
          f"{result['hf_tokens_per_s']:9.1f} tokens/s")
    print(f"  slt_jax (jit, while_loop):       {ours_s * 1e3:8.1f} ms  {result['ours_tokens_per_s']:9.1f} tokens/s"
          f"   (compile {compile_s:.1f} s)")
    print(f"  speedup: {result['speedup']:.1f}x")
  return result


if __name__ == '__main__':
  main(sys.argv[1:])
