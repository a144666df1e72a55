"""The embedded demo corpus: a small artificial sign language, rendered as MediaPipe-Holistic `.pose` files.

  paths = generate_corpus('/tmp/demo', seed=0, vocab_size=120, num_signers=8,
                          num_train=4000, num_val=200, num_test=200, noise=0.01, dropout_prob=0.02)
  paths = ensure_corpus(config.data.synthetic, workdir + '/data')   # generates once, then reuses
  # paths = {'train': .../train.csv, 'val': .../val.csv, 'test': .../test.csv, 'pose_dir': .../poses,
  #          'glosses': .../glosses.csv, 'lexicon': .../lexicon.json,
  #          'groups': {} or, with num_heldout_signers > 0, {'seen_signers': {'val': .., 'test': ..}, 'unseen_signers': ..}}

Each split CSV is `uid,text` (the seed layout); the pose of a row is `pose_dir/uid.pose`, written with
pose-format (`Pose` + `NumPyPoseBody`) under `keypoints.holistic_header` (the reduced 178-point layout
by default, the full 543-point one with `layout='full'`). `glosses.csv` (uid, split, signer, gloss,
frame spans of the signs) and `lexicon.json` (every word and its sign) are for analysis only.
Everything is a pure function of the arguments: the same seed gives the same bytes.

THE LANGUAGE
Vocabulary (`vocab_size` signs, 20..MAX_VOCAB=336): the closed signs NOT and Q, time signs (YESTERDAY,
LAST-WEEK, TOMORROW, NOW, ...), pronouns (I, YOU, WE, THEY, HE, SHE), nouns (animate: DOG, TEACHER, ...;
things: BOOK, APPLE, ...), transitive verbs (with the kind of object they take), intransitive verbs
and adjectives (for animates, things or both), drawn from fixed English word lists by the seed.
English has function words with no sign: the, a/an, is/am/are/was/were/be, do/does/did, will.

Grammar (sign order differs from English; every reordering is determined by the structure):
  signs:   [TIME] SUBJ [ADJ] ( [OBJ [ADJ]] VERB | ADJ_pred ) [NOT] [Q]
           SOV, adjectives after their noun, time first, negation and question marker last.
  English: Subj Aux/Verb Obj Time + '.' / '?' with SVO order, adjectives before nouns, the time
           phrase last; tense comes from the time sign (past: YESTERDAY, LAST-WEEK, ...; future:
           TOMORROW, ...; present otherwise); subject nouns take "the", object nouns "a"/"an";
           NOT -> do/does/did/will + not (is/was not for predicate adjectives); Q -> subject-aux
           inversion ("Did the old dog see a cat yesterday?").
  Example: YESTERDAY DOG OLD CAT SEE NOT -> "The old dog did not see a cat yesterday."

How a sign is built (phonology of real sign languages, in shoulder-width units relative to the body):
  handshape   one of 17 finger configurations of the 21 hand points (A, S, B, 5, 1, V, W, Y, L, C,
              O, I, claw, horns, 3, bent-B, X) from per-finger flexion/abduction and thumb pose; some
              signs change handshape midway (e.g. O -> 5).
  location    one of 10 places (forehead, chin, cheek, chest, either shoulder, neutral space, high
              space, waist, side).
  movement    one of 17 paths (tap, forward, down, up, out, across, two circles, arc, zigzag, shake,
              twist, nod, diagonal, double stroke, toward body, spiral).
  orientation one of 8 palm/finger directions (plus a small per-word tilt).
  hands       one-handed; two-handed symmetric (the other hand mirrors); alternating (half a cycle
              out of phase); or a static base hand that the dominant hand acts on.
  duration    8..12 frames at 25 fps (scaled by the signer's tempo).
Any two signs differ in at least two of handshape/location/movement/orientation/hands. Pronouns are
index-finger points.

Rendering: per frame a state per hand (position, orientation quaternion, 20 joint angles) is laid out
rest -> sign -> transition -> sign ... -> rest. Co-articulation: transitions of 2-6 frames ease from one
sign to the next, each sign's start/end is pulled towards its neighbours (assimilation/anticipation),
and the whole track is smoothed in time. Forward kinematics gives the 21 points of each hand, a
two-link arm gives the elbows, and the body/face follow a swaying torso. Per-signer variation: body
scale and position in the image, arm/hand proportions, a slight body turn, tempo, movement size and
signing-space offset, and handedness (left-handed signers are mirror images: the dominant hand is then
LEFT_HAND_LANDMARKS). Then Gaussian keypoint noise (`noise` x shoulder width) and dropped hand
detections (bursts where a hand's 21 points have confidence 0 and coordinates 0, `dropout_prob` of the
hand-frames on average, more while the hands rest low) are added.

Splits: val and test sentences each contain a pair of content words that never co-occur in training
(held-out combinations, one pair set per split), and only use words seen in training; the first training
sentences cover every word (val/test also use only English words seen in training).
`num_heldout_signers` > 0 keeps the last signers out of training, and then signs every val/test sentence twice:
by a training signer (uid `val_seen_00007`, listed in `val_seen_signers.csv`) and by a held-out one
(`val_unseen_00007`, `val_unseen_signers.csv`); `val.csv` holds both, and `paths['groups']` names the group CSVs
(`inputs.resolve_data_paths` scores each group as a data.mixture corpus of the split).
"""
import collections
import concurrent.futures
import csv
import fcntl
import io
import json
import multiprocessing
import os
import shutil
import time

import numpy as np
from pose_format import Pose
from pose_format.numpy import NumPyPoseBody

from slt_jax.data import keypoints

# Bump when the output for the same arguments changes: it invalidates corpora made by `ensure_corpus`.
VERSION = 1
MARKER = 'COMPLETE.json'

# ================================================================================================
# Lexicon: English word lists
# ================================================================================================
# (gloss, english, tense)
_TIME = (
    ('YESTERDAY', 'yesterday', 'past'), ('TOMORROW', 'tomorrow', 'future'), ('NOW', 'now', 'present'),
    ('LAST-WEEK', 'last week', 'past'), ('NEXT-WEEK', 'next week', 'future'),
    ('TODAY', 'today', 'present'), ('LAST-YEAR', 'last year', 'past'),
    ('NEXT-YEAR', 'next year', 'future'), ('EVERY-DAY', 'every day', 'present'),
    ('LAST-NIGHT', 'last night', 'past'), ('SOON', 'soon', 'future'), ('EARLIER', 'earlier', 'past'),
    ('LATER', 'later', 'future'), ('THIS-WEEK', 'this week', 'present'))
# (gloss, subject form, object form, agreement: 1s | 3s | pl)
_PRONOUNS = (('I', 'I', 'me', '1s'), ('YOU', 'you', 'you', 'pl'), ('HE', 'he', 'him', '3s'),
             ('SHE', 'she', 'her', '3s'), ('WE', 'we', 'us', 'pl'), ('THEY', 'they', 'them', 'pl'))
_ANIMATE = (
    'dog cat bird horse cow pig sheep rabbit mouse lion bear monkey duck frog tiger wolf fox elephant '
    'owl snake goat chicken teacher doctor student child baby mother father brother sister friend farmer '
    'king queen boy girl man woman nurse cook driver artist neighbor grandmother grandfather singer pilot '
    'soldier baker dancer uncle aunt actor waiter writer judge clown lawyer painter').split()
_FOOD = set('apple bread cake egg orange sandwich carrot banana cookie pizza soup cheese pie lemon '
            'potato tomato onion melon'.split())
_THINGS = (
    'apple book car house ball bread letter phone table chair door window tree flower boat train cake '
    'shoe hat key box bag cup bottle pen lamp bed clock computer picture shirt coat ticket map bike bus '
    'plane egg orange umbrella candle basket bell blanket bowl bucket camera card coin drum fork glass '
    'guitar hammer jacket kite knife ladder mirror newspaper pencil pillow plate radio ring rope '
    'sandwich spoon stone toy watch wallet brush carrot banana cookie pizza soup cheese pie lemon potato '
    'tomato onion melon envelope sofa towel helmet violin bench tent scarf sock glove belt button '
    'needle shovel wheel').split()
# (base, 3rd person singular, past, object kind: any | animate | thing | food)
_TRANSITIVE = tuple(tuple(v.split(',')) for v in (
    'see,sees,saw,any like,likes,liked,any want,wants,wanted,thing help,helps,helped,animate '
    'find,finds,found,any buy,buys,bought,thing sell,sells,sold,thing carry,carries,carried,any '
    'draw,draws,drew,any paint,paints,painted,thing open,opens,opened,thing hold,holds,held,any '
    'throw,throws,threw,thing catch,catches,caught,any clean,cleans,cleaned,thing '
    'wash,washes,washed,any push,pushes,pushed,any pull,pulls,pulled,thing call,calls,called,animate '
    'meet,meets,met,animate visit,visits,visited,animate teach,teaches,taught,animate '
    'follow,follows,followed,animate love,loves,loved,any hate,hates,hated,any need,needs,needed,thing '
    'bring,brings,brought,thing take,takes,took,thing make,makes,made,thing break,breaks,broke,thing '
    'fix,fixes,fixed,thing hide,hides,hid,any watch,watches,watched,any drop,drops,dropped,thing '
    'kick,kicks,kicked,thing touch,touches,touched,any lose,loses,lost,thing '
    'borrow,borrows,borrowed,thing choose,chooses,chose,any remember,remembers,remembered,any '
    'forget,forgets,forgot,thing ask,asks,asked,animate thank,thanks,thanked,animate '
    'feed,feeds,fed,animate chase,chases,chased,animate hug,hugs,hugged,animate '
    'kiss,kisses,kissed,animate eat,eats,ate,food cook,cooks,cooked,food read,reads,read,thing '
    'write,writes,wrote,thing smell,smells,smelled,any cut,cuts,cut,thing keep,keeps,kept,any '
    'send,sends,sent,thing order,orders,ordered,thing protect,protects,protected,any').split())
# (base, 3rd person singular, past)
_INTRANSITIVE = tuple(tuple(v.split(',')) for v in (
    'sleep,sleeps,slept run,runs,ran laugh,laughs,laughed cry,cries,cried work,works,worked '
    'swim,swims,swam dance,dances,danced arrive,arrives,arrived leave,leaves,left wait,waits,waited '
    'sing,sings,sang jump,jumps,jumped walk,walks,walked sit,sits,sat fall,falls,fell '
    'smile,smiles,smiled rest,rests,rested play,plays,played shout,shouts,shouted '
    'travel,travels,traveled win,wins,won fly,flies,flew cough,coughs,coughed study,studies,studied '
    'climb,climbs,climbed listen,listens,listened hide,hides,hid').split())
# (adjective, applies to: a = animates, t = things, x = both)
_ADJECTIVES = tuple(tuple(v.split(',')) for v in (
    'happy,a sad,a tired,a angry,a hungry,a sick,a young,a old,x tall,a short,x big,x small,x red,t '
    'blue,t green,t yellow,t black,x white,x new,t heavy,t cheap,t expensive,t clean,x dirty,x '
    'beautiful,x ugly,x strong,a weak,a brave,a shy,a clever,a lazy,a busy,a calm,a funny,a quiet,x '
    'loud,x fast,x slow,x hot,t cold,x soft,t hard,t warm,t wet,x dry,t empty,t full,t broken,t '
    'round,t sweet,t sour,t fresh,t famous,a rich,a poor,a kind,a proud,a nervous,a friendly,a '
    'scared,a wooden,t long,t bright,t dark,x sharp,t strange,x lucky,a sleepy,a thirsty,a').split())
MAX_VOCAB = (2 + len(_TIME) + len(_PRONOUNS) + len(_ANIMATE) + len(_THINGS) + len(_TRANSITIVE)
             + len(_INTRANSITIVE) + len(_ADJECTIVES))

# ================================================================================================
# Phonology: handshapes, locations, movements, orientations (shoulder-width units, body frame:
# x to the image right = the signer's left, y down, z away from the camera; canonical signer is
# right-handed, so the dominant hand works on the -x side)
# ================================================================================================
# Finger flexion (MCP, PIP, DIP) in degrees, and thumb (abduction, opposition, MCP, IP).
_F = dict(straight=(0, 0, 0), fist=(85, 100, 60), hook=(10, 90, 70), bent=(80, 0, 0), c=(35, 40, 20),
          o=(50, 65, 40), relaxed=(20, 25, 10))
_T = dict(out=(60, 5, 0, 0), side=(20, 10, 15, 10), across=(25, 55, 50, 40), flat=(10, 25, 5, 0),
          c=(45, 45, 15, 10), o=(30, 65, 30, 30))
# name: (thumb, (index, middle, ring, pinky), spread)
_HANDSHAPES = dict(
    A=('side', ('fist',) * 4, 0), S=('across', ('fist',) * 4, 0), B=('flat', ('straight',) * 4, 0),
    **{'5': ('out', ('straight',) * 4, 1)},
    **{'1': ('across', ('straight', 'fist', 'fist', 'fist'), 0)},
    V=('across', ('straight', 'straight', 'fist', 'fist'), 1),
    W=('across', ('straight', 'straight', 'straight', 'fist'), 1),
    Y=('out', ('fist', 'fist', 'fist', 'straight'), 1), L=('out', ('straight', 'fist', 'fist', 'fist'), 0),
    C=('c', ('c',) * 4, 0), O=('o', ('o',) * 4, 0), I=('across', ('fist', 'fist', 'fist', 'straight'), 0),
    claw=('out', ('hook',) * 4, 1), horns=('across', ('straight', 'fist', 'fist', 'straight'), 1),
    **{'3': ('out', ('straight', 'straight', 'fist', 'fist'), 1)},
    bentB=('side', ('bent',) * 4, 0), X=('across', ('hook', 'fist', 'fist', 'fist'), 0),
)
_HS_NAMES = tuple(_HANDSHAPES)
# Abduction of index/middle/ring/pinky (degrees, + towards the thumb), closed and spread.
_ABDUCTION = (np.array([3., 0., -3., -6.]), np.array([14., 2., -10., -20.]))
# Hand geometry (right hand, local frame: X towards the thumb, Y along the fingers, Z out of the palm).
_FINGER_BASE = np.array([[0.085, 0.21, 0.], [0.03, 0.22, 0.], [-0.02, 0.21, 0.], [-0.065, 0.19, 0.]])
_FINGER_LEN = np.array([[0.11, 0.065, 0.055], [0.12, 0.075, 0.06], [0.11, 0.07, 0.055],
                        [0.09, 0.05, 0.045]])
_THUMB_BASE = np.array([0.06, 0.05, 0.01])
_THUMB_LEN = np.array([0.1, 0.08, 0.065])
_PALM_CENTER = np.array([0.015, 0.11, 0.])

_LOCATIONS = dict(  # centre of the dominant palm
    forehead=(-0.05, -0.85, -0.35), chin=(0., -0.5, -0.35), cheek=(-0.25, -0.65, -0.3),
    chest=(0., 0.35, -0.3), shoulder=(-0.45, 0.1, -0.3), other_shoulder=(0.35, 0.1, -0.3),
    neutral=(-0.15, 0.45, -0.7), high=(-0.2, -0.1, -0.7), waist=(-0.1, 0.85, -0.5),
    side=(-0.7, 0.4, -0.4))
_LOC_NAMES = tuple(_LOCATIONS)
_PERIODIC = ('tap', 'circle_front', 'circle_flat', 'shake', 'twist', 'nod', 'double')


def _movement(name, u):
  """Displacement f32[n, 3] and rotation (axis, angle f32[n]) of a movement at phases u: f32[n]."""
  e = u * u * (3 - 2 * u)  # ease in/out
  z, one = np.zeros_like(u), np.ones_like(u)
  s2, c2 = np.sin(2 * np.pi * u), np.cos(2 * np.pi * u)
  rot = None
  if name == 'tap':
    d = (z, z, 0.09 * s2 ** 2)
  elif name == 'forward':
    d = (z, z, -0.4 * e)
  elif name == 'down':
    d = (z, 0.35 * e, z)
  elif name == 'up':
    d = (z, -0.35 * e, z)
  elif name == 'out':
    d = (-0.35 * e, z, z)
  elif name == 'across':
    d = (0.4 * e, z, z)
  elif name == 'circle_front':
    d = (0.13 * (c2 - 1), 0.13 * s2, z)
  elif name == 'circle_flat':
    d = (0.13 * (c2 - 1), z, 0.13 * s2)
  elif name == 'arc':
    d = (z, -0.18 * np.sin(np.pi * u), -0.35 * e)
  elif name == 'zigzag':
    d = (0.09 * np.sin(4 * np.pi * u), 0.35 * e, z)
  elif name == 'shake':
    d = (0.09 * np.sin(4 * np.pi * u), z, z)
  elif name == 'twist':
    d, rot = (z, z, z), ((0., 1., 0.), np.radians(70) * s2)
  elif name == 'nod':
    d, rot = (z, 0.05 * s2 ** 2, z), ((1., 0., 0.), np.radians(50) * s2 ** 2)
  elif name == 'diagonal':
    d = (-0.27 * e, 0.27 * e, z)
  elif name == 'double':
    d = (z, z, -0.22 * np.abs(s2))
  elif name == 'toward_body':
    d = (z, z, 0.3 * e - 0.15 * one)
  elif name == 'spiral':
    d = (0.1 * (np.cos(4 * np.pi * u) - 1), 0.1 * np.sin(4 * np.pi * u), -0.3 * e)
  else:
    raise ValueError(name)
  return np.stack(d, -1), rot


_MOVE_NAMES = ('tap', 'forward', 'down', 'up', 'out', 'across', 'circle_front', 'circle_flat', 'arc',
               'zigzag', 'shake', 'twist', 'nod', 'diagonal', 'double', 'toward_body', 'spiral')
# (finger direction Y, palm normal Z) of the dominant (right) hand in the body frame.
_ORIENTATIONS = (
    ((0, -1, 0), (0, 0, -1)),   # fingers up, palm to the camera
    ((0, -1, 0), (1, 0, 0)),    # fingers up, palm to the midline
    ((0, 0, -1), (0, 1, 0)),    # fingers forward, palm down
    ((0, 0, -1), (1, 0, 0)),    # fingers forward, palm to the midline
    ((1, 0, 0), (0, 1, 0)),     # fingers to the midline, palm down
    ((0, -1, 0), (0, 0, 1)),    # fingers up, palm to the signer
    ((1, 0, 0), (0, 0, 1)),     # fingers to the midline, palm to the signer
    ((0, 0, -1), (0, -1, 0)),   # fingers forward, palm up
)
_HANDS_TYPES = ('one', 'sym', 'alt', 'base')
# Where the base (non-dominant) hand of 'base' signs sits, in its mirrored frame, and where the
# dominant hand acts on it.
_BASE_LOC = np.array([-0.12, 0.45, -0.45])
_ON_BASE_LOC = np.array([0.03, 0.3, -0.5])
_REST_LOC = np.array([-0.35, 1.1, -0.2])


# --- rotations ----------------------------------------------------------------------------------
def _quat_from_frame(y, z):
  """Quaternion (w, x, y, z) of the rotation whose columns are (X = Y x Z, Y, Z)."""
  y = np.asarray(y, float) / np.linalg.norm(y)
  z = np.asarray(z, float)
  z = z - (z @ y) * y
  z /= np.linalg.norm(z)
  m = np.stack([np.cross(y, z), y, z], axis=1)
  w = np.sqrt(max(1e-12, 1 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
  if w > 0.1:
    q = np.array([w, (m[2, 1] - m[1, 2]) / (4 * w), (m[0, 2] - m[2, 0]) / (4 * w),
                  (m[1, 0] - m[0, 1]) / (4 * w)])
  else:  # near 180 degrees: go through the largest diagonal element
    i = int(np.argmax(np.diag(m)))
    j, k = (i + 1) % 3, (i + 2) % 3
    r = np.sqrt(max(1e-12, 1 + m[i, i] - m[j, j] - m[k, k]))
    q = np.zeros(4)
    q[0] = (m[k, j] - m[j, k]) / (2 * r)
    q[1 + i] = r / 2
    q[1 + j] = (m[j, i] + m[i, j]) / (2 * r)
    q[1 + k] = (m[k, i] + m[i, k]) / (2 * r)
  return q / np.linalg.norm(q)


def _quat_mul(a, b):
  """Hamilton product of quaternions a, b: f32[..., 4]."""
  aw, ax, ay, az = np.moveaxis(a, -1, 0)
  bw, bx, by, bz = np.moveaxis(b, -1, 0)
  return np.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                   aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


def _quat_axis_angle(axis, angle):
  """Quaternions f32[n, 4] of rotations by angle: f32[n] about a fixed axis."""
  axis = np.asarray(axis, float) / np.linalg.norm(axis)
  return np.concatenate([np.cos(angle / 2)[:, None], np.sin(angle / 2)[:, None] * axis], -1)


def _quat_to_mat(q):
  """Rotation matrices f32[..., 3, 3] of (not necessarily unit) quaternions f32[..., 4]."""
  q = q / np.linalg.norm(q, axis=-1, keepdims=True)
  w, x, y, z = np.moveaxis(q, -1, 0)
  return np.stack([
      np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
      np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
      np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], -2)


_ORIENT_Q = np.stack([_quat_from_frame(y, z) for y, z in _ORIENTATIONS])
_REST_Q = _quat_from_frame((0.15, 0.8, -0.55), (1., 0., 0.3))


def _angles(handshape):
  """Joint-angle vector f32[20] (radians) of a handshape: 4 fingers x (MCP, PIP, DIP, abduction), thumb."""
  if handshape == 'relaxed':
    thumb, fingers, spread = 'side', ('relaxed',) * 4, 0
  else:
    thumb, fingers, spread = _HANDSHAPES[handshape]
  out = np.zeros(20)
  for f, name in enumerate(fingers):
    out[4 * f:4 * f + 3] = _F[name]
    out[4 * f + 3] = _ABDUCTION[spread][f]
  out[16:] = _T[thumb]
  return np.radians(out)


_HS_ANGLES = {name: _angles(name) for name in _HS_NAMES + ('relaxed',)}


# --- forward kinematics ---------------------------------------------------------------------------
def _hand_local(ang, scale):
  """Right-hand points f32[n, 21, 3] in its local frame (origin at the palm centre) from angles f32[n, 20]."""
  n = ang.shape[0]
  pts = np.zeros((n, 21, 3))
  fa = ang[:, :16].reshape(n, 4, 4)
  phi = np.cumsum(fa[..., :3], -1)                                        # [n, 4, 3]
  sa, ca = np.sin(fa[..., 3:4]), np.cos(fa[..., 3:4])                      # [n, 4, 1]
  seg = np.stack([sa * np.cos(phi), ca * np.cos(phi), np.sin(phi)], -1)    # [n, 4, 3, 3]
  seg = seg * _FINGER_LEN[None, :, :, None]
  chain = _FINGER_BASE[None, :, None, :] + np.concatenate(
      [np.zeros((n, 4, 1, 3)), np.cumsum(seg, axis=2)], axis=2)              # [n, 4, 4, 3]
  pts[:, 5:] = chain.reshape(n, 16, 3)
  abd, opp, mcp, ip = (ang[:, 16 + i] for i in range(4))
  t1 = np.stack([np.cos(opp) * np.sin(abd), np.cos(opp) * np.cos(abd), np.sin(opp)], -1)
  b = np.array([-0.6, 0., 0.8]) - (t1 @ np.array([-0.6, 0., 0.8]))[:, None] * t1
  b /= np.linalg.norm(b, axis=-1, keepdims=True)
  dirs = [t1, np.cos(mcp)[:, None] * t1 + np.sin(mcp)[:, None] * b,
          np.cos(mcp + ip)[:, None] * t1 + np.sin(mcp + ip)[:, None] * b]
  pts[:, 1] = _THUMB_BASE
  for k in range(3):
    pts[:, 2 + k] = pts[:, 1 + k] + _THUMB_LEN[k] * dirs[k]
  return (pts - _PALM_CENTER) * scale


def _hand_points(state, scale):
  """Right-hand points f32[n, 21, 3] in the body frame from states f32[n, 27] (pos, quat, angles)."""
  local = _hand_local(state[:, 7:], scale)
  rot = _quat_to_mat(state[:, 3:7])
  return state[:, None, :3] + np.einsum('nij,nkj->nki', rot, local)


def _elbows(shoulder, wrist, upper, fore, pole):
  """Elbow f32[n, 3] of a two-link arm from shoulder to wrist (both f32[n, 3]), bent towards `pole`."""
  d_vec = wrist - shoulder
  d = np.clip(np.linalg.norm(d_vec, axis=-1), 0.1, upper + fore - 1e-3)
  e = d_vec / np.maximum(np.linalg.norm(d_vec, axis=-1, keepdims=True), 1e-6)
  a = (upper ** 2 - fore ** 2 + d ** 2) / (2 * d)
  h = np.sqrt(np.maximum(upper ** 2 - a ** 2, 0.))
  p = pole - (e @ pole)[:, None] * e
  p /= np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), 1e-6)
  return shoulder + a[:, None] * e + h[:, None] * p


# ================================================================================================
# Lexicon
# ================================================================================================
def build_lexicon(seed: int, vocab_size: int) -> list[dict]:
  """The words of a corpus: list of dicts (gloss, cat, English forms, tags, sign)."""
  if not 20 <= vocab_size <= MAX_VOCAB:
    raise ValueError(f'vocab_size must be in [20, {MAX_VOCAB}], got {vocab_size}')
  rng = np.random.default_rng([seed, 0])
  v = vocab_size
  n_time = int(np.clip(round(0.06 * v), 2, len(_TIME)))
  n_pron = len(_PRONOUNS) if v >= 60 else 2
  n_adj = min(round(0.22 * v), len(_ADJECTIVES))
  n_trans = min(round(0.17 * v), len(_TRANSITIVE))
  n_intr = min(round(0.08 * v), len(_INTRANSITIVE))
  n_nouns = v - 2 - n_time - n_pron - n_adj - n_trans - n_intr
  n_anim = min(round(0.45 * n_nouns), len(_ANIMATE))
  n_thing = n_nouns - n_anim
  if n_thing > len(_THINGS):  # spill over to the other open classes
    extra, n_thing = n_thing - len(_THINGS), len(_THINGS)
    for name in ('anim', 'adj', 'trans', 'intr'):
      cap = dict(anim=len(_ANIMATE), adj=len(_ADJECTIVES), trans=len(_TRANSITIVE),
                 intr=len(_INTRANSITIVE))[name]
      cur = dict(anim=n_anim, adj=n_adj, trans=n_trans, intr=n_intr)[name]
      take = min(extra, cap - cur)
      extra -= take
      if name == 'anim':
        n_anim += take
      elif name == 'adj':
        n_adj += take
      elif name == 'trans':
        n_trans += take
      else:
        n_intr += take

  def pick(seq, k, keep_order=False):
    idx = np.sort(rng.permutation(len(seq))[:k]) if not keep_order else np.arange(k)
    return [seq[i] for i in idx]

  words = [dict(gloss='NOT', cat='not'), dict(gloss='Q', cat='q')]
  words += [dict(gloss=g, cat='time', en=e, tense=t) for g, e, t in pick(_TIME, n_time, True)]
  words += [dict(gloss=g, cat='pron', subj=s, obj=o, agr=a) for g, s, o, a in pick(_PRONOUNS, n_pron, True)]
  words += [dict(gloss=w.upper(), cat='noun', en=w, kind='a') for w in pick(_ANIMATE, n_anim)]
  things = pick(_THINGS, n_thing)
  words += [dict(gloss=w.upper(), cat='noun', en=w, kind='food' if w in _FOOD else 't') for w in things]
  words += [dict(gloss=b.upper(), cat='tv', base=b, s3=s, past=p, obj=o)
            for b, s, p, o in pick(_TRANSITIVE, n_trans)]
  words += [dict(gloss=b.upper(), cat='iv', base=b, s3=s, past=p) for b, s, p in pick(_INTRANSITIVE, n_intr)]
  words += [dict(gloss=a.upper(), cat='adj', en=a, kind=k) for a, k in pick(_ADJECTIVES, n_adj)]
  assert len(words) == vocab_size, (len(words), vocab_size)
  seen = set()
  for w in words:  # 'cook' (noun/verb), 'hide' (verb/verb): one gloss per sign
    while w['gloss'] in seen:
      w['gloss'] += '-' + w['cat'].upper()
    seen.add(w['gloss'])
  _assign_signs(words, rng)
  for i, w in enumerate(words):
    w['id'] = i
  return words


def _assign_signs(words, rng):
  """Gives every word a sign; two signs differ in >= 2 of handshape/location/movement/orientation/hands."""
  chosen = []
  for w in words:
    for _ in range(10000):
      hands = _HANDS_TYPES[rng.choice(4, p=[0.6, 0.18, 0.07, 0.15])]
      move = _MOVE_NAMES[rng.integers(len(_MOVE_NAMES))]
      if hands == 'alt' and move not in _PERIODIC:
        hands = 'sym'
      hs = _HS_NAMES.index('1') if w['cat'] == 'pron' else rng.integers(len(_HS_NAMES))  # pronouns point
      loc = rng.integers(len(_LOC_NAMES))
      ori = rng.integers(len(_ORIENTATIONS))
      key = (hs, loc if hands != 'base' else -1, _MOVE_NAMES.index(move), ori, hands)
      if all(sum(a != b for a, b in zip(key, other)) >= 2 for other in chosen):
        break
    else:
      raise RuntimeError('could not find a distinct sign')
    chosen.append(key)
    hs2 = hs
    if w['cat'] != 'pron' and rng.random() < 0.2:  # handshape change within the sign
      hs2 = rng.integers(len(_HS_NAMES))
    tilt_axis = rng.normal(size=3)
    w['sign'] = dict(
        hands=hands, handshape=_HS_NAMES[hs], handshape_end=_HS_NAMES[hs2],
        location=_LOC_NAMES[loc], movement=move, orientation=int(ori),
        tilt=[float(x) for x in tilt_axis / np.linalg.norm(tilt_axis) * np.radians(rng.uniform(0, 15))],
        base_handshape=('B', '5', 'S', '1', 'C', 'O')[rng.integers(6)],
        base_orientation=int((7, 1, 4)[rng.integers(3)]),
        frames=int(rng.integers(8, 13)))


# ================================================================================================
# Grammar
# ================================================================================================
def _compatible_adj(adjs, kind):
  want = 'a' if kind == 'a' else 't'
  return [a for a in adjs if a['kind'] in (want, 'x')]


class _Grammar:
  """Samples sentences (list of word ids, in sign order) and translates them to English."""

  def __init__(self, words):
    self.words = words
    by = lambda c: [w for w in words if w['cat'] == c]
    self.time, self.pron, self.adj = by('time'), by('pron'), by('adj')
    self.tv, self.iv = by('tv'), by('iv')
    nouns = by('noun')
    self.animate = [w for w in nouns if w['kind'] == 'a']
    self.things = [w for w in nouns if w['kind'] != 'a']
    self.food = [w for w in nouns if w['kind'] == 'food']
    self.nouns = nouns
    self.not_id = next(w['id'] for w in words if w['cat'] == 'not')
    self.q_id = next(w['id'] for w in words if w['cat'] == 'q')

  def _choice(self, rng, seq):
    return seq[rng.integers(len(seq))]

  def sample(self, rng):
    """One sentence: dict(ids (sign order), text)."""
    while True:
      s = self._sample(rng)
      if len(s['ids']) >= 3:
        return s

  def _np(self, rng, role, kind):
    """A noun phrase: (head word, adjective or None). kind: 'a' | 't' | 'food' | 'any'."""
    pool = dict(a=self.animate, t=self.things, food=self.food or self.things,
                any=self.nouns)[kind] or self.nouns
    if self.pron and kind in ('a', 'any') and rng.random() < (0.2 if role == 'subj' else 0.12):
      return self._choice(rng, self.pron), None
    head = self._choice(rng, pool)
    adj = None
    if rng.random() < 0.3:
      cands = _compatible_adj(self.adj, 'a' if head['kind'] == 'a' else 't')
      adj = self._choice(rng, cands) if cands else None
    return head, adj

  def _sample(self, rng):
    r = rng.random()
    structure = 'tv' if r < 0.5 else ('iv' if r < 0.75 else 'cop')
    if structure == 'tv' and not self.tv:
      structure = 'iv'
    if structure == 'iv' and not self.iv:
      structure = 'cop'
    time = self._choice(rng, self.time) if self.time and rng.random() < 0.45 else None
    neg = rng.random() < 0.25
    q = (not neg) and rng.random() < 0.15
    verb = obj = pred = None
    if structure == 'cop':
      subj = self._np(rng, 'subj', 'any')
      kind = 'a' if subj[0]['cat'] == 'pron' or subj[0]['kind'] == 'a' else 't'
      cands = [a for a in _compatible_adj(self.adj, kind) if a is not subj[1]]
      if not cands:
        return dict(ids=[])
      pred = self._choice(rng, cands)
    else:
      subj = self._np(rng, 'subj', 'a')
      if structure == 'tv':
        verb = self._choice(rng, self.tv)
        obj = self._np(rng, 'obj', dict(animate='a', thing='t', food='food', any='any')[verb['obj']])
      else:
        verb = self._choice(rng, self.iv)
    ids = [time['id']] if time else []
    ids += [subj[0]['id']] + ([subj[1]['id']] if subj[1] else [])
    if obj:
      ids += [obj[0]['id']] + ([obj[1]['id']] if obj[1] else [])
    ids += [verb['id'] if verb else pred['id']]
    ids += [self.not_id] if neg else []
    ids += [self.q_id] if q else []
    return dict(ids=ids, text=self.english(structure, time, subj, obj, verb, pred, neg, q))

  @staticmethod
  def english(structure, time, subj, obj, verb, pred, neg, q):
    tense = time['tense'] if time else 'present'
    head, adj = subj
    if head['cat'] == 'pron':
      subj_txt, agr = head['subj'], head['agr']
    else:
      subj_txt, agr = ' '.join(['the'] + ([adj['en']] if adj else []) + [head['en']]), '3s'
    rest = []
    if structure == 'cop':
      be = dict(present=dict(s1='am', s3='is', pl='are'), past=dict(s1='was', s3='was', pl='were'))
      if tense == 'future':
        aux, main = 'will', ['be', pred['en']]
      else:
        aux, main = be[tense][{'1s': 's1', '3s': 's3', 'pl': 'pl'}[agr]], [pred['en']]
      if q:
        words = [aux, subj_txt] + main
      else:
        words = [subj_txt, aux] + (['not'] if neg else []) + main
    else:
      if obj:
        o_head, o_adj = obj
        if o_head['cat'] == 'pron':
          rest = [o_head['obj']]
        else:
          first = (o_adj or o_head)['en']
          rest = ['an' if first[0] in 'aeiou' else 'a'] + ([o_adj['en']] if o_adj else []) + [o_head['en']]
      do = dict(present='does' if agr == '3s' else 'do', past='did', future='will')[tense]
      if q:
        words = [do, subj_txt, verb['base']] + rest
      elif neg:
        words = [subj_txt, do, 'not', verb['base']] + rest
      elif tense == 'future':
        words = [subj_txt, 'will', verb['base']] + rest
      else:
        form = verb['past'] if tense == 'past' else (verb['s3'] if agr == '3s' else verb['base'])
        words = [subj_txt, form] + rest
    if time:
      words.append(time['en'])
    text = ' '.join(words)
    return text[0].upper() + text[1:] + ('?' if q else '.')


def _pairs(ids, not_id, q_id):
  content = sorted({i for i in ids if i not in (not_id, q_id)})
  return {(a, b) for k, a in enumerate(content) for b in content[k + 1:]}


def _tokens(text):
  return set(text.lower().rstrip('.?').split())


def make_sentences(words, seed, num_train, num_val, num_test, heldout_pair_frac=0.03):
  """Sentences per split: dict split -> list of dict(ids, text). See the module docstring."""
  g = _Grammar(words)
  rng = np.random.default_rng([seed, 1])
  content = [w['id'] for w in words if w['cat'] not in ('not', 'q')]
  all_pairs = [(a, b) for k, a in enumerate(content) for b in content[k + 1:]]
  perm = rng.permutation(len(all_pairs))
  n_held = max(1, int(heldout_pair_frac * len(all_pairs)))
  held = dict(val={all_pairs[i] for i in perm[:n_held]},
              test={all_pairs[i] for i in perm[n_held:2 * n_held]})
  banned = held['val'] | held['test']
  out = dict(train=[], val=[], test=[])
  seen_words = set()
  # Training: the first sentences each cover one word (in a random order), then free sampling.
  order = [words[i]['id'] for i in rng.permutation(len(words))]
  counts = np.zeros(len(words), int)
  for i in range(num_train):
    must = order[i] if i < len(order) else None
    cands = []
    for _ in range(20000):
      s = g.sample(rng)
      if (must is None or must in s['ids']) and not (_pairs(s['ids'], g.not_id, g.q_id) & banned):
        cands.append(s)
        if must is not None or len(cands) == 2:
          break
    if not cands:
      raise RuntimeError(f'could not sample a training sentence with word {words[must]["gloss"]}')
    # Of two candidates keep the one with the rarer word so far: flattens word frequencies (thing-only
    # adjectives and nouns would otherwise be several times rarer than the rest).
    best = min(cands, key=lambda c: counts[c['ids']].min())
    out['train'].append(best)
    counts[best['ids']] += 1
    seen_words.update(best['ids'])
  train_texts = {s['text'] for s in out['train']}
  train_tokens = set().union(*(_tokens(s['text']) for s in out['train']))
  for split, n in (('val', num_val), ('test', num_test)):
    other = held['test' if split == 'val' else 'val']
    texts = set()
    for _ in range(n):
      for _ in range(100000):
        s = g.sample(rng)
        p = _pairs(s['ids'], g.not_id, g.q_id)
        if (p & held[split] and not p & other and set(s['ids']) <= seen_words
            and s['text'] not in train_texts and s['text'] not in texts
            and _tokens(s['text']) <= train_tokens):
          break
      else:
        raise RuntimeError(f'could not sample a {split} sentence (corpus too small?)')
      texts.add(s['text'])
      out[split].append(s)
  return out


# ================================================================================================
# Signers and rendering
# ================================================================================================
def make_signers(seed: int, num_signers: int) -> list[dict]:
  """Per-signer body, camera and style parameters."""
  rng = np.random.default_rng([seed, 2])
  left = rng.random(num_signers) < 0.25
  if num_signers >= 2:  # both handednesses present, left-handers a minority
    left[:] = False
    left[rng.permutation(num_signers)[:max(1, round(0.25 * num_signers))]] = True
  signers = []
  for i in range(num_signers):
    signers.append(dict(
        left_handed=bool(left[i]),
        shoulder_px=float(rng.uniform(0.2, 0.3)),          # shoulder width / image width
        center=(float(rng.uniform(0.42, 0.58)), float(rng.uniform(0.36, 0.46))),  # shoulder midpoint
        upper_arm=float(rng.uniform(0.75, 0.85)), forearm=float(rng.uniform(0.63, 0.73)),
        hand=float(rng.uniform(0.9, 1.1)), head=float(rng.uniform(0.9, 1.1)),
        torso=float(rng.uniform(1.3, 1.55)),
        yaw=float(np.radians(rng.uniform(-10, 10))),
        tempo=float(rng.uniform(0.8, 1.25)),               # frames multiplier (slow > 1)
        amplitude=float(rng.uniform(0.85, 1.15)),
        offset=[float(x) for x in rng.normal(0, 0.04, 3)],  # signing-space offset
        sway=float(rng.uniform(0.005, 0.025)),
    ))
  return signers


_BODY = dict(  # canonical body points (shoulder-width units, shoulder midpoint origin) except arms
    NOSE=(0, -0.68, -0.22), LEFT_EYE_INNER=(0.04, -0.76, -0.18), LEFT_EYE=(0.07, -0.76, -0.17),
    LEFT_EYE_OUTER=(0.1, -0.76, -0.15), LEFT_EAR=(0.17, -0.72, 0.), MOUTH_LEFT=(0.06, -0.58, -0.18),
    LEFT_SHOULDER=(0.5, 0., 0.), LEFT_HIP=(0.32, 1.0, 0.02), LEFT_KNEE=(0.3, 1.95, 0.),
    LEFT_ANKLE=(0.3, 2.85, 0.05), LEFT_HEEL=(0.3, 2.95, 0.1), LEFT_FOOT_INDEX=(0.3, 3.0, -0.15))
for _k in list(_BODY):
  if _k.startswith('LEFT_'):
    _x, _y, _z = _BODY[_k]
    _BODY['RIGHT_' + _k[5:]] = (-_x, _y, _z)
_HEAD_POINTS = ('NOSE', 'LEFT_EYE_INNER', 'LEFT_EYE', 'LEFT_EYE_OUTER', 'RIGHT_EYE_INNER', 'RIGHT_EYE',
                'RIGHT_EYE_OUTER', 'LEFT_EAR', 'RIGHT_EAR', 'MOUTH_LEFT', 'MOUTH_RIGHT')
_VISIBILITY = dict(SHOULDER=0.99, ELBOW=0.95, WRIST=0.9, FOOT_INDEX=0.06, PINKY=0.85, INDEX=0.85,
                   THUMB=0.85, HIP=0.7, KNEE=0.25, ANKLE=0.08, HEEL=0.06)


def _face_template():
  """468 face-mesh points f32[468, 3] on a mirror-symmetric half-ellipsoid (head frame)."""
  mirror = np.asarray(keypoints.FACE_MIRROR)
  pts = np.zeros((468, 3))
  golden = np.pi * (3 - np.sqrt(5))
  for i in range(468):
    j = mirror[i]
    if j < i:
      pts[i] = pts[j] * (-1, 1, 1)
      continue
    t = (i + 0.5) / 468
    y = 1 - 2 * t
    r = np.sqrt(1 - y * y)
    x = abs(np.cos(golden * i) * r) if j != i else 0.
    z = -np.sqrt(max(0., 1 - y * y - x * x))
    pts[i] = (x * 0.2, y * 0.28, z * 0.15)
  return pts


_FACE = _face_template()


def _sign_states(sign, n, signer, rng):
  """States f32[n, 2, 27] of one sign: dominant hand, non-dominant hand (in its mirrored frame)."""
  u = (np.arange(n) + 0.5) / n
  hands = sign['hands']
  loc = np.array(_ON_BASE_LOC if hands == 'base' else _LOCATIONS[sign['location']], float)
  if hands in ('sym', 'alt'):
    loc[0] = min(loc[0], -0.2)  # keep the two hands apart
  loc = loc + np.asarray(signer['offset']) + rng.normal(0, 0.02, 3)
  amp = signer['amplitude'] * rng.uniform(0.9, 1.1) * (0.7 if hands == 'base' else 1.0)
  q0 = _quat_mul(_ORIENT_Q[sign['orientation']],
                 _quat_axis_angle(sign['tilt'], np.array([np.linalg.norm(sign['tilt'])]))[0]
                 if np.linalg.norm(sign['tilt']) > 0 else np.array([1., 0, 0, 0]))

  def track(phase):
    d, rot = _movement(sign['movement'], phase)
    q = np.broadcast_to(q0, (len(phase), 4))
    if rot is not None:
      q = _quat_mul(q, _quat_axis_angle(rot[0], rot[1]))  # about the hand's own axis
    w = np.clip((phase - 0.3) / 0.4, 0, 1)[:, None]
    ang = (1 - w) * _HS_ANGLES[sign['handshape']] + w * _HS_ANGLES[sign['handshape_end']]
    return np.concatenate([loc + amp * d, q, ang], -1)

  dom = track(u)
  if hands == 'one':
    other = np.broadcast_to(_rest_state(), (n, 27))
  elif hands == 'sym':
    other = dom
  elif hands == 'alt':
    other = track((u + 0.5) % 1.0)
  else:
    base = np.concatenate([_BASE_LOC + np.asarray(signer['offset']) * (-1, 1, 1),
                           _ORIENT_Q[sign['base_orientation']], _HS_ANGLES[sign['base_handshape']]])
    other = np.broadcast_to(base, (n, 27))
  return np.stack([dom, other], 1)


def _rest_state():
  return np.concatenate([_REST_LOC, _REST_Q, _HS_ANGLES['relaxed']])


def _align_quats(states):
  """Flips quaternion signs so consecutive frames lie in the same hemisphere (in place)."""
  q = states[..., 3:7]
  flips = np.sum(q[1:] * q[:-1], -1) < 0                                    # [T-1, 2]
  sign = np.where(np.cumsum(flips, 0) % 2 == 1, -1., 1.)
  q[1:] *= sign[..., None]


def _smooth(x, sigma):
  """Gaussian smoothing along axis 0 (edges held)."""
  r = int(np.ceil(2.5 * sigma))
  k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  k /= k.sum()
  pad = np.concatenate([np.repeat(x[:1], r, 0), x, np.repeat(x[-1:], r, 0)])
  return sum(k[i] * pad[i:i + len(x)] for i in range(2 * r + 1))


def render_sentence(words, ids, signer, rng, fps=25.0):
  """Tracks of one sentence: dict(state f32[T, 2, 27], spans [(start, end)] of the signs)."""
  rate = fps / 25.0  # durations are designed in frames at 25 fps
  tempo = signer['tempo'] * rate
  signs = []
  for i in ids:
    n = max(5, int(round(words[i]['sign']['frames'] * tempo * rng.uniform(0.9, 1.1))))
    signs.append(_sign_states(words[i]['sign'], n, signer, rng))
  rest = np.broadcast_to(_rest_state(), (2, 27))
  # Co-articulation: each sign's start is pulled towards where the previous one ended, and its end
  # towards where the next one starts (position and handshape).
  ends = [rest] + [s[-1] for s in signs]
  starts = [s[0] for s in signs] + [rest]
  for k, s in enumerate(signs):
    u = ((np.arange(len(s)) + 0.5) / len(s))[:, None, None]
    pull = 0.2 * (ends[k] - s[0]) * (1 - u) ** 3 + 0.15 * (starts[k + 1] - s[-1]) * u ** 3
    pull[..., 3:7] = 0
    signs[k] = s + pull
  pieces = [np.repeat(rest[None], int(round(rng.integers(3, 7) * rate)), 0)]
  spans = []
  t = len(pieces[0])
  prev = rest
  for s in signs + [None]:
    nxt = s[0] if s is not None else rest
    dist = np.linalg.norm(nxt[0, :3] - prev[0, :3])
    m = int(np.clip(round((2 + 3 * dist) * tempo), 2 * rate, 6 * rate))
    w = ((np.arange(1, m + 1) / (m + 1)) ** 2 * (3 - 2 * np.arange(1, m + 1) / (m + 1)))[:, None, None]
    nxt_q = nxt.copy()
    flip = np.sum(nxt_q[:, 3:7] * prev[:, 3:7], -1) < 0
    nxt_q[flip, 3:7] *= -1
    pieces.append((1 - w) * prev + w * nxt_q)
    t += m
    if s is None:
      break
    pieces.append(s)
    spans.append((t, t + len(s)))
    t += len(s)
    prev = s[-1]
  pieces.append(np.repeat(rest[None], int(round(rng.integers(3, 7) * rate)), 0))
  state = np.concatenate(pieces, 0)
  _align_quats(state)
  state = _smooth(state, rate)
  return dict(state=state, spans=spans)


_POSE_NAMES = keypoints.POSE_LANDMARKS
_BODY_CANON = np.array([_BODY.get(n, (0., 0., 0.)) for n in _POSE_NAMES])
_IS_HEAD = np.array([n in _HEAD_POINTS for n in _POSE_NAMES])
_IS_LOWER = np.array([any(k in n for k in ('HIP', 'KNEE', 'ANKLE', 'HEEL', 'FOOT')) for n in _POSE_NAMES])
_SWAP = np.array([_POSE_NAMES.index(n.replace('LEFT', '\0').replace('RIGHT', 'LEFT').replace('\0', 'RIGHT'))
                  for n in _POSE_NAMES])
_VIS = np.array([next((v for k, v in _VISIBILITY.items() if n.endswith(k)), 0.99) for n in _POSE_NAMES])
_P = {n: i for i, n in enumerate(_POSE_NAMES)}


def _skeleton(state, signer, rng, fps):
  """Body-frame points of the canonical right-handed signer.

  Returns pose f32[T, 33, 3] (POSE_LANDMARKS order), hands dict side -> f32[T, 21, 3], face f32[T, 468, 3].
  """
  T = len(state)
  right = _hand_points(state[:, 0], signer['hand'])
  left = _hand_points(state[:, 1], signer['hand']) * (-1, 1, 1)  # mirrored frame -> left hand
  # Torso sway: a slow drift of the whole upper body plus a small roll of the shoulder line.
  t = np.arange(T) / fps
  ph = rng.uniform(0, 2 * np.pi, 3)
  sway = signer['sway'] * np.stack([np.sin(2 * np.pi * 0.4 * t + ph[0]),
                                    0.5 * np.sin(2 * np.pi * 0.3 * t + ph[1]), 0 * t], -1)
  roll = 0.02 * np.sin(2 * np.pi * 0.25 * t + ph[2])
  canon = _BODY_CANON * np.where(_IS_HEAD, signer['head'], 1.)[:, None]
  canon = canon * np.where(_IS_LOWER[:, None], (1., signer['torso'], 1.), 1.)
  moving = (~_IS_LOWER)[None, :, None]
  pts = canon + moving * (sway[:, None] + np.stack([0 * canon[:, 0], canon[:, 0], 0 * canon[:, 0]], -1)
                          * roll[:, None, None])
  hands = dict(RIGHT=right, LEFT=left)
  for side, sgn in (('RIGHT', -1), ('LEFT', 1)):
    h = hands[side]
    pts[:, _P[f'{side}_WRIST']] = h[:, 0]
    pts[:, _P[f'{side}_ELBOW']] = _elbows(pts[:, _P[f'{side}_SHOULDER']], h[:, 0], signer['upper_arm'],
                                          signer['forearm'], np.array([1.0 * sgn, 0.8, 0.1]))
    pts[:, _P[f'{side}_PINKY']] = h[:, 17]
    pts[:, _P[f'{side}_INDEX']] = h[:, 5]
    pts[:, _P[f'{side}_THUMB']] = h[:, 3]
  origin = pts[:, _P['NOSE']] - _BODY_CANON[_P['NOSE']] * signer['head']
  face = origin[:, None] + (_FACE + np.array([0, -0.78, -0.05])) * signer['head']
  return pts, hands, face


def _dropouts(T, p, rng, rest_frames):
  """bool[T] True where a hand is not detected: bursts (mean 3 frames) and sometimes the rest frames."""
  miss = np.zeros(T, bool)
  if p <= 0:
    return miss
  starts = np.nonzero(rng.random(T) < p / (3 * (1 - p)))[0]
  for s in starts:
    miss[s:s + rng.geometric(1 / 3)] = True
  for a, b in rest_frames:
    if rng.random() < min(1., 10 * p):
      miss[a:b] = True
  return miss


class _Layout:
  """Where the points of a header come from: per component (offset, indices into our arrays)."""

  def __init__(self, header):
    self.header = header
    self.total = sum(len(c.points) for c in header.components)
    self.slices = {}
    off = 0
    for c in header.components:
      if c.name in (keypoints.POSE, keypoints.POSE_WORLD):
        idx = [_POSE_NAMES.index(n) for n in c.points]
      elif c.name in (keypoints.LEFT_HAND, keypoints.RIGHT_HAND):
        idx = [keypoints.HAND_LANDMARKS.index(n) for n in c.points]
      elif c.name == keypoints.FACE:
        idx = [int(n) for n in c.points]
      else:
        raise ValueError(f'unknown component {c.name}')
      self.slices[c.name] = (off, np.asarray(idx))
      off += len(c.points)


def render_pose(words, ids, signer, layout, rng, noise, dropout_prob, fps=25.0):
  """One example: (data f32[T, 1, P, 3] in pixels, confidence f32[T, 1, P], spans of the signs)."""
  tracks = render_sentence(words, ids, signer, rng, fps)
  state, spans = tracks['state'], tracks['spans']
  T = len(state)
  pose, hands, face = _skeleton(state, signer, rng, fps)
  if signer['left_handed']:  # mirror image of a right-handed signer: swap sides, negate x
    pose = pose[:, _SWAP] * (-1, 1, 1)
    hands = dict(RIGHT=hands['LEFT'] * (-1, 1, 1), LEFT=hands['RIGHT'] * (-1, 1, 1))
    face = face[:, np.asarray(keypoints.FACE_MIRROR)] * (-1, 1, 1)
  # Body turn (yaw about the vertical axis through the shoulders), perspective, pixels.
  W, H = layout.header.dimensions.width, layout.header.dimensions.height
  sw = signer['shoulder_px'] * W
  cy, sy = np.cos(signer['yaw']), np.sin(signer['yaw'])

  def project(p):
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    x, z = cy * x + sy * z, -sy * x + cy * z
    f = 7.0 / (7.0 + z)
    return np.stack([signer['center'][0] * W + sw * x * f, signer['center'][1] * H + sw * y * f,
                     sw * z], -1)

  data = np.zeros((T, layout.total, 3))
  conf = np.zeros((T, layout.total))
  scale = noise * sw
  for comp, (off, idx) in layout.slices.items():
    k = len(idx)
    if comp == keypoints.POSE:
      data[:, off:off + k] = project(pose[:, idx]) + rng.normal(0, 0.5 * scale, (T, k, 3))
      conf[:, off:off + k] = np.clip(_VIS[idx] - np.abs(rng.normal(0, 0.03, (T, k))), 0.01, 1.)
    elif comp == keypoints.POSE_WORLD:  # metres, origin between the hips
      hip = (pose[:, _P['LEFT_HIP']] + pose[:, _P['RIGHT_HIP']]) / 2
      data[:, off:off + k] = (pose[:, idx] - hip[:, None]) * 0.38 + rng.normal(0, 0.002, (T, k, 3))
      conf[:, off:off + k] = np.clip(_VIS[idx] - np.abs(rng.normal(0, 0.03, (T, k))), 0.01, 1.)
    elif comp == keypoints.FACE:
      data[:, off:off + k] = project(face[:, idx]) + rng.normal(0, 0.3 * scale, (T, k, 3))
      conf[:, off:off + k] = 1.
  rest_frames = [(0, spans[0][0]), (spans[-1][1], T)]
  for side, comp in (('LEFT', keypoints.LEFT_HAND), ('RIGHT', keypoints.RIGHT_HAND)):
    if comp not in layout.slices:
      continue
    off, idx = layout.slices[comp]
    h = project(hands[side][:, idx])
    h = h + rng.normal(0, scale, h.shape) + rng.normal(0, 0.5 * scale, (T, 1, 3))
    miss = _dropouts(T, dropout_prob, rng, rest_frames)
    h[miss] = 0.
    data[:, off:off + len(idx)] = h
    conf[:, off:off + len(idx)] = np.where(miss, 0., 1.)[:, None]
  return data[:, None].astype(np.float32), conf[:, None].astype(np.float32), spans


# ================================================================================================
# Corpus
# ================================================================================================
def _params(seed, vocab_size, num_signers, num_train, num_val, num_test, noise, dropout_prob,
            num_heldout_signers, fps, layout, heldout_pair_frac):
  return dict(version=VERSION, seed=int(seed), vocab_size=int(vocab_size), num_signers=int(num_signers),
              num_train=int(num_train), num_val=int(num_val), num_test=int(num_test),
              noise=float(noise), dropout_prob=float(dropout_prob),
              num_heldout_signers=int(num_heldout_signers), fps=float(fps), layout=str(layout),
              heldout_pair_frac=float(heldout_pair_frac))


# With held-out signers every val / test sentence is signed twice, once by each group (named as data.mixture
# corpora: inputs.resolve_data_paths scores each group as a corpus of the split).
SIGNER_GROUPS = ('seen_signers', 'unseen_signers')


# The knobs of generate_corpus (config.data.synthetic holds each, plus `enabled`) and their defaults.
DEFAULTS = dict(seed=0, vocab_size=120, num_signers=8, num_train=4000, num_val=200, num_test=200, noise=0.01,
                dropout_prob=0.02, num_heldout_signers=0, fps=25.0, layout='reduced', heldout_pair_frac=0.03)


def check_params(prefix: str = 'synthetic corpus parameter ', **params) -> None:
  """Raises ValueError naming (after `prefix`) the first knob of generate_corpus (DEFAULTS) whose value cannot
  make a corpus."""
  unknown = sorted(set(params) - set(DEFAULTS))
  if unknown:
    raise ValueError(f'unknown {prefix}{unknown}; the generator takes {sorted(DEFAULTS)}')
  p = {**DEFAULTS, **params}
  problems = (
      ('vocab_size', 20 <= p['vocab_size'] <= MAX_VOCAB, f'a number of signs in [20, {MAX_VOCAB}]'),
      ('num_signers', p['num_signers'] >= 1, '>= 1'),
      ('num_heldout_signers', 0 <= p['num_heldout_signers'] < p['num_signers'],
       f"in [0, num_signers - 1 = {p['num_signers'] - 1}] (at least one signer must sign the training split)"),
      ('num_train', p['num_train'] >= 1, '>= 1 sentence'),
      ('num_val', p['num_val'] >= 0, '>= 0 sentences'),
      ('num_test', p['num_test'] >= 0, '>= 0 sentences'),
      ('noise', p['noise'] >= 0, '>= 0 (keypoint noise std, in shoulder widths)'),
      ('dropout_prob', 0 <= p['dropout_prob'] < 1, 'in [0, 1) (the fraction of hand-frames not detected)'),
      ('fps', p['fps'] > 0, '> 0 frames per second'),
      ('layout', p['layout'] in ('reduced', 'full'), "'reduced' (178 points) or 'full' (543)"),
      ('heldout_pair_frac', 0 <= p['heldout_pair_frac'] <= 1,
       'in [0, 1] (the share of content-word pairs kept out of training)'),
  )
  for name, ok, want in problems:
    if not ok:
      raise ValueError(f'{prefix}{name} must be {want}, got {p[name]!r}')


def _paths(out_dir, heldout_signers: bool = False):
  groups = {g: {s: os.path.join(out_dir, f'{s}_{g}.csv') for s in ('val', 'test')}
            for g in (SIGNER_GROUPS if heldout_signers else ())}
  return dict(train=os.path.join(out_dir, 'train.csv'), val=os.path.join(out_dir, 'val.csv'),
              test=os.path.join(out_dir, 'test.csv'), pose_dir=os.path.join(out_dir, 'poses'),
              glosses=os.path.join(out_dir, 'glosses.csv'), lexicon=os.path.join(out_dir, 'lexicon.json'),
              groups=groups)


class _Job(collections.namedtuple('_Job', 'split_id index ids signer signer_range group')):
  """One example to render: sentence `index` of split `split_id` (sign ids `ids`) by `signer`, drawn from
  `signer_range` (lo, hi) by the example's RNG; group: '' or one of SIGNER_GROUPS."""

  @property
  def uid(self) -> str:
    split = ('train', 'val', 'test')[self.split_id]
    return f"{split}_{self.group.split('_')[0]}_{self.index:05d}" if self.group else f'{split}_{self.index:05d}'

  def rng(self, seed: int) -> np.random.Generator:
    """The example's RNG: (seed, split, index), plus a stream of its own for the held-out signer's rendering."""
    return np.random.default_rng([seed, 3, self.split_id, self.index] + ([1] if self.group == SIGNER_GROUPS[1]
                                                                          else []))


def _jobs(sentences: dict, seed: int, num_signers: int, num_heldout_signers: int) -> list:
  """The examples of the corpus in file order: training sentences by the training signers (the first
  num_signers - num_heldout_signers); val / test sentences by any signer, or, with held-out signers, each twice:
  by a training signer (group seen_signers, then) by a held-out one (unseen_signers)."""
  n_train = num_signers - num_heldout_signers
  jobs = []
  for split_id, split in enumerate(('train', 'val', 'test')):
    if split == 'train':
      kinds = [('', (0, n_train))]
    elif num_heldout_signers:
      kinds = list(zip(SIGNER_GROUPS, ((0, n_train), (n_train, num_signers))))
    else:
      kinds = [('', (0, num_signers))]
    for group, signer_range in kinds:
      for i, s in enumerate(sentences[split]):
        job = _Job(split_id, i, s['ids'], -1, signer_range, group)
        jobs.append(job._replace(signer=int(job.rng(seed).integers(*signer_range))))
  return jobs


def _write_csv(path: str, rows: list) -> None:
  with open(path, 'w', newline='') as f:
    w = csv.writer(f, lineterminator='\n')
    w.writerow(('uid', 'text'))
    w.writerows(rows)


def generate_corpus(out_dir, *, seed=0, vocab_size=120, num_signers=8, num_train=4000, num_val=200,
                    num_test=200, noise=0.01, dropout_prob=0.02, num_heldout_signers=0, fps=25.0,
                    layout='reduced', heldout_pair_frac=0.03, verbose=False) -> dict:
  """Writes a corpus into out_dir and returns its paths (see the module docstring).

  seed: everything derives from it. vocab_size: number of signs. num_signers: signers drawn per
  sentence; the last `num_heldout_signers` of them sign only val/test (each val/test sentence is then signed
  by a training signer and by a held-out one: `paths['groups']`). noise: keypoint noise std in
  shoulder widths. dropout_prob: fraction of hand-frames with a dropped detection. fps: frame rate
  (motion is timed for 25 fps and rescaled to it). layout: 'reduced'
  (178-point Holistic, as pose-format's reduce_holistic) or 'full' (543 points).
  """
  check_params(vocab_size=vocab_size, num_signers=num_signers, num_train=num_train, num_val=num_val,
               num_test=num_test, noise=noise, dropout_prob=dropout_prob, num_heldout_signers=num_heldout_signers,
               fps=fps, layout=layout, heldout_pair_frac=heldout_pair_frac)
  params = _params(seed, vocab_size, num_signers, num_train, num_val, num_test, noise, dropout_prob,
                   num_heldout_signers, fps, layout, heldout_pair_frac)
  start = time.time()
  paths = _paths(out_dir, num_heldout_signers > 0)
  marker = os.path.join(out_dir, MARKER)
  if os.path.exists(marker):
    os.remove(marker)
  if os.path.isdir(paths['pose_dir']):
    shutil.rmtree(paths['pose_dir'])
  os.makedirs(paths['pose_dir'], exist_ok=True)

  words = build_lexicon(seed, vocab_size)
  sentences = make_sentences(words, seed, num_train, num_val, num_test, heldout_pair_frac)
  signers = make_signers(seed, num_signers)
  jobs = _jobs(sentences, seed, num_signers, num_heldout_signers)
  render = dict(words=words, signers=signers, seed=seed, noise=noise, dropout_prob=dropout_prob, fps=fps,
                layout=layout, pose_dir=paths['pose_dir'])
  workers = min(os.cpu_count() or 1, 8) if len(jobs) >= 500 else 1
  chunks = [jobs[k::workers] for k in range(workers)]
  if workers == 1:
    spans = _render_jobs(render, jobs)
  else:
    # Each example depends only on (seed, split, index): render them in processes. 'spawn', because the
    # caller may already run JAX / TF threads, which a fork would copy mid-flight.
    try:
      ctx = multiprocessing.get_context('spawn')
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        parts = list(pool.map(_render_jobs, [render] * workers, chunks))
      spans = [None] * len(jobs)
      for k, part in enumerate(parts):
        spans[k::workers] = part
    except concurrent.futures.process.BrokenProcessPool:  # e.g. a __main__ that spawn cannot re-import
      spans = _render_jobs(render, jobs)
  gloss_rows = []
  for split_id, split in enumerate(('train', 'val', 'test')):
    rows = {}  # signer group ('' without held-out signers) -> [(uid, text)]
    for job, sign_spans in zip(jobs, spans):
      if job.split_id != split_id:
        continue
      rows.setdefault(job.group, []).append((job.uid, sentences[split][job.index]['text']))
      gloss_rows.append((job.uid, split, job.signer, ' '.join(words[j]['gloss'] for j in job.ids),
                         ' '.join(f'{a}:{b}' for a, b in sign_spans)))
    _write_csv(paths[split], [r for group_rows in rows.values() for r in group_rows])
    for group, group_rows in rows.items():
      if group:
        _write_csv(paths['groups'][group][split], group_rows)
    if verbose:
      print(f'{split}: {sum(map(len, rows.values()))} examples, {time.time() - start:.1f}s', flush=True)
  with open(paths['glosses'], 'w', newline='') as f:
    w = csv.writer(f, lineterminator='\n')
    w.writerow(('uid', 'split', 'signer', 'gloss', 'spans'))
    w.writerows(gloss_rows)
  with open(paths['lexicon'], 'w') as f:
    json.dump(dict(params=params, signers=signers, words=words), f, indent=1, default=_jsonable)
  with open(marker, 'w') as f:
    json.dump(params, f, indent=1, sort_keys=True)
  return paths


def _render_jobs(render: dict, jobs: list) -> list:
  """Renders and writes the .pose files of `jobs` [_Job]; returns
  their sign spans. The RNG of an example is seeded by (seed, split, index) alone, so any split of the jobs over
  processes writes the same files."""
  header = keypoints.holistic_header(width=512, height=512, depth=512, reduced=render['layout'] == 'reduced')
  lay = _Layout(header)
  out = []
  for job in jobs:
    rng = job.rng(render['seed'])
    rng.integers(*job.signer_range)  # replays the draw that picked the signer: the rest of the stream follows it
    data, conf, spans = render_pose(render['words'], job.ids, render['signers'][job.signer], lay, rng,
                                    render['noise'], render['dropout_prob'], render['fps'])
    buf = io.BytesIO()
    Pose(header, NumPyPoseBody(render['fps'], data, conf)).write(buf)
    with open(os.path.join(render['pose_dir'], job.uid + '.pose'), 'wb') as f:
      f.write(buf.getvalue())
    out.append(spans)
  return out


def _jsonable(x):
  if isinstance(x, np.generic):
    return x.item()
  raise TypeError(type(x))


def ensure_corpus(synthetic_config, out_dir) -> dict:
  """Generates the corpus of `config.data.synthetic` into out_dir unless a matching one is there.

  Returns dict(train, val, test, pose_dir, glosses, lexicon) paths. Fields of the config other than
  `enabled` are passed to `generate_corpus`; a corpus is reused when its COMPLETE.json marker (written
  last) holds the same parameters. Processes on one host wait for each other on a lock file.
  """
  kwargs = {k: v for k, v in dict(synthetic_config).items() if k != 'enabled'}
  check_params(**kwargs)
  kwargs = {**DEFAULTS, **kwargs}
  params = _params(**kwargs)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, '.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    marker = os.path.join(out_dir, MARKER)
    if os.path.exists(marker):
      with open(marker) as f:
        if json.load(f) == params:
          return _paths(out_dir, params['num_heldout_signers'] > 0)
    return generate_corpus(out_dir, **kwargs)
