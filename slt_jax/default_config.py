"""Defaults shared by every slt_jax config: the seed's YAML structure as an ml_collections ConfigDict.

Every file in configs/ starts from `slt_jax.default_config.get_config()` and changes what it needs (so the
field set lives in one place and a field a config invents is caught by `validate`). Every field has a comment;
`python -m slt_jax.main --config=configs/X.py --config.training.batch_size=8` overrides any of them, and a
misspelt field is an error.
"""
import json
import os

import ml_collections
from ml_collections import config_dict


def get_config():
  config = ml_collections.ConfigDict()

  # --- model -------------------------------------------------------------------------------------
  config.model = ml_collections.ConfigDict()
  config.model.name = ''            # HF checkpoint directory; '' = build from `arch` with random init.
  config.model.tokenizer = ''       # tokenizer directory; '' = the checkpoint's, or train one on the texts.
  config.model.family = 't5'        # t5 | mt5 | bart | mbart | llama | mistral | qwen2 | gemma (from config.json when `name` is set)
  # Architecture used when `name` is empty (random init), in HF config.json field names of `family` (validate()
  # rejects a key the family does not build, e.g. a misspelt one). Not used when `name` is set: the checkpoint's
  # config.json is the architecture. Encoder-decoder families take vocab_size from the tokenizer.
  config.model.arch = ml_collections.ConfigDict(dict(
      d_model=256, d_kv=32, d_ff=1024, num_layers=3, num_decoder_layers=3, num_heads=8,
      feed_forward_proj='gated-gelu', dropout_rate=0.1, relative_attention_num_buckets=32,
      relative_attention_max_distance=128, tie_word_embeddings=False,
  ))
  config.model.dtype = 'float32'    # parameter (master) dtype.
  config.model.use_lora = False     # train LoRA adapters on a frozen base.
  config.model.load_in_4bit = False  # NF4 frozen base weights (requires use_lora).
  config.model.load_in_8bit = False  # int8 frozen base weights (requires use_lora).
  config.model.lora_config = ml_collections.ConfigDict(dict(
      r=16, lora_alpha=32, lora_dropout=0.1, target_modules=('q_proj', 'k_proj', 'v_proj', 'o_proj')))
  config.model.quant_block_size = 64  # load_in_4bit / 8bit: inputs per scale of each output column (bnb's 64).
  # Pose front end: flattened keypoints [B, T, K*C] -> linear -> optional strided temporal conv.
  config.model.pose = ml_collections.ConfigDict(dict(
      hidden=256,             # width of the front end before projecting to the encoder width.
      conv_layers=1,          # residual temporal conv blocks (kernel 5); the first has stride `conv_stride`.
      conv_stride=2,          # temporal downsampling of the front end (1 = none).
      positions=True,         # add sinusoidal frame positions to its output (encoders; decoder-only pose encoder).
      dropout=0.1,
  ))
  config.model.prompt = ''          # optional text prompt prefix (Uni-Sign style / decoder-only instruction).
  config.model.tgt_lang = ''        # mBART(-50) target language code (e.g. 'de_DE'): forced first decoder token.
  config.model.remat = 'none'       # rematerialisation policy: none | full | dots.
  # Attention kernel: einsum (explicit softmax(QK^T)V) | auto (cuDNN flash attention through
  # jax.nn.dot_product_attention on GPUs in bf16/fp16, einsum elsewhere) | xla | cudnn (jax.nn.dot_product_attention
  # with that implementation; cudnn fails where cuDNN does not apply). Training with attention dropout uses einsum.
  # einsum stays the default until scripts/gpu_check.sh has run the cuDNN path on a GPU.
  config.model.attention = 'einsum'
  config.model.scan_layers = True   # stack layers with nnx.scan (compiles deep models in seconds).
  # Padding-free training (T5/mT5/BART/mBART, one device): 0 = off; n > 0 = the position-wise layers (projections,
  # MLPs, norms, LM head) run on the real tokens only, gathered into rows (models/token_rows.py), with the batch's
  # real frame and label counts rounded up to a multiple of n. Each distinct count compiles its own train step,
  # so n trades leftover padding for compiles. Evaluation and decoding stay padded.
  config.model.padding_free = 0
  # Decoder-only families (llama | mistral | qwen2 | gemma): front end -> these layers -> projector -> LLM.
  config.model.pose_encoder = ml_collections.ConfigDict(dict(
      num_layers=2,        # bidirectional transformer layers over the front end's output (width pose.hidden).
      num_heads=8,         # their attention heads (pose.hidden must be a multiple).
  ))
  config.model.chat_template = True  # decoder-only: wrap model.prompt in the tokenizer's chat template if it has one.
  # Decoder-only: the prompt (text prefix, poses, suffix) attends to itself both ways, as a prefix LM; False =
  # causal throughout (LLaVA-style, as the LLM was pretrained).
  config.model.bidirectional_prompt = False
  # Decoder-only built from `arch` (random init): dropout on the LLM's inputs and each sublayer's output.
  config.model.llm_dropout = 0.0
  # Decoder-only: an RMSNorm ends the projector, its scale starting at the RMS of the LLM's token embeddings.
  config.model.projector_norm = False

  # --- data --------------------------------------------------------------------------------------
  config.data = ml_collections.ConfigDict()
  config.data.source = 'csv'        # csv: the CSV files below + pose_dir | tfds: a TFDS builder (data.tfds).
  config.data.train_path = ''       # CSV with `uid` (or `video_path`) and `text` columns.
  config.data.val_path = ''
  config.data.test_path = ''
  config.data.pose_dir = ''         # pose file of a row: pose_dir/uid.pose
  config.data.cache_dir = ''        # where preprocessed shards go; '' = WORKDIR/cache.
  config.data.allow_overlap = False  # the same uid or pose file in two splits (test leaking into train) is an
                                     # error before anything is read; True: a warning (e.g. a known shared split).
  # data.source='tfds': a TFDS builder, e.g. a sign-language-datasets corpus ('slt_jax[datasets]' extra).
  config.data.tfds = ml_collections.ConfigDict(dict(
      name='',             # builder: 'rwth_phoenix2014_t', 'dgs_corpus', ...
      config='',           # a named builder config ('poses'); '' = a new one made from config_kwargs.
      # With config='': kwargs of the builder's config class (SignDatasetConfig, DgsCorpusConfig:
      # include_pose, include_video, fps, data_type, split, ...); free-form. Empty = the builder's default.
      config_kwargs=ml_collections.ConfigDict(dict(include_video=False, include_pose='holistic')),
      data_dir='',         # TFDS data_dir; '' = TFDS's default (~/tensorflow_datasets).
      download=True,       # download_and_prepare the dataset when it is not prepared yet.
      # TFDS split specs (slices work: 'train[:95%]'); '' = no such split.
      train_split='train', val_split='validation', test_split='test',
      text_key='text',     # target text feature; nested with '/' (dgs_corpus sentences: 'sentence/english').
      pose_key='pose',     # pose feature ({data [T, N, P, D], conf [T, N, P], fps}).
      id_key='id',         # example id (the uid in reports); '' = '<split>#<index>'.
      pose_header='',      # .pose / .poseheader naming the pose's points; '' = the builder's own header.
  ))
  # The embedded synthetic sign language (configs/demo.py turns it on): generated into WORKDIR/data
  # on first use and the paths above are filled in from it. The other fields are the generator's knobs
  # (slt_jax/data/synthetic.py generate_corpus, which says what each does).
  config.data.synthetic = ml_collections.ConfigDict(dict(
      enabled=False, seed=0, vocab_size=120, num_signers=8, num_train=4000, num_val=200, num_test=200,
      noise=0.01, dropout_prob=0.02,
      # > 0: the last signers never sign training sentences; each val / test sentence is then signed by a
      # training signer and by a held-out one, scored as the split's corpora seen_signers / unseen_signers
      # (metrics.json: split -> corpora -> group; predictions uids 'group/uid').
      num_heldout_signers=0,
      fps=25.0,                # frame rate of the rendered poses (motion is timed in seconds).
      layout='reduced',        # reduced (178-point Holistic, pose-format's reduce_holistic) | full (543 points).
      heldout_pair_frac=0.03,  # share of content-word pairs that co-occur only in val / test sentences.
  ))
  # Several corpora in one run (README "Two-stage training"): NAME -> mixture_corpus(...) below, each with its own
  # source, paths, pose_dir and text column (one keypoint preset reads every layout). Training batches each come
  # from one corpus, drawn with probability weight / sum of weights; val / test score every corpus and all of them
  # together (metrics.json: split -> overall, and 'corpora' -> NAME -> that corpus's). Empty = the data.* source.
  config.data.mixture = ml_collections.ConfigDict()
  config.data.keypoints = 'hands_body'   # keypoint preset: slt_jax/data/keypoints.py PRESETS ('holistic' = all 543).
  config.data.coords = 'xyz'             # xy | xyz
  config.data.normalize = 'shoulders'    # shoulders | minmax (seed's [-1, 1]) | none
  config.data.max_frames = 256           # > 0: longer sequences are uniformly subsampled (largest batch frame axis).
  config.data.frame_stride = 1           # keep every n-th frame.
  config.data.max_target_length = 64     # target tokens incl. EOS; longer targets are truncated.
  config.data.bucket_boundaries = (32, 64, 96, 128, 192, 256)  # frame-count buckets (padding cut).
  config.data.prefetch_to_device = 2     # batches placed on the devices ahead of the step (0 = off).
  config.data.augment = True             # training-time augmentation.
  config.data.augmentations = ml_collections.ConfigDict(dict(  # used when `augment` (slt_jax/data/augment.py).
      rotate=0.1,          # max rotation in the image plane (radians).
      scale=0.1,           # max relative isotropic scale change.
      shear=0.1,           # max x/y shear factor.
      noise=0.005,         # std of Gaussian noise on visible points (normalised units).
      frame_dropout=0.05,  # probability of dropping each frame.
      speed=0.2,           # speed change by a factor in [1/(1+speed), 1+speed].
      mirror=False,        # left/right mirror (x -> -x + left/right point swap) with probability 0.5.
      yaw=0.0,             # max turn of the signer about the vertical axis (radians; x/z mix, xy: x shrinks).
  ))
  config.data.text_column = 'text'        # CSV column holding the target text.
  config.data.hand_normalize = False      # hand points relative to their wrist, in hand-size units.
  # '' = as recorded | 'right' ('left'): mirror each sequence whose other wrist is held higher, so every signer
  # reads as right- (left-) handed (slt_jax/data/pose_io.py dominant_side; needs normalize shoulders | minmax).
  config.data.dominant_hand = ''
  config.data.visibility_channel = False  # append a 0/1 visibility channel to the coordinates (C + 1).
  config.data.label_pad_multiple = 0      # 0: labels padded to max_target_length; n: to the batch's longest, rounded up to n.
  # Processes reading .pose files while building the cache: -1 = one per core (at most 8), 0 or 1 = none (read in
  # the trainer's process). The cache is the same whatever the number.
  config.data.num_workers = -1
  config.data.max_in_memory_gb = 2.0      # training examples above this many GiB are memory-mapped (0: always).
  # Tokenizer trained on the training texts when neither model.tokenizer nor model.name gives one.
  config.data.trained_tokenizer = ml_collections.ConfigDict(dict(
      kind='bpe',          # bpe | wordlevel
      vocab_size=2000,     # upper bound (a small corpus yields fewer).
      lowercase=False,
  ))

  # --- training ----------------------------------------------------------------------------------
  config.training = ml_collections.ConfigDict()
  config.training.num_epochs = 10
  config.training.num_train_steps = -1   # > 0 overrides num_epochs.
  config.training.batch_size = 32        # global batch size.
  config.training.eval_batch_size = 64
  config.training.learning_rate = 1e-3
  config.training.warmup_steps = 200     # linear warmup; capped at half the run (with a logged warning).
  config.training.weight_decay = 0.01    # AdamW's, on every trained parameter (biases and norm scales too).
  config.training.max_grad_norm = 1.0
  config.training.gradient_accumulation_steps = 1
  config.training.label_smoothing = 0.1
  # 'bf16' computes in bfloat16 with float32 master weights | 'no' (float32). True / False (the seed's YAML
  # `mixed_precision: true`) mean 'bf16' / 'no'; validate() normalises them. fp16 is refused (no loss scaling).
  config.training.mixed_precision = config_dict.FieldReference('no', field_type=object)
  config.training.log_every_steps = 50
  config.training.eval_every_steps = 500
  config.training.checkpoint_every_steps = 500
  config.training.keep_checkpoints = 2    # latest checkpoints kept (the best one is kept as well).
  config.training.best_metric = 'bleu'    # validation metric whose highest value picks the best checkpoint:
                                          # bleu | chrf | rougeL.
  config.training.seed = 42
  # glibc malloc tuned so XLA:CPU reuses each step's memory (slt_jax/host_malloc.py; ~15-20% faster CPU steps):
  # auto (where no JAX accelerator plugin is installed) | on | off. Applied by slt_jax.main before JAX starts.
  config.training.host_malloc = 'auto'
  # JAX's persistent compilation cache, for every mode (slt_jax/compile_cache.py): 'auto' = the user's cache,
  # $XDG_CACHE_HOME or ~/.cache /slt_jax/jax_compile (JAX_COMPILATION_CACHE_DIR if set) | a folder | '' (off).
  config.training.compile_cache_dir = 'auto'
  config.training.peak_tflops = 0.0  # device peak for MFU; 0 = known GPUs (A100, H100, H200), else no MFU.
  config.training.max_consecutive_nonfinite = 10  # stop after this many NaN/Inf updates in a row.
  # PRNG of each step's dropout key: auto (rbg on CPU, else threefry) | threefry | rbg. The masks themselves are
  # hashed from per-layer keys and positions (models/layers.py dropout_keep), whatever this is.
  config.training.dropout_rng = 'auto'
  # Two-stage training (README "Two-stage training"; slt_jax/train/init_from.py). Parts of a model: pose_frontend,
  # pose_encoder, projector (decoder-only families), backbone (the text model), adapters (model.use_lora); on the
  # command line a list is `--config.training.freeze=backbone,adapters`.
  config.training.init_from = ''      # workdir of an earlier run to start from (its tokenizer too, unless
                                      # model.tokenizer is set); '' = random init / model.name. A resumed run
                                      # resumes from its own checkpoints.
  config.training.init_step = -1      # init_from's checkpoint step; -1 = its best (else its latest).
  config.training.init_parts = ()     # the parts taken from init_from; () = every part this model has (a part
                                      # that run lacks stays at its init, with a log line).
  config.training.freeze = ()         # parts not trained (kept bit-identical, outside the checkpoints: every
                                      # mode loads them from init_from / model.name again).
  # Weights & Biases, next to TensorBoard (always written), from process 0; needs `pip install -e '.[wandb]'`.
  config.training.use_wandb = False
  config.training.wandb_project = 'slt_jax'
  config.training.wandb_entity = ''       # '' = the W&B login's default entity.
  config.training.wandb_run_name = ''     # '' = the workdir's name (the run id is kept in WORKDIR/wandb/run_id).
  config.training.wandb_mode = 'offline'  # offline (no network; `wandb sync` uploads it later) | online.

  # --- decoding ----------------------------------------------------------------------------------
  config.decode = ml_collections.ConfigDict()
  config.decode.max_new_tokens = 64   # generated tokens at most (EOS included).
  config.decode.num_beams = 1         # 1 = greedy / sampling; K > 1 = beam search with K beams (as HF generate).
  config.decode.length_penalty = 1.0  # finished beam score = sum logprob / generated_len ** length_penalty.
  config.decode.early_stopping = 'false'  # beam stop rule, as HF's: 'false' (heuristic) | 'true' | 'never'.
  config.decode.do_sample = False     # sample instead of argmax (with num_beams > 1: beam sampling); needs a PRNG key.
  config.decode.temperature = 1.0     # sampling: logits / temperature.
  config.decode.top_k = 0             # sampling: keep the k most likely tokens (0 = off).
  config.decode.top_p = 1.0           # sampling: smallest set of tokens with this much probability (1.0 = off).

  # --- evaluation --------------------------------------------------------------------------------
  config.evaluation = ml_collections.ConfigDict()
  config.evaluation.lowercase = False     # score lowercased text (BLEU, chrF, ROUGE-L).
  # sacrebleu's BLEU tokenizer, also the words of ROUGE-L, stored in the signatures: '13a' (WMT's default; keeps
  # words of any script whole), 'intl' (splits Unicode punctuation), 'zh' (Chinese as characters: CSL-Daily),
  # 'char' or 'none' (whitespace).
  config.evaluation.bleu_tokenize = '13a'
  # sacrebleu's bootstrap resamples for the 95% confidence interval of BLEU and chrF in metrics.json (every
  # evaluation: ~0.15 s per metric on 642 sentences); 0 = none, else at least 40.
  config.evaluation.bootstrap_resamples = 1000
  config.evaluation.split = 'test'        # split that --mode=eval scores.
  config.evaluation.step = -1             # checkpoint step that --mode=eval scores; -1 = the best.

  # --- mesh --------------------------------------------------------------------------------------
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.sharding = ml_collections.ConfigDict()
  # (logical axis name, mesh axes) pairs, as flax lm1b's logical_axis_rules: models name their parameters'
  # dimensions (slt_jax/models/layers.py LOGICAL_AXES) and the batch; each name maps to a mesh axis, a tuple of
  # them, or None (replicated). A dimension the axes do not divide stays replicated (slt_jax/train/sharding.py).
  # Parameters are split over 'fsdp' along their embedding dimension (ZeRO-3 style) and over 'tensor' along
  # heads / MLP width (Megatron style). Change one per model, e.g. replicate the vocabulary:
  #   --config.sharding.logical_rules="(('batch', ('data', 'fsdp')), ('embed', 'fsdp'), ('mlp', 'tensor'))"
  config.sharding.logical_rules = (
      ('batch', ('data', 'fsdp')),
      ('vocab', 'tensor'),
      ('embed', 'fsdp'),
      ('mlp', 'tensor'),
      ('heads', 'tensor'),
      ('kv_heads', 'tensor'),
      ('head_dim', None),
      ('layers', None),
      ('relpos', None),
      ('pose_in', None),
      ('norm', None),
      ('length', None),
  )
  return config


# Sub-trees whose fields are free-form (HF config.json fields, passed through to the model family).
_FREE_FORM = ('model.arch', 'data.tfds.config_kwargs', 'data.mixture')  # (data.mixture: _validate_mixture)


def mixture_corpus(**fields) -> ml_collections.ConfigDict:
  """One corpus of data.mixture, e.g. `config.data.mixture.dgs = mixture_corpus(source='tfds', tfds=dict(
  name='dgs_corpus', ...), weight=2.0)`; the fields mean what the data.* fields of the same name do."""
  corpus = ml_collections.ConfigDict(dict(
      source='csv', train_path='', val_path='', test_path='', pose_dir='', text_column='text',
      tfds=get_config().data.tfds,
      weight=1.0,  # training batches from this corpus: weight / sum of the corpora's weights (> 0 with train_path).
      # This corpus's model.prompt / model.tgt_lang (mBART language code): one model serves several sign / spoken
      # languages, each row getting its corpus's (batch['corpus']; translate --corpus=NAME). '' = the model's.
      prompt='', tgt_lang='',
  ))
  tfds = fields.pop('tfds', {})
  corpus.update(fields)
  corpus.tfds.update(tfds)
  return corpus


# Fields that configs no longer take -> why (a config that sets one gets this instead of "unknown field").
_REMOVED = {
    'data.shuffle_buffer': 'training batches are drawn from a fresh seeded permutation of the whole split every '
                           'epoch (pipeline._BatchPlan), a full shuffle with no buffer to size; drop the field',
}
# training.best_metric: the keys of evaluate.score that rank checkpoints; higher is better for each (the best
# checkpoint is the one with the highest value).
_BEST_METRICS = ('bleu', 'chrf', 'rougeL')


class ConfigError(ValueError):
  """A config that cannot run, with a message saying which field and why."""


def _check_known(path: str, key: str, reference) -> None:
  """ConfigError unless `key` (at dotted `path`) is a field of `reference`, the default config's group there."""
  if path in _REMOVED:
    raise ConfigError(f'config field `{path}` was removed: {_REMOVED[path]}')
  if key not in reference:
    raise ConfigError(f'unknown config field `{path}` (known fields here: {", ".join(sorted(reference.keys()))})')


def check_field_path(path: str) -> None:
  """Raises ConfigError when the dotted field `path` (a command-line override: training.batch_size) is no field
  of any config: removed (saying why) or misspelt (listing the fields there), as validate() would."""
  reference, prefix = get_config(), ''
  for key in path.split('.'):
    field = prefix + key
    if field in _FREE_FORM:
      return
    _check_known(field, key, reference)
    reference, prefix = reference[key], field + '.'
    if not isinstance(reference, ml_collections.ConfigDict):
      return


def _check_fields(config, reference, prefix=''):
  for key in config.keys():
    path = f'{prefix}{key}'
    if path in _FREE_FORM:
      continue
    _check_known(path, key, reference)
    value, ref = config[key], reference[key]
    if not isinstance(ref, ml_collections.ConfigDict) and reference.get_ref(key).get_type() is object:
      continue  # a field of several kinds (training.mixed_precision): validate() checks its values
    if isinstance(ref, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(f'config field `{path}` must be a group of fields, got {value!r}')
      _check_fields(value, ref, path + '.')
    elif ref is not None and value is not None and not _same_kind(value, ref):
      raise ConfigError(f'config field `{path}` must be {type(ref).__name__}, got {type(value).__name__} {value!r}')


def _same_kind(value, ref) -> bool:
  if isinstance(ref, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(ref, bool)
  if isinstance(ref, float):
    return isinstance(value, (int, float))
  if isinstance(ref, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(ref))


def validate(config, require_data: bool = True) -> None:
  """Raises ConfigError for unknown fields, wrong types and impossible combinations, before anything compiles.

  require_data: a training data source must be set (train and eval modes; not check or translate).
  """
  _check_fields(config, get_config())
  m, t = config.model, config.training
  if (m.load_in_4bit or m.load_in_8bit) and not m.use_lora:
    raise ConfigError('model.load_in_4bit / load_in_8bit quantise the frozen base weights, which only makes '
                      'sense with model.use_lora=True')
  if m.load_in_4bit and m.load_in_8bit:
    raise ConfigError('choose one of model.load_in_4bit and model.load_in_8bit')
  if t.batch_size <= 0 or t.gradient_accumulation_steps <= 0:
    raise ConfigError('training.batch_size and training.gradient_accumulation_steps must be positive')
  if t.batch_size % t.gradient_accumulation_steps:
    raise ConfigError(f'training.batch_size={t.batch_size} is not divisible by '
                      f'training.gradient_accumulation_steps={t.gradient_accumulation_steps}')
  for field, allowed in (('attention', ('auto', 'einsum', 'xla', 'cudnn')), ('remat', ('none', 'full', 'dots'))):
    if m[field] not in allowed:
      raise ConfigError(f'model.{field} must be one of {allowed}, got {m[field]!r}')
  if m.padding_free < 0:
    raise ConfigError(f'model.padding_free must be 0 (off) or a positive multiple, got {m.padding_free}')
  if isinstance(t.mixed_precision, bool):  # the seed's `mixed_precision: true`
    t.mixed_precision = 'bf16' if t.mixed_precision else 'no'
  if t.mixed_precision == 'fp16':
    raise ConfigError("training.mixed_precision='fp16' is not supported (float16 needs loss scaling, which "
                      "slt_jax does not do): use 'bf16' (same memory, float32's range) or 'no'")
  if t.mixed_precision not in ('no', 'bf16'):
    raise ConfigError(f"training.mixed_precision must be 'no', 'bf16', True or False, got {t.mixed_precision!r}")
  if t.dropout_rng not in ('auto', 'threefry', 'rbg'):
    raise ConfigError(f"training.dropout_rng must be 'auto', 'threefry' or 'rbg', got {t.dropout_rng!r}")
  if t.host_malloc not in ('auto', 'on', 'off'):
    raise ConfigError(f"training.host_malloc must be 'auto', 'on' or 'off', got {t.host_malloc!r}")
  if t.wandb_mode not in ('offline', 'online'):
    raise ConfigError(f"training.wandb_mode must be 'offline' or 'online', got {t.wandb_mode!r}")
  _validate_init_from(t)
  sizes = {a: config.mesh[a] for a in _MESH_AXES}
  if any(v == 0 or v < -1 for v in sizes.values()) or list(sizes.values()).count(-1) > 1:
    raise ConfigError(f'config.mesh {sizes}: each size must be positive, and at most one may be -1 (the rest '
                      'of the devices)')
  if -1 not in sizes.values():  # with -1 the data-parallel size is known only with the devices (validate_devices)
    _check_batch_divisible(config, sizes['data'] * sizes['fsdp'], sizes)
  _validate_evaluation(config.evaluation)
  d = config.data
  if d.source not in ('csv', 'tfds'):
    raise ConfigError(f"data.source must be 'csv' or 'tfds', got {d.source!r}")
  if d.max_in_memory_gb < 0:
    raise ConfigError(f'data.max_in_memory_gb must be >= 0 (GiB of training examples a host holds in memory; 0: '
                      f'memory-map them always), got {d.max_in_memory_gb!r}')
  if d.num_workers < -1:
    raise ConfigError(f'data.num_workers must be -1 (one per core), 0 or 1 (no worker processes) or a number of '
                      f'worker processes, got {d.num_workers!r}')
  if d.source == 'tfds' and d.synthetic.enabled:
    raise ConfigError("data.synthetic.enabled generates CSV files: it needs data.source='csv'")
  given = {f: d[f] for f in _SYNTHETIC_PATHS if d[f]}
  if d.synthetic.enabled and given:  # the demo corpus would replace them: never silently
    flags = ' '.join(f'--config.data.{f}={v}' for f, v in given.items())
    raise ConfigError(
        f'data.synthetic.enabled=True (configs/demo.py) generates the demo corpus into WORKDIR/data and points '
        f'data.{"/".join(_SYNTHETIC_PATHS)} at it, which would replace the paths you gave ({flags}). To use '
        'your data, add --config.data.synthetic.enabled=False; to train on the demo corpus, drop those paths.')
  _check_data_shapes(d)
  _validate_synthetic(d.synthetic)
  _validate_dominant_hand(d)
  _validate_mixture(d)
  _validate_corpus_langs(config)
  if t.best_metric not in _BEST_METRICS:
    raise ConfigError(f'training.best_metric must be one of {_BEST_METRICS} (validation metrics, the highest value '
                      f'is the best), got {t.best_metric!r}')
  _check_arch(m)
  if require_data and d.source == 'tfds' and not (d.tfds.name and d.tfds.train_split):
    raise ConfigError("data.source='tfds' needs data.tfds.name (e.g. 'rwth_phoenix2014_t') and "
                      'data.tfds.train_split')
  if require_data and d.source == 'csv' and not (d.synthetic.enabled or d.train_path or d.mixture):
    raise ConfigError('set data.train_path (a CSV with uid,text) or turn on data.synthetic.enabled')


# The parts of an SLT model that training.init_parts / freeze name (slt_jax/train/init_from.py part_of).
MODEL_PARTS = ('pose_frontend', 'pose_encoder', 'projector', 'backbone', 'adapters')


def part_names(value) -> tuple:
  """training.freeze / init_parts as a tuple of names: the command line's `backbone,adapters` arrives as one string
  in a tuple, `--config.training.freeze=backbone` as ('backbone',); both (and a tuple of names) give the names."""
  items = (value,) if isinstance(value, str) else tuple(value or ())
  names = [n.strip(' ()[]\'"') for item in items for n in str(item).split(',')]
  return tuple(n for n in names if n)


def _validate_dominant_hand(d) -> None:
  from slt_jax.data import pose_io  # pylint: disable=g-import-not-at-top
  if d.dominant_hand not in pose_io.DOMINANT_HAND_MODES:
    raise ConfigError(f"data.dominant_hand must be '' (as recorded), 'right' or 'left', got {d.dominant_hand!r}")
  if d.dominant_hand and d.normalize == 'none':
    raise ConfigError(f"data.dominant_hand={d.dominant_hand!r} mirrors about the normalised centre: set "
                      "data.normalize to 'shoulders' or 'minmax' (it is 'none')")


def _validate_synthetic(s) -> None:
  """data.synthetic's generator knobs (synthetic.check_params), whether or not it is enabled."""
  from slt_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  try:
    synthetic.check_params(prefix='data.synthetic.', **{k: v for k, v in s.items() if k != 'enabled'})
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _validate_mixture(d) -> None:
  """data.mixture: corpus names, each corpus's fields (those of mixture_corpus), weights, and no data.* source."""
  if not d.mixture:
    return
  own = {f: d[f] for f in ('train_path', 'val_path', 'test_path', 'pose_dir') if d[f]}
  if own or d.synthetic.enabled or d.source != 'csv':
    raise ConfigError(f'data.mixture names the corpora: data.train_path / val_path / test_path / pose_dir '
                      f'({own}), data.source ({d.source!r}) and data.synthetic.enabled are then not used; leave them '
                      'at their defaults and give each corpus its own (default_config.mixture_corpus)')
  trained = 0
  for name in d.mixture.keys():
    corpus = d.mixture[name]
    if not (name.replace('_', '').replace('-', '').isalnum() and name.isascii()):
      raise ConfigError(f'data.mixture.{name}: a corpus name is letters, digits, _ and - (it names the corpus in '
                        'metrics.json, TensorBoard and the uids of predictions_<split>.tsv)')
    if not isinstance(corpus, ml_collections.ConfigDict):
      raise ConfigError(f'data.mixture.{name} must be a group of fields (default_config.mixture_corpus), got '
                        f'{corpus!r}')
    template = mixture_corpus()
    if isinstance(corpus.get('tfds', None), ml_collections.ConfigDict) and 'config_kwargs' in corpus.tfds:
      template.tfds.config_kwargs = corpus.tfds.config_kwargs  # free-form, as data.tfds.config_kwargs
    _check_fields(corpus, template, f'data.mixture.{name}.')
    if corpus.source not in ('csv', 'tfds'):
      raise ConfigError(f"data.mixture.{name}.source must be 'csv' or 'tfds', got {corpus.source!r}")
    has_train = corpus.train_path if corpus.source == 'csv' else corpus.tfds.train_split and corpus.tfds.name
    if corpus.source == 'csv' and not corpus.pose_dir:
      raise ConfigError(f'data.mixture.{name}.pose_dir is not set (the pose of a row is pose_dir/<uid>.pose)')
    if corpus.source == 'tfds' and not corpus.tfds.name:
      raise ConfigError(f"data.mixture.{name}: source='tfds' needs tfds.name")
    if has_train and not corpus.weight > 0:
      raise ConfigError(f'data.mixture.{name}.weight must be > 0 (its share of the training batches), got '
                        f'{corpus.weight!r}')
    trained += bool(has_train)
  if not trained:
    raise ConfigError('data.mixture: no corpus has a training split (train_path, or tfds.train_split)')


# Families whose tokenizers have target-language codes (model.tgt_lang, data.mixture.NAME.tgt_lang).
_LANG_CODE_FAMILIES = ('mbart',)


def _validate_corpus_langs(config) -> None:
  """data.mixture.NAME.tgt_lang needs a family with language codes (the codes themselves are checked against the
  tokenizer when the model is built, slt.build_model, before any step)."""
  d, m = config.data, config.model
  langs = {name: d.mixture[name].get('tgt_lang', '') for name in (d.mixture or {}).keys()}
  langs = {name: lang for name, lang in langs.items() if lang}
  if not langs:
    return
  family = m.family
  if m.name and os.path.exists(os.path.join(m.name, 'config.json')):
    with open(os.path.join(m.name, 'config.json'), encoding='utf-8') as f:
      family = json.load(f).get('model_type', family)
  if family not in _LANG_CODE_FAMILIES:
    name = sorted(langs)[0]
    raise ConfigError(f'data.mixture.{name}.tgt_lang={langs[name]!r}: a target-language code is a forced first '
                      f'decoder token of {_LANG_CODE_FAMILIES}, and the model is {family!r}; give that corpus a '
                      f'prompt (data.mixture.{name}.prompt) instead')


def _validate_init_from(t) -> None:
  """training.init_from / init_step / init_parts / freeze (normalised to tuples of part names)."""
  for field in ('init_parts', 'freeze'):
    t[field] = part_names(t[field])
    unknown = [p for p in t[field] if p not in MODEL_PARTS]
    if unknown:
      raise ConfigError(f'training.{field}: {unknown} not a part; the parts are {MODEL_PARTS} (comma-separated '
                        f'on the command line: --config.training.{field}=pose_frontend,pose_encoder)')
  if not t.init_from and (t.init_parts or t.init_step != -1):
    raise ConfigError('training.init_parts / init_step choose what to take from training.init_from, which is not '
                      'set: give init_from=WORKDIR of the earlier run, or drop them')
  if t.init_from and not os.path.exists(os.path.join(t.init_from, 'config.json')):
    raise ConfigError(f'training.init_from={t.init_from!r}: no config.json there; name the workdir of an earlier '
                      'slt_jax training run')
  if t.init_from:  # config.json keeps where the run's weights came from, whatever the later working directory
    t.init_from = os.path.abspath(t.init_from)


def _validate_evaluation(e) -> None:
  from slt_jax import evaluate  # (light: sacrebleu and rouge-score; kept out of the config's import time)
  if e.bleu_tokenize not in evaluate.BLEU_TOKENIZERS:
    raise ConfigError(f'evaluation.bleu_tokenize must be one of {evaluate.BLEU_TOKENIZERS} (sacrebleu\'s names; '
                      f"'zh' for Chinese, 'intl' for other scripts' punctuation), got {e.bleu_tokenize!r}")
  if e.bootstrap_resamples and e.bootstrap_resamples < evaluate.MIN_BOOTSTRAP_RESAMPLES:
    raise ConfigError(f'evaluation.bootstrap_resamples must be 0 (no confidence intervals) or at least '
                      f'{evaluate.MIN_BOOTSTRAP_RESAMPLES} (a 95% interval needs resamples in its 2.5% tails; '
                      f'sacrebleu uses 1000), got {e.bootstrap_resamples}')


def _check_data_shapes(d) -> None:
  """data.keypoints and data.max_frames fix the pose tensors' shape [B, <= max_frames, K, C] before any data is
  read (translate, check and the eval batches rely on it)."""
  from slt_jax.data import keypoints as kp_lib  # pylint: disable=g-import-not-at-top
  if d.keypoints not in kp_lib.PRESETS:
    raise ConfigError(f'data.keypoints={d.keypoints!r} is not a keypoint preset; choose one of '
                      f'{sorted(kp_lib.PRESETS)} (slt_jax/data/keypoints.py; \'holistic\' keeps all 543 points)')
  if not isinstance(d.max_frames, int) or d.max_frames <= 0:  # None passes _check_fields
    raise ConfigError(f'data.max_frames must be a positive number of frames (longer sequences are subsampled to '
                      f'it; it bounds the batches\' frame axis), got {d.max_frames!r}')


def _check_arch(m) -> None:
  """Without model.name the model is built from model.arch: each of its keys must be one the family builds as HF
  would (the family's config_from_hf drops keys it does not read, so a misspelt one would silently leave HF's
  default in place)."""
  if m.name:
    return  # the checkpoint's config.json is the architecture; model.arch is not used
  from slt_jax.models import hf, registry  # pylint: disable=g-import-not-at-top
  if m.family not in registry.model_types():
    raise ConfigError(f'model.family={m.family!r} is not one of {registry.model_types()}')
  arch = m.arch.to_dict()
  if arch.setdefault('model_type', m.family) != m.family:
    raise ConfigError(f'model.arch.model_type={arch["model_type"]!r} disagrees with model.family={m.family!r}: '
                      'make them the same (or drop model.arch.model_type)')
  problems = hf.arch_problems(arch)
  if problems:
    raise ConfigError(f'model.arch (model.family={m.family!r}, HF config.json field names): {"; ".join(problems)}. '
                      f'It takes the architecture fields of the family\'s HF config that slt_jax builds; decoding '
                      'settings go in config.decode')


_MESH_AXES = ('data', 'fsdp', 'tensor')
_SYNTHETIC_PATHS = ('train_path', 'val_path', 'test_path', 'pose_dir')  # what data.synthetic fills in


def _check_batch_divisible(config, data_parallel: int, sizes: dict) -> None:
  t = config.training
  for field in ('batch_size', 'eval_batch_size'):
    if t[field] % data_parallel:
      raise ConfigError(
          f'training.{field}={t[field]} is not divisible by the data-parallel size {data_parallel} '
          f'(mesh data={sizes["data"]} x fsdp={sizes["fsdp"]}): every data-parallel shard needs the same '
          f'number of rows; use a multiple of {data_parallel}')


def validate_devices(config, num_devices: int, num_processes: int = 1) -> None:
  """The checks that need the device count; the trainer runs them before reading data or compiling.

  Raises ConfigError when `config.mesh` does not match `num_devices`, or the (global) batch sizes do not
  divide into the data-parallel shards or the hosts.
  """
  sizes = {a: int(config.mesh[a]) for a in _MESH_AXES}
  known = 1
  for v in sizes.values():
    known *= v if v != -1 else 1
  if -1 in sizes.values():
    if num_devices % known:
      raise ConfigError(f'config.mesh {sizes}: the fixed sizes (product {known}) do not divide the {num_devices} '
                        f'devices, so -1 has no integer value')
    sizes = {a: (num_devices // known if v == -1 else v) for a, v in sizes.items()}
  elif known != num_devices:
    raise ConfigError(f'config.mesh {sizes} needs {known} devices, but this run has {num_devices}; make the '
                      f'product of the sizes {num_devices}, or set one size to -1')
  _check_batch_divisible(config, sizes['data'] * sizes['fsdp'], sizes)
  if config.model.padding_free and num_processes > 1:
    raise ConfigError(f'model.padding_free={config.model.padding_free} runs on one host (any mesh of its '
                      f'devices): the hosts would need to agree on each batch\'s token counts, which they do not '
                      f'yet; set model.padding_free=0 for the {num_processes} hosts')
  t = config.training
  for field in ('batch_size', 'eval_batch_size'):
    if t[field] % num_processes:
      raise ConfigError(f'training.{field}={t[field]} is not divisible by the {num_processes} hosts (each '
                        'host reads an equal share of every batch)')


def model_vocab_size(config) -> int | None:
  """Embedding rows of the configured model, when fixed before training: a pretrained checkpoint's
  config.json `vocab_size`, or a decoder-only `arch.vocab_size`; None when it follows the tokenizer."""
  m = config.model
  if m.name:
    path = os.path.join(m.name, 'config.json')
    if not os.path.exists(path):
      return None  # loading the checkpoint reports the missing file
    with open(path) as f:
      hf = json.load(f)
    return hf.get('vocab_size') or hf.get('text_config', {}).get('vocab_size')
  from slt_jax.models import registry  # pylint: disable=g-import-not-at-top  (jax at call time, not at import)
  if not registry.is_seq2seq(m.family):  # built from `arch`, a seq2seq model takes the tokenizer's vocabulary
    return m.arch.get('vocab_size')
  return None


def validate_vocab(config, tokenizer_vocab_size: int) -> None:
  """Raises ConfigError when the tokenizer has ids the model has no embedding for (checked before loading)."""
  model_vocab = model_vocab_size(config)
  if model_vocab is not None and tokenizer_vocab_size > model_vocab:
    m = config.model
    where = f'the checkpoint {m.name}' if m.name else f'model.arch.vocab_size ({m.family})'
    tok = m.tokenizer or (m.name and 'the checkpoint\'s tokenizer') or 'the tokenizer trained on the texts'
    raise ConfigError(
        f'the tokenizer ({tok}) has {tokenizer_vocab_size} ids but {where} has only {model_vocab} embeddings: '
        'use the model\'s own tokenizer (model.tokenizer=\'\'), or a model whose vocabulary covers the tokenizer')
