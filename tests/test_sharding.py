"""Sharding over a (data, fsdp, tensor) mesh of 8 CPU devices: same losses as one device, the parameter
shardings the rule table asks for, pretrained weights placed on their shardings, checkpoints across meshes.

The 8-device checks run in one child process (`python tests/test_sharding.py OUT.json`, with 8 host CPU
devices), because the pytest process keeps one device for the other test modules. The child uses the trainer's
own machinery: state.create_sharded_state (abstract init -> shardings -> jitted init onto them),
sharding.jit_train_step (in/out shardings, donated state), sharding.global_batch and the orbax Checkpoints.
The tests then check what it wrote.
"""
import functools
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

MESHES = ((1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2))
FAMILIES = ('t5', 'llama')
STEPS = 10
B, T, K, C, L = 8, 16, 4, 3, 6
VOCAB = {'t5': 64, 'llama': 65}  # 65: not divisible by tensor=2, so the vocab axis must stay replicated.


def _config(family):
  from slt_jax import default_config  # pylint: disable=g-import-not-at-top
  config = default_config.get_config()
  config.model.family = family
  config.model.pose.update(hidden=32, conv_layers=1, conv_stride=2, dropout=0.1)
  if family == 't5':
    # No dropout inside T5 (its many dropout sites triple the compile time); the pose front end keeps its
    # dropout, so equal losses also say that dropout masks do not depend on the sharding.
    config.model.arch.update(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                             dropout_rate=0.0)
  else:
    config.model.arch = dict(model_type='llama', vocab_size=VOCAB[family], hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                             bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config.model.pose_encoder.update(num_layers=1, num_heads=2)
  config.training.learning_rate = 3e-3
  config.training.warmup_steps = 2
  return config


def _batches(vocab):
  rng = np.random.default_rng(0)
  out = []
  for _ in range(STEPS):
    frames = rng.integers(T // 2, T + 1, B)
    lengths = rng.integers(2, L + 1, B)
    labels = rng.integers(3, vocab, (B, L)).astype(np.int32)
    labels[np.arange(B), lengths - 1] = 2  # EOS
    label_mask = np.arange(L)[None] < lengths[:, None]
    out.append({'poses': rng.normal(size=(B, T, K, C)).astype(np.float32),
                'pose_mask': np.arange(T)[None] < frames[:, None],
                'labels': np.where(label_mask, labels, 0), 'label_mask': label_mask,
                'example_mask': np.ones(B, bool), 'index': np.arange(B, dtype=np.int32)})
  return out


# ------------------------------------------------------------------------------------------------------------
# The child process (8 CPU devices).
# ------------------------------------------------------------------------------------------------------------
def _child(out_path):
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_num_cpu_devices', 8)
  import ml_collections  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import slt_jax  # pylint: disable=g-import-not-at-top,unused-import  (eager sharding off)
  from slt_jax.models import hf, slt  # pylint: disable=g-import-not-at-top
  from slt_jax.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from slt_jax.train import optim, sharding, state as state_lib  # pylint: disable=g-import-not-at-top
  from slt_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 8, jax.devices()

  def mesh_of(shape):
    devices = jax.devices()[:int(np.prod(shape))]
    return sharding.make_mesh(ml_collections.ConfigDict(dict(zip(sharding.MESH_AXES, shape))), devices)

  def specs(params):
    """path -> (PartitionSpec padded to the rank, shard shape on device 0, global shape)."""
    out = {}
    for path, var in nnx.to_flat_state(params):
      x = var.get_value()
      spec = tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))
      out['/'.join(map(str, path))] = ([list(a) if isinstance(a, tuple) else a for a in spec],
                                       list(x.addressable_shards[0].data.shape), list(x.shape))
    return out

  def host(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]

  def setup(config, mesh, vocab, abstract=False):
    tx = optim.make_optimizer(config, STEPS)
    build = lambda: slt.build_model(config, vocab, K * C, rngs=nnx.Rngs(params=0))
    graphdef, state, rest, shardings = state_lib.create_sharded_state(
        build, tx, mesh, seed=1, eager=bool(config.model.name), abstract=abstract)
    return graphdef, state, rest, shardings, tx

  results = {'losses': {}, 'specs': {}, 'after_specs': {}, 'timings': {}}
  ckpt_dir = os.path.join(os.path.dirname(out_path), 'ckpt')
  for family in FAMILIES:
    config, vocab = _config(family), VOCAB[family]
    batches = _batches(vocab)
    for shape in MESHES:
      t0 = time.time()
      mesh = mesh_of(shape)
      graphdef, state, rest, shardings, tx = setup(config, mesh, vocab)
      key = f'{family} {shape}'
      results['specs'][key] = specs(state.params)
      # The decoder-only run draws its dropout masks with rbg (the trainer's choice on CPU): equal losses
      # across meshes then say rbg masks do not depend on the sharding either.
      train = sharding.jit_train_step(
          functools.partial(step_lib.train_step, graphdef=graphdef, tx=tx, label_smoothing=0.1,
                            rng_impl='rbg' if family == 'llama' else 'threefry'), shardings, rest, mesh)
      losses = []
      for batch in batches:
        state, metrics = train(state, sharding.global_batch(batch, sharding.batch_sharding(mesh)))
        losses.append(float(metrics['loss']))
      results['losses'][key] = losses
      results['after_specs'][key] = specs(state.params)
      if family == 't5' and shape == (2, 2, 2):
        # A checkpoint written on (2, 2, 2), restored on one device and on (4, 2, 1).
        saved = host(state)
        ckpt = checkpoint_lib.Checkpoints(ckpt_dir, keep=1)
        ckpt.save(STEPS, state, {'step': STEPS})
        ckpt.wait()
        for target_shape in ((1, 1, 1), (4, 2, 1)):
          target_mesh = mesh_of(target_shape)
          _, target, _, target_shardings, _ = setup(config, target_mesh, vocab, abstract=True)
          restored, meta = ckpt.restore_latest(target)
          same_sharding = all(x.sharding == s for x, s in zip(jax.tree.leaves(restored),
                                                                  jax.tree.leaves(target_shardings)))
          equal = all(np.array_equal(a, b) for a, b in zip(saved, host(restored)))
          results[f'restore {target_shape}'] = dict(equal=equal, same_sharding=same_sharding,
                                                    step=meta['step'], n=len(saved))
        ckpt.close()
        # Pretrained path: the trained lm saved as an HF checkpoint, loaded by build_model on the host and
        # placed array by array onto the (2, 2, 2) shardings.
        lm_dir = os.path.join(os.path.dirname(out_path), 'hf_t5')
        hf.save_pretrained(nnx.merge(graphdef, state.params, rest).lm, lm_dir)
        pre = config.copy_and_resolve_references()
        pre.model.name = lm_dir
        _, pstate, _, _, _ = setup(pre, mesh, vocab)
        results['pretrained_specs'] = specs(pstate.params)
        trained_lm = {k: v for k, v in nnx.to_flat_state(state.params) if k[0] == 'lm'}
        results['pretrained_equal'] = all(
            np.array_equal(np.asarray(trained_lm[k].get_value()), np.asarray(v.get_value()))
            for k, v in nnx.to_flat_state(pstate.params) if k[0] == 'lm') and len(trained_lm) > 0
      results['timings'][key] = time.time() - t0
  with open(out_path, 'w') as f:
    json.dump(results, f)


# ------------------------------------------------------------------------------------------------------------
# The tests (pytest process).
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def child(tmp_path_factory):
  out = tmp_path_factory.mktemp('sharding') / 'results.json'
  # Optimisation level 0: these tiny programs compile 2-3x faster and both sides of each comparison use it.
  flags = ' --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0'
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') + flags).strip())
  t0 = time.time()
  proc = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True, text=True,
                        timeout=1800, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode == 0, proc.stderr[-6000:]
  with open(out) as f:
    results = json.load(f)
  results['wall'] = time.time() - t0
  print(f'child: {results["wall"]:.0f}s', {k: round(v, 1) for k, v in results['timings'].items()})
  return results


@pytest.mark.slow
@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('shape', MESHES[1:])
def test_sharded_losses_match_one_device(child, family, shape):
  one = np.asarray(child['losses'][f'{family} {MESHES[0]}'])
  sharded = np.asarray(child['losses'][f'{family} {shape}'])
  assert len(sharded) == STEPS and np.all(np.isfinite(sharded))
  assert one[-1] < one[0]  # it trains
  np.testing.assert_allclose(sharded, one, rtol=1e-4)


N = None
# (family, mesh) -> {parameter path: PartitionSpec as a tuple of mesh axes per dimension}.
EXPECTED = {
    ('t5', (2, 2, 2)): {
        'lm/shared/embedding': ('tensor', 'fsdp'),                           # vocab, embed
        'lm/lm_head/kernel': ('fsdp', 'tensor'),                             # embed, vocab
        'lm/encoder/layers/self_attn/q_proj/kernel': (N, 'fsdp', 'tensor'),  # layers, embed, heads
        'lm/encoder/layers/self_attn/o_proj/kernel': (N, 'tensor', 'fsdp'),  # layers, heads, embed
        'lm/decoder/layers/cross_attn/k_proj/kernel': (N, 'fsdp', 'tensor'),  # layers, embed, kv_heads
        'lm/encoder/layers/mlp/wi_0/kernel': (N, 'fsdp', 'tensor'),          # layers, embed, mlp
        'lm/decoder/layers/mlp/wo/kernel': (N, 'tensor', 'fsdp'),            # layers, mlp, embed
        'lm/encoder/rel_bias/embedding': (N, 'tensor'),                      # relpos, heads
        'lm/encoder/final_norm/scale': (N,),                                 # norm
        'lm/decoder/layers/self_norm/scale': (N, N),                         # layers, norm
        'frontend/out/kernel': (N, 'fsdp'),                                  # None, embed
        'frontend/proj/kernel': (N, N),                                      # pose_in, None
    },
    ('t5', (2, 4, 1)): {
        'lm/shared/embedding': (N, 'fsdp'),
        'lm/lm_head/kernel': ('fsdp', N),
        'lm/encoder/layers/self_attn/q_proj/kernel': (N, 'fsdp', N),
        'lm/decoder/layers/mlp/wo/kernel': (N, N, 'fsdp'),
        'lm/encoder/rel_bias/embedding': (N, N),
    },
    ('llama', (2, 2, 2)): {
        'lm/embed_tokens/embedding': (N, 'fsdp'),                 # vocab 65 % 2 != 0: stays replicated
        'lm/lm_head/kernel': ('fsdp', N),
        'lm/layers/self_attn/q_proj/kernel': (N, 'fsdp', 'tensor'),
        'lm/layers/self_attn/k_proj/kernel': (N, 'fsdp', 'tensor'),  # 2 kv heads over tensor=2
        'lm/layers/self_attn/o_proj/kernel': (N, 'tensor', 'fsdp'),
        'lm/layers/mlp/gate_proj/kernel': (N, 'fsdp', 'tensor'),
        'lm/layers/mlp/down_proj/kernel': (N, 'tensor', 'fsdp'),
        'lm/norm/scale': (N,),
        'encoder/proj_in/kernel': ('fsdp', 'tensor'),  # the pose encoder -> LLM projector
        'answer_start': ('fsdp',),
    },
    ('llama', (2, 4, 1)): {
        'lm/layers/self_attn/q_proj/kernel': (N, 'fsdp', N),
        'lm/layers/mlp/down_proj/kernel': (N, N, 'fsdp'),
    },
}


def _mesh_size(axes, shape):
  sizes = dict(zip(('data', 'fsdp', 'tensor'), shape))
  axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  return int(np.prod([sizes[a] for a in axes]))


@pytest.mark.slow
@pytest.mark.parametrize('family,shape', sorted(EXPECTED))
def test_parameter_shardings_follow_the_rules(child, family, shape):
  got = child['specs'][f'{family} {shape}']
  for path, spec in EXPECTED[family, shape].items():
    assert path in got, (path, sorted(got))
    assert tuple(got[path][0]) == spec, (path, got[path][0], spec)
  # Training keeps every parameter on its sharding (out_shardings), and each device holds only its shard.
  assert child['after_specs'][f'{family} {shape}'] == got
  for path, (spec, shard, full) in got.items():
    assert shard == [d // _mesh_size(a, shape) for d, a in zip(full, spec)], path


@pytest.mark.slow
@pytest.mark.parametrize('family', FAMILIES)
def test_pure_data_parallel_replicates_parameters(child, family):
  for path, (spec, shard, full) in child['specs'][f'{family} (8, 1, 1)'].items():
    assert all(a is None for a in spec) and shard == full, path


@pytest.mark.slow
@pytest.mark.parametrize('target', ['(1, 1, 1)', '(4, 2, 1)'])
def test_checkpoint_from_222_restores_on_other_meshes(child, target):
  r = child[f'restore {target}']
  assert r['equal'] and r['same_sharding'] and r['step'] == STEPS and r['n'] > 10, r


@pytest.mark.slow
def test_pretrained_weights_are_placed_on_their_shardings(child):
  assert child['pretrained_equal']
  for path, spec in EXPECTED['t5', (2, 2, 2)].items():
    assert tuple(child['pretrained_specs'][path][0]) == spec, path


# --- the rule table itself (no devices needed) --------------------------------------------------------------

def test_logical_to_spec_divisibility_and_axis_reuse():
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from slt_jax.train import sharding  # pylint: disable=g-import-not-at-top
  mesh = jax.sharding.AbstractMesh((2, 4, 2), sharding.MESH_AXES)
  assert sharding.logical_to_spec(('embed', 'mlp'), (64, 128), mesh) == P('fsdp', 'tensor')
  assert sharding.logical_to_spec(('embed', 'mlp'), (6, 128), mesh) == P(None, 'tensor')  # 6 % 4
  assert sharding.logical_to_spec(('vocab', 'embed'), (33, 64), mesh) == P(None, 'fsdp')  # 33 % 2
  assert sharding.logical_to_spec(('heads', 'mlp'), (8, 8), mesh) == P('tensor', None)  # tensor used once
  assert sharding.logical_to_spec(('batch', None), (16, 3), mesh) == P(('data', 'fsdp'), None)
  assert sharding.logical_to_spec(('batch',), (6, ), mesh) == P('data')  # the longest prefix that divides
  assert sharding.logical_to_spec(('layers', 'norm'), (4, 64), mesh) == P(None, None)



def test_rule_table_comes_from_the_config():
  """config.sharding.logical_rules is the table the model state is placed by: swapping two rules in the config
  swaps the PartitionSpecs of the built state (state.from_config, as the trainer and check build it)."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from slt_jax.train import optim, sharding, state as state_lib  # pylint: disable=g-import-not-at-top
  mesh = jax.sharding.AbstractMesh((1, 2, 2), sharding.MESH_AXES)

  def mlp_spec(config):
    _, state, _, _ = state_lib.from_config(config, optim.make_optimizer(config, 10), mesh, VOCAB['t5'], K * C,
                                           abstract=True)
    specs = {'/'.join(map(str, p)): v.get_value().sharding.spec for p, v in nnx.to_flat_state(state.params)}
    return specs['lm/decoder/layers/mlp/wi_0/kernel']  # [layers, embed, mlp] (scanned layers)

  config = _config('t5')
  assert mlp_spec(config) == P(None, 'fsdp', 'tensor')  # by the default table
  rules = dict(config.sharding.logical_rules)
  rules.update(embed='tensor', mlp='fsdp')
  config.sharding.logical_rules = tuple(rules.items())
  assert mlp_spec(config) == P(None, 'tensor', 'fsdp')
  assert sharding.batch_sharding(mesh, sharding.logical_rules(config)).spec == P(('data', 'fsdp'))


@pytest.mark.parametrize('rule, message', [
    (('embeding', 'fsdp'), "unknown logical axis 'embeding'"),
    (('embed', 'model'), "'embed' -> 'model': mesh axes are None, one of"),
    (('mlp', ('tensor', 'fsdpp')), "'mlp' -> ('tensor', 'fsdpp')"),
    (('vocab', 'tensor', 'extra'), 'each rule is a (logical name, mesh axes) pair'),
    (('batch', None), "'batch' has two rules"),
])
def test_rule_table_errors_name_the_rule(rule, message):
  from slt_jax.default_config import ConfigError  # pylint: disable=g-import-not-at-top
  from slt_jax.train import sharding  # pylint: disable=g-import-not-at-top
  config = _config('t5')
  config.sharding.logical_rules = (('batch', ('data', 'fsdp')), rule)
  with pytest.raises(ConfigError, match=re.escape(message)):
    sharding.logical_rules(config)


if __name__ == '__main__':
  _child(sys.argv[1])


def test_prefetch_to_device_keeps_order_and_places_ahead():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from slt_jax.train import sharding  # pylint: disable=g-import-not-at-top
  placed = []
  def put(b):
    placed.append(b['i'])
    return {'i': jnp.asarray(b['i'])}
  batches = ({'i': i} for i in range(5))
  it = sharding.prefetch_to_device(batches, 2, put)
  host, dev = next(it)
  assert host['i'] == 0 and int(dev['i']) == 0
  assert placed == [0, 1, 2]  # two batches already on the device while step 0 runs
  assert [h['i'] for h, _ in it] == [1, 2, 3, 4]
  assert [h['i'] for h, _ in sharding.prefetch_to_device(({'i': i} for i in range(3)), 0, put)] == [0, 1, 2]
